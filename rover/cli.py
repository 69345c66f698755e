"""The ``rover`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad arguments. Errors are one
line saying what went wrong and what to do; no tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rover import __version__
from rover.units import frequency_from_period, parse_duration

if TYPE_CHECKING:
    from rover.bpf.headers import KernelHeaders
    from rover.config import CacheConfig
    from rover.hostfs import HostFS
    from rover.profile import ProfileType

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("rover")


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class RuntimeFailure(Exception):
    """Something failed while running: exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rover", description="eBPF profiler and Apache SkyWalking profiling agent"
    )
    parser.add_argument("--version", action="version", version=f"rover {__version__}")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prof = sub.add_parser(
        "profile",
        help="profile processes on this machine and write a file",
        description="Compile the BPF program (a few seconds, more on a busy machine), sample "
        "for --duration, then write the output. Ctrl-C (or SIGTERM) stops early, at any "
        "moment, and still writes the output.",
    )
    prof.add_argument("--pid", required=True, help="process id(s), comma separated")
    prof.add_argument(
        "--type",
        default="on-cpu",
        choices=["on-cpu", "off-cpu"],
        help="on-cpu: where they run; off-cpu: where they wait (default: %(default)s)",
    )
    prof.add_argument(
        "--duration",
        default="30s",
        help="how long to sample, counted once the program is compiled, e.g. 500ms, 30s, 2m "
        "(default: %(default)s)",
    )
    rate = prof.add_mutually_exclusive_group()
    rate.add_argument("--frequency", type=int, help="on-CPU samples per second (default 99)")
    rate.add_argument("--period", help="on-CPU sampling period instead, e.g. 9ms")
    prof.add_argument(
        "--output",
        "-o",
        help="output file; the format follows the extension: .html .svg .folded .txt "
        ".pb.gz .pprof (pprof) .speedscope.json (default: rover-<type>-<pid>.html)",
    )
    prof.add_argument(
        "--value",
        help="number to show: on-CPU 'samples' (default) or 'cpu'; "
        "off-CPU 'off_cpu' (microseconds blocked, default) or 'switches'",
    )
    prof.add_argument(
        "--kernel-headers", help="kernel headers directory to use if the host has none"
    )
    prof.add_argument(
        "--host-root", default="/", help="where the host's / is mounted (default: %(default)s)"
    )
    prof.add_argument(
        "--unwind",
        default="auto",
        choices=["auto", "frame_pointer", "eh_frame"],
        help="user stack unwinding: frame pointers in the kernel, the files' .eh_frame CFI "
        "(code built without frame pointers), or auto: per process (default)",
    )
    prof.add_argument("--quiet", "-q", action="store_true", help="no progress display")

    agent = sub.add_parser("agent", help="run the SkyWalking profiling agent (the daemon)")
    agent.add_argument(
        "--config", help="rover_configs.yaml (default: $ROVER_CONFIG, else the shipped file)"
    )

    check = sub.add_parser("check", help="can profiling work on this machine?")
    check.add_argument("--kernel-headers", help="kernel headers directory to consider")
    check.add_argument(
        "--host-root", default="/", help="where the host's / is mounted (default: %(default)s)"
    )

    readable = ".folded .txt .pb.gz .pprof .speedscope.json"
    convert = sub.add_parser("convert", help="convert a profile file to another format")
    convert.add_argument("input", help=f"profile to read: {readable}")
    convert.add_argument(
        "output", help="file to write; the format follows the extension (as for `rover profile`)"
    )
    _add_input_arguments(convert, title="title of an html/svg flame graph or a speedscope file")

    diff = sub.add_parser("diff", help="differential flame graph: what grew, what shrank")
    diff.add_argument("before", help=f"the baseline profile: {readable}")
    diff.add_argument("after", help="the profile compared with it (same formats)")
    diff.add_argument(
        "--output", "-o", default="rover-diff.html", help="HTML file (default: %(default)s)"
    )
    _add_input_arguments(diff, title="title of the differential flame graph")
    return parser


def _add_input_arguments(command: argparse.ArgumentParser, title: str) -> None:
    """The flags `rover convert` and `rover diff` share; ``title`` is --title's help."""
    command.add_argument("--value", help="number to show, as for `rover profile`")
    command.add_argument("--title", help=title)
    command.add_argument(
        "--input-type",
        choices=["on-cpu", "off-cpu"],
        help="what bare numbers measure in files that do not say (other tools' folded stacks "
        "and speedscope files): on-cpu samples (default) or off-cpu microseconds; pprof "
        "files and rover's own folded and speedscope files say it themselves",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on syntax errors
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "profile":
            return cmd_profile(args)
        if args.command == "agent":
            return cmd_agent(args)
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "diff":
            return cmd_diff(args)
        return cmd_check(args)
    except UsageError as exc:
        print(f"rover {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeFailure as exc:
        print(f"rover {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"rover {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILURE


# -- rover profile ---------------------------------------------------------


def _parse_pids(text: str) -> list[int]:
    pids = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise UsageError(f"--pid {text!r}: expected process ids like 1234 or 1234,5678")
        pids.append(int(part))
    return sorted(set(pids))


def _validate_output(path: str) -> None:
    from rover.export import UnsupportedFormat, format_for_path

    try:
        format_for_path(path)
    except UnsupportedFormat as exc:
        raise UsageError(f"--output: {exc}") from None
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UsageError(f"--output {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"--output {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"--output {path}: not writable")


def _profile_settings(args: argparse.Namespace) -> tuple[list[int], float, int]:
    pids = _parse_pids(args.pid)
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    if duration <= 0:
        raise UsageError(f"--duration {args.duration!r}: must be greater than zero")
    return pids, duration, _sampling_frequency(args)


MAX_FREQUENCY = 10_000  # samples per second per CPU `rover profile` allows


def _sampling_frequency(args: argparse.Namespace) -> int:
    """--frequency, or --period as a frequency; errors name the flag that was given."""
    from rover.bpf.sample_rate import SampleRateTooHigh, check_sample_rate
    from rover.hostfs import HostFS

    if args.period is not None:
        flag = f"--period {args.period}"
        try:
            frequency = frequency_from_period(args.period)
        except ValueError as exc:
            raise UsageError(f"--period: {exc}") from None
        if frequency > MAX_FREQUENCY:
            raise UsageError(f"{flag}: shorter than the minimum of {1_000_000 // MAX_FREQUENCY}us")
    else:
        frequency = 99 if args.frequency is None else args.frequency
        flag = f"--frequency {frequency}" + (" (the default)" if args.frequency is None else "")
        if not 1 <= frequency <= MAX_FREQUENCY:
            raise UsageError(f"{flag}: must be between 1 and {MAX_FREQUENCY} samples per second")
    try:
        check_sample_rate(frequency, HostFS(args.host_root))
    except SampleRateTooHigh as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return frequency


@dataclass(frozen=True)
class ProfileRequest:
    """A validated `rover profile` invocation."""

    pids: list[int]
    profile_type: str
    duration: float
    frequency: int
    output: str
    value: str | None
    host_root: str
    kernel_headers: str | None
    unwind: str = "auto"
    caches: CacheConfig | None = None  # the agent's cache budgets (None: the defaults)


def validate_profile_args(args: argparse.Namespace) -> ProfileRequest:
    """Everything checkable before touching BPF; raises UsageError."""
    from rover.export.values import select_value
    from rover.hostfs import HostFS
    from rover.profile import Profile, ProfileType

    pids, duration, frequency = _profile_settings(args)
    profile_type = ProfileType(args.type)
    output = args.output or f"rover-{profile_type.value}-{pids[0]}.html"
    _validate_output(output)
    try:
        select_value(Profile.new(profile_type), args.value)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--value: {exc}") from None
    hostfs = HostFS(args.host_root)
    for pid in pids:
        if not hostfs.exists(pid):
            raise UsageError(f"--pid {pid}: no such process")
    return ProfileRequest(
        pids, profile_type.value, duration, frequency, output, args.value, args.host_root,
        args.kernel_headers, args.unwind, _cache_config(),
    )  # fmt: skip


def _cache_config() -> CacheConfig:
    """The cache budgets the agent would use (``cache`` in its configuration file, the
    ``ROVER_CACHE_*`` variables); a bad one is a usage error, as for the agent."""
    from rover.config import ConfigError, load_cache_config

    try:
        return load_cache_config()
    except ConfigError as exc:
        raise UsageError(f"configuration: {exc}") from None


def cmd_profile(args: argparse.Namespace) -> int:
    # Before anything slow: a Ctrl-C or SIGTERM during start-up or the compile must stop
    # the run and still write the output, not be lost (or kill us) before sampling starts.
    stop = threading.Event()
    _install_stop_handlers(stop)
    request = validate_profile_args(args)

    from rover.bpf.headers import HeaderSearch, KernelHeadersNotFound
    from rover.bpf.tracefs import ensure_tracefs
    from rover.config import CacheConfig
    from rover.empty_profile import explain_empty, read_activity
    from rover.hostfs import HostFS, ProcessGone
    from rover.profile import ProfileType
    from rover.symbols import Symbolizer, demangle
    from rover.tasks.runner import ProfilingRunner
    from rover.tasks.timed_run import run_for

    profile_type = ProfileType(request.profile_type)
    hostfs = HostFS(request.host_root)
    caches = request.caches or CacheConfig()
    demangle.set_cache_bytes(caches.demangled_name_bytes)
    if profile_type is ProfileType.OFF_CPU and ensure_tracefs() is None:
        raise RuntimeFailure("sched:sched_switch tracepoint not available: is tracefs mounted?")
    try:
        headers = HeaderSearch(hostfs=hostfs, configured_dir=request.kernel_headers).find()
    except KernelHeadersNotFound as exc:
        raise RuntimeFailure(str(exc)) from None
    _status(args, f"kernel headers: {headers.describe_for_user()}")
    _status(
        args,
        f"compiling the {profile_type.value} BPF program (a few seconds)",
    )
    if stop.is_set():
        return _stopped_before_sampling(request, profile_type)
    try:
        engine = _load_engine(request, profile_type, headers, hostfs)
    except RuntimeFailure:
        if stop.is_set():  # the signal cancelled the compile
            return _stopped_before_sampling(request, profile_type)
        raise
    if stop.is_set():  # the signal came as the compile ended
        engine.close()
        return _stopped_before_sampling(request, profile_type)
    symbolizer = Symbolizer(
        hostfs,
        symbol_table_bytes=caches.symbol_table_bytes,
        perf_map_bytes=caches.perf_map_bytes,
    )
    runner = ProfilingRunner(engine, symbolizer, request.pids, hostfs)
    progress = _ProgressDisplay(enabled=not args.quiet, profile_type=profile_type)
    activity_before = read_activity(hostfs, request.pids)
    try:
        outcome = run_for(runner, request.duration, stop, on_progress=progress.update)
    except ProcessGone as exc:
        raise RuntimeFailure(str(exc)) from None
    finally:
        progress.finish()
        engine.close()
    activity_after = read_activity(hostfs, request.pids)
    if outcome.ended_by == "stopped":
        _status(args, f"stopped early after {outcome.elapsed:.1f}s")
    elif outcome.ended_by == "exited":
        _status(args, f"every target process exited after {outcome.elapsed:.1f}s")
    written = _write_output(outcome.profile, request.output, request.value)
    _print_summary(outcome.profile, written, outcome.elapsed, request.value)
    if outcome.profile.total(0) == 0:
        why = explain_empty(
            profile_type, activity_before, activity_after, request.frequency, outcome.elapsed
        )
        print(f"note: the profile is empty: {why}", file=sys.stderr)
    return EXIT_OK


def _load_engine(
    request: ProfileRequest, profile_type: ProfileType, headers: KernelHeaders, hostfs: HostFS
):
    """Compile, load and attach the program(s) the targets need; RuntimeFailure if not."""
    from rover.bpf.engine import EngineConfig
    from rover.bpf.loader import BPFLoadError
    from rover.config import CacheConfig
    from rover.unwind.modes import make_engine
    from rover.unwind.tables import UnwindInfoCache

    config = EngineConfig(frequency=request.frequency)
    cfi_cache = UnwindInfoCache((request.caches or CacheConfig()).cfi_table_bytes)
    try:
        engine = make_engine(
            profile_type,
            headers,
            config,
            request.unwind,
            hostfs=hostfs,
            cfi_cache=cfi_cache,
            warm_pids=request.pids,
        )
    except BPFLoadError as exc:
        reason = str(exc).splitlines()[0]
        raise RuntimeFailure(f"{reason} (run `rover check` for details)") from None
    return engine


def _stopped_before_sampling(request: ProfileRequest, profile_type: ProfileType) -> int:
    """Ctrl-C before sampling started: as at any other moment, stop and write the output
    (empty here), so scripts find the file they asked for."""
    from rover.profile import Profile

    profile = Profile.new(profile_type, start_time_ns=time.time_ns())
    print(
        "stopped before sampling started (the signal came during start-up or the BPF "
        "compile): the output holds no samples",
        file=sys.stderr,
    )
    written = _write_output(profile, request.output, request.value)
    _print_summary(profile, written, 0.0, request.value)
    return EXIT_OK


def _write_output(profile, output: str, value: str | None) -> str:
    """Write the profile; if that fails, save it to a temp file rather than lose it."""
    from rover.export import write_profile

    try:
        write_profile(profile, output, value=value)
        return output
    except OSError as exc:
        fallback = os.path.join(
            tempfile.gettempdir(), f"rover-{profile.type.value}-{int(time.time())}.folded"
        )
        try:
            write_profile(profile, fallback, value=value)
        except OSError:
            raise RuntimeFailure(f"cannot write {output}: {exc.strerror or exc}") from None
        raise RuntimeFailure(
            f"cannot write {output}: {exc.strerror or exc}; the profile was saved to {fallback}"
        ) from None


def _print_summary(profile, path: str, elapsed: float, value: str | None = None) -> None:
    """One line about what was written: the total of the value written, in its unit."""
    from rover.export.summary import format_total
    from rover.export.values import select_value

    view = select_value(profile, value)
    total = view.total(values[view.index] for values in profile.samples.values())
    unsymbolized = profile.counters.get("unsymbolized_frames", 0)
    dropped = {
        k: v
        for k, v in profile.counters.items()
        if v and k not in ("unsymbolized_frames", "stacks_empty")
    }
    print(
        f"wrote {path}: {format_total(total, view)}, {len(profile)} distinct stacks, "
        f"{elapsed:.1f}s window, {unsymbolized} unsymbolized frames"
    )
    if dropped:
        details = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items()))
        print(f"warning: some data could not be collected: {details}", file=sys.stderr)


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        stop.set()
        # A compile under way ends now, not in seconds. None can be under way before the
        # module is imported (and importing here could meet it half-initialized).
        program = sys.modules.get("rover.bpf.program")
        cancel = getattr(program, "cancel_compiles", None)
        if cancel is not None:
            cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _status(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


class _ProgressDisplay:
    """Live progress on stderr: rewritten in place on a terminal, a line a second otherwise."""

    def __init__(self, enabled: bool, profile_type: object) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.unit = "samples" if getattr(profile_type, "value", "") == "on-cpu" else "switches"
        self._last_line = 0.0
        self._shown = False

    def update(self, p) -> None:
        if not self.enabled:
            return
        remaining = max(0.0, p.duration - p.elapsed)
        line = (
            f"profiling: {p.elapsed:5.1f}s elapsed, {remaining:5.1f}s remaining, "
            f"{p.events} {self.unit}, {p.alive} process(es)"
        )
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
            self._shown = True
        elif time.monotonic() - self._last_line >= 1.0:
            print(line, file=sys.stderr, flush=True)
            self._last_line = time.monotonic()

    def finish(self) -> None:
        if self._shown:
            sys.stderr.write("\n")


# -- rover convert, rover diff --------------------------------------------


def _read_input(path: str, input_type: str | None):
    """Read a profile file into a StackTable; unreadable, corrupt or out-of-range
    input (including over the size limits) is a usage error (exit 2)."""
    from rover.export import CorruptProfile, UnsupportedFormat, read_table
    from rover.profile import ProfileType

    profile_type = ProfileType(input_type) if input_type else None
    try:
        return read_table(path, profile_type)
    except (UnsupportedFormat, CorruptProfile) as exc:
        raise UsageError(str(exc)) from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc.strerror or exc}") from None
    except MemoryError:
        raise RuntimeFailure(f"cannot read {path}: out of memory") from None


def cmd_convert(args: argparse.Namespace) -> int:
    from rover.export import UnsupportedFormat, format_for_path, write_profile
    from rover.export.values import select_value

    try:
        format_for_path(args.output)
    except UnsupportedFormat as exc:
        raise UsageError(str(exc)) from None
    table = _read_input(args.input, args.input_type)
    try:
        view = select_value(table.header, args.value)
    except ValueError as exc:
        raise UsageError(f"--value: {exc}") from None
    try:
        write_profile(table, args.output, value=args.value, title=args.title)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {args.output}: {exc.strerror or exc}") from None
    total = view.total(table.values[view.index])
    print(f"wrote {args.output}: {len(table)} distinct stacks, {total} {view.unit}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from rover.export import UnsupportedFormat, format_for_path, write_diff

    try:
        fmt = format_for_path(args.output)
    except UnsupportedFormat as exc:
        raise UsageError(f"--output: {exc}") from None
    if fmt != "html":
        raise UsageError(f"--output {args.output}: a differential flame graph is HTML (.html)")
    before = _read_input(args.before, args.input_type)
    after = _read_input(args.after, args.input_type)
    names = (os.path.basename(args.before), os.path.basename(args.after))
    try:
        write_diff(before, after, args.output, value=args.value, title=args.title, names=names)
    except UnsupportedFormat as exc:
        raise UsageError(f"--output: {exc}") from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {args.output}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.output}: {names[1]} compared with {names[0]}")
    return EXIT_OK


# -- rover agent -----------------------------------------------------------


def cmd_agent(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _install_stop_handlers(stop)  # before the slow imports: a SIGTERM then is a clean exit
    from rover.heap import limit_arenas

    limit_arenas()  # before any thread: a long-running process keeps no burst's peak
    from rover.config import ConfigError, load_config
    from rover.logs import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(f"configuration: {exc}") from None
    configure_logging(config.logger.python_level, config.logger.format.value == "json")
    for warning in config.warnings:
        log.warning("configuration: %s", warning)

    from rover.agent import Agent
    from rover.backend import BackendConfigError
    from rover.health import HealthAddressError
    from rover.process.finder import FinderConfigError
    from rover.process.kubernetes.client import KubernetesConnectError
    from rover.process.template import TemplateError

    try:
        agent = Agent(config)
    except (BackendConfigError, FinderConfigError, TemplateError) as exc:
        raise UsageError(f"configuration: {exc}") from None
    except KubernetesConnectError as exc:
        raise RuntimeFailure(f"Kubernetes discovery: {exc}") from None
    except HealthAddressError as exc:
        raise RuntimeFailure(str(exc)) from None
    agent.run_until_signalled(stop)
    return EXIT_OK


# -- rover check -----------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from rover.check import run_checks
    from rover.hostfs import HostFS

    results = run_checks(HostFS(args.host_root), args.kernel_headers)
    for result in results:
        print(result.line())
    failed = [r for r in results if r.required and not r.ok]
    if failed:
        names = ", ".join(dict.fromkeys(r.name for r in failed))  # one capability = one line
        print(f"profiling cannot work: {names} failed", file=sys.stderr)
        return EXIT_FAILURE
    print("profiling can run on this machine")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

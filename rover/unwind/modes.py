"""Building the engine for a profiling type and an unwinding mode.

``frame_pointer``: every process is unwound by the kernel's frame-pointer
walker; the CFI walk program is not even loaded. ``eh_frame``: every process is
walked by CFI in the kernel (``bpf/cfi_walk.h``), with rows ``kernel_tables``
loads. ``auto``: each process by what its code was built with
(``frame_pointers.choose_unwind``), logged per process. One program serves all
the processes of a profiling type, whatever their mode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from rover.bpf.engine import EngineConfig, ProfilerEngine, UnwindChoice, WalkTables
from rover.bpf.headers import KernelHeaders
from rover.bpf.program import LoadedProgram
from rover.hostfs import HostFS, ProcessGone
from rover.profile import ProfileType
from rover.unwind.frame_pointers import EH_FRAME, FRAME_POINTER, choose_unwind
from rover.unwind.kernel_tables import DEFAULT_TABLE_BYTES, KernelTables
from rover.unwind.process_space import ProcessSpaces
from rover.unwind.tables import UnwindInfoCache

AUTO = "auto"
UNWIND_MODES = (AUTO, FRAME_POINTER, EH_FRAME)


def make_engine(
    profile_type: ProfileType,
    headers: KernelHeaders,
    config: EngineConfig,
    unwind: str = FRAME_POINTER,
    hostfs: HostFS | None = None,
    table_bytes: int = DEFAULT_TABLE_BYTES,
    cfi_cache: UnwindInfoCache | None = None,
    on_tables: Callable[[KernelTables], None] | None = None,
    warm_pids: Sequence[int] = (),
) -> ProfilerEngine:
    """An engine for ``unwind`` (one of UNWIND_MODES); raises what loading raises.

    ``cfi_cache`` holds the files' decoded CFI (shared by the engines of one agent;
    default: one of the engine's own); ``on_tables`` is given the kernel tables when
    the CFI walk loads (for metrics). The CFI of ``warm_pids`` (the processes about to
    be added) is decoded while the compile helper compiles, so adding them then costs
    only the kernel's part.
    """
    if unwind == FRAME_POINTER:
        return ProfilerEngine(profile_type, headers, config)
    hostfs = hostfs or HostFS()
    if unwind == EH_FRAME:

        def choose(pid: int) -> UnwindChoice:
            return UnwindChoice(EH_FRAME, "unwinding set to eh_frame")

    elif unwind == AUTO:

        def choose(pid: int) -> UnwindChoice:
            return choose_unwind(hostfs, pid)

    else:
        raise ValueError(f"unknown unwinding mode {unwind!r}; expected one of {UNWIND_MODES}")

    spaces = ProcessSpaces(hostfs, cfi_cache)

    def tables(program: LoadedProgram) -> WalkTables:
        made = KernelTables(program, spaces, table_bytes, config.max_files)
        if on_tables is not None:
            on_tables(made)
        return made

    warming = threading.Thread(
        target=_decode_cfi, args=(spaces, choose, warm_pids), name="unwind-warm", daemon=True
    )
    warming.start()
    try:
        return ProfilerEngine(profile_type, headers, config, choose, tables)
    finally:
        warming.join()


def _decode_cfi(
    spaces: ProcessSpaces, choose: Callable[[int], UnwindChoice], pids: Sequence[int]
) -> None:
    """Decode the CFI of the processes of ``pids`` that will be walked by CFI (errors are
    left for adding them to report)."""
    for pid in pids:
        try:
            if choose(pid).mode == EH_FRAME:
                spaces.prepare(pid)
        except (ProcessGone, OSError):
            continue

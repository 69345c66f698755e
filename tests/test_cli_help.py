"""`rover profile --help` and the README state the defaults a user relies on."""

import re
from pathlib import Path

from rover_cli import rover

from rover.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def profile_options() -> dict[str, object]:
    """Option -> its argparse action, of `rover profile`."""
    parser = build_parser()
    subparsers = parser._subparsers
    assert subparsers is not None
    profile = subparsers._group_actions[0].choices["profile"]  # type: ignore[index]  # argparse has no API
    return {action.option_strings[0]: action for action in profile._actions}


def test_profile_help_states_every_default():
    text = " ".join(rover("profile", "--help").stdout.split())  # argparse wraps lines
    assert "(default: 30s)" in text  # --duration
    assert "(default: on-cpu)" in text  # --type
    assert "(default 99)" in text  # --frequency
    assert "(default: rover-<type>-<pid>.html)" in text  # --output
    assert "'samples' (default)" in text and "microseconds blocked, default" in text  # --value
    assert "or auto: per process (default)" in text  # --unwind
    assert "where the host's / is mounted (default: /)" in text  # --host-root
    assert "Compile the BPF program (a few seconds" in text  # before sampling starts
    assert "Ctrl-C (or SIGTERM) stops early, at any moment, and still writes the output" in text


def test_every_profile_option_with_a_default_says_it():
    no_default = {"-h", "--pid", "--period", "--kernel-headers", "--quiet"}
    for option, action in profile_options().items():
        if option not in no_default:
            assert "default" in (action.help or ""), option


def test_readme_states_the_real_duration_default_and_the_compile():
    readme = README.read_text()
    default = profile_options()["--duration"].default
    assert re.search(rf"`--duration` defaults to {default}\b", readme)
    assert "compiles its BPF program" in readme
    assert "10-15 minutes" in readme

"""Bad input to the command line: exit 2 with a one-line reason, never a traceback."""

import pytest
from rover_cli import rover


def assert_clean_error(result, code, *needles):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pid", "abc"], "--pid"),
        (["--pid", "1,-5"], "--pid"),
        (["--pid", "1", "--duration", "banana"], "invalid duration"),
        (["--pid", "1", "--duration", "0s"], "greater than zero"),
        (["--pid", "1", "--duration", "-3s"], "--duration"),
        (["--pid", "1", "--frequency", "0"], "--frequency"),
        (["--pid", "1", "--period", "0ms"], "--period"),
        (["--pid", "1", "--output", "profile.pdf"], "use one of"),
        (["--pid", "1", "--output", "/nonexistent-dir/p.html"], "does not exist"),
        (["--pid", "1", "--value", "bogus"], "--value"),
        (["--pid", "999999999"], "no such process"),
    ],
)
def test_bad_profile_arguments_exit_2_with_one_line(args, needle, tmp_path):
    if "--output" not in args:
        args = [*args, "--output", str(tmp_path / "out.folded")]
    result = rover("profile", *args)
    assert_clean_error(result, 2, needle)


def test_unknown_type_and_missing_pid_are_usage_errors():
    assert rover("profile", "--pid", "1", "--type", "gpu").returncode == 2
    assert rover("profile").returncode == 2
    assert rover("no-such-command").returncode == 2


def test_output_that_is_a_directory_is_refused(tmp_path):
    target = tmp_path / "graph.html"
    target.mkdir()
    assert_clean_error(rover("profile", "--pid", "1", "--output", str(target)), 2, "is a directory")


def test_a_period_too_short_is_named_as_given():
    result = rover("profile", "--pid", "1", "--period", "1ns")
    assert_clean_error(result, 2, "--period 1ns", "100us")
    assert "--frequency" not in result.stderr


@pytest.mark.parametrize(
    ("rate", "needle"),
    [(["--frequency", "5000"], "--frequency 5000"), (["--period", "500us"], "--period 500us")],
)
def test_a_rate_above_the_kernel_limit_names_the_flag_and_the_limit(rate, needle, tmp_path):
    """perf_event_max_sample_rate is read from the host's /proc (here a host root of our own)."""
    limit = tmp_path / "proc/sys/kernel/perf_event_max_sample_rate"
    limit.parent.mkdir(parents=True)
    limit.write_text("1000\n")
    result = rover("profile", "--pid", "1", *rate, "--host-root", str(tmp_path))
    assert_clean_error(result, 2, needle, "kernel's limit of 1000")


def test_a_bad_cache_budget_in_the_environment_is_a_usage_error(tmp_path):
    """`rover profile` takes the agent's cache budgets (ROVER_CACHE_*): checked the same."""
    result = rover(
        "profile",
        "--pid",
        "1",
        "--output",
        str(tmp_path / "out.folded"),
        env={"ROVER_CACHE_PERF_MAP_BYTES": "-1", "ROVER_CONFIG": ""},
    )
    assert_clean_error(
        result, 2, "configuration: cache.perf_map_bytes: must be at least", "ROVER_CACHE_PERF_MAP"
    )

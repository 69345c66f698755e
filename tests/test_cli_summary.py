"""The line `rover profile` prints about what it wrote: the value written, in its unit."""

from __future__ import annotations

import pytest
from test_export_folded import off_cpu_profile, on_cpu_profile

from rover.cli import _print_summary


@pytest.mark.parametrize(
    ("make", "value", "total"),
    [
        (off_cpu_profile, None, "2,500 µs (2.5 ms) off-CPU"),  # what the file holds
        (off_cpu_profile, "switches", "15 switches"),
        (on_cpu_profile, None, "1,006 samples"),
        (on_cpu_profile, "cpu", "10,060,000 ns (10.1 ms) on CPU"),
    ],
)
def test_summary_gives_the_written_value_and_unit(capsys, make, value, total):
    _print_summary(make(), "out.folded", 2.0, value)
    line = capsys.readouterr().out
    assert line.startswith(f"wrote out.folded: {total}, ")

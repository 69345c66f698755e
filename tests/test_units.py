import pytest

from rover.units import frequency_from_period, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("20m", 1200.0), ("1h", 3600.0), ("30", 30.0), ("1.5s", 1.5)],
)
def test_parse_duration_accepts_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5 parsecs", "-1s", "s", "1.2.3s", "10d"])
def test_parse_duration_rejects_garbage_with_the_text(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_rover_dump_period_becomes_frequency():
    assert frequency_from_period("9ms") == 111
    assert frequency_from_period("10ms") == 100
    with pytest.raises(ValueError):
        frequency_from_period("0ms")

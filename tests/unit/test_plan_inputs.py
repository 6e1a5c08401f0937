"""What `floodgate plan` accepts as a traffic shape, and how it says what is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from floodgate.capacity import Segment
from floodgate.errors import ConfigError
from floodgate.ops.plan_cli import fmt_s, mix, parse_duration, parse_rate, read_arrivals


@pytest.mark.parametrize(("text", "per_second"), [("5000/min", 5000 / 60), ("83/s", 83.0), ("50/h", 50 / 3600),
                                                   ("1.5 / m", 0.025)])
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600.0), ("90s", 90.0), ("1.5h", 5400.0), ("45", 45.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5000", "5000/week", "fast", "-3/s"])
def test_bad_rates_say_what_a_rate_looks_like(text: str) -> None:
    with pytest.raises(ConfigError, match="e.g. 5000/min"):
        parse_rate(text)


def test_the_mix_is_normalised_and_checked() -> None:
    assert mix("", ["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert mix("a=3,b=1", ["a", "b"]) == {"a": 0.75, "b": 0.25}
    with pytest.raises(ConfigError, match="unknown model 'c'"):
        mix("c=1", ["a", "b"])


def test_an_arrivals_file_with_a_header_and_models(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("seconds,model\n0.2,a\n0.7,b\n1.5\n")
    shapes = read_arrivals(str(path), ["a", "b"], 1.0)
    # The row without a model is the 4th line (index 3): it goes to models[3 % 2] = "b".
    assert shapes == {"a": [Segment(1.0, 1.0)], "b": [Segment(1.0, 1.0), Segment(1.0, 1.0)]}


@pytest.mark.parametrize(("body", "message"), [("x\n1,a\nsoon,a\n", "'soon' is not a number"),
                                               ("-1,a\n", "must be a finite number"), ("1,zzz\n", "not planned")])
def test_bad_arrival_files_name_the_fault(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "a.csv"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        read_arrivals(str(path), ["a"], 1.0)


def test_durations_print_in_a_readable_unit() -> None:
    assert [fmt_s(x) for x in (None, 42, 600, 7200)] == ["never", "42s", "10.0m", "2.0h"]

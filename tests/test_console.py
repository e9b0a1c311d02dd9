"""The run's console: every duration in one format."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from harness import run
from harness.progress import duration

#: what :func:`duration` writes, anywhere in a line
DURATION = r"(?:\d+\.\d\d s|\d+\.\d s|\d+ min \d\d s|\d+ h \d\d min|\d+ d \d\d h)"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0.00 s"), (0.004, "0.00 s"), (0.42, "0.42 s"), (0.994, "0.99 s"),
    (0.996, "1.0 s"), (12.34, "12.3 s"), (59.94, "59.9 s"),
    (59.96, "1 min 00 s"), (245, "4 min 05 s"), (3599.4, "59 min 59 s"),
    (3599.6, "1 h 00 min"), (3720, "1 h 02 min"), (86100, "23 h 55 min"),
    (86399, "1 d 00 h"), (89700, "1 d 01 h"), (4 * 86400 + 3 * 3600 + 59, "4 d 03 h"),
])
def test_durations_have_one_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text
    assert re.fullmatch(DURATION, text)


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_a_duration_that_is_none_is_an_error(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        duration(seconds)


def test_the_dry_run_estimate_is_in_the_same_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--methods", "baseline", "--preset", "smoke", "--device", "cpu",
                     "--dry-run", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out.splitlines()
    (row,) = [ln for ln in out if ln.startswith("  baseline ")]
    assert re.search(f"{DURATION} +{DURATION} +{DURATION}$", row)  # step, training, eval
    (total,) = [ln for ln in out if "estimated wall time" in ln]
    assert re.search(f"estimated wall time: {DURATION} on cpu", total)

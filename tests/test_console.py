"""The run's console: every duration in one format, each method's lines under a header
of its own, the two times of a row labelled."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import harness
from harness import run
from harness.planning import announce
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


def test_the_first_line_counts_the_methods_that_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = harness.plan(methods=["baseline", "abn"], preset="smoke", dry_run=True,
                        out=str(tmp_path))
    announce(plan, ["abn"])
    assert capsys.readouterr().out.startswith("attnbench: 1 method on cluttered-digits (smoke)")


def sections(out: str) -> dict[str, list[str]]:
    """The run's output by header: each line that is not indented starts a section."""
    got: dict[str, list[str]] = {}
    current = "(before)"
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line
        got.setdefault(current, []).append(line)
    return got


def find(got: dict[str, list[str]], start: str) -> list[str]:
    (key,) = [k for k in got if k.startswith(start)]
    return got[key][1:]


@pytest.mark.slow
def test_each_method_prints_under_its_own_header(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a terminal (captured): one line per epoch, each under the header of the method
    it trains for; abn, which COMB's protocol needs before the rows, under a line of its
    own; then a warm rerun says cached in each header."""
    args = ["--methods", "baseline,cam,abn,abn-amb", "--preset", "smoke", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--db", str(tmp_path / "db.sqlite")]  # its own store: cold means no score stored
    assert run.main(args) == 0
    got = sections(capsys.readouterr().out)
    heads = [k for k in got if k != "(before)"]
    assert heads[0].startswith("attnbench: 4 methods on cluttered-digits (smoke)")
    assert heads[1] == "comb_subset needs abn before the rows (seed 0): training it first"
    assert [h.split(",")[0] for h in heads[2:7]] == [
        "method 1 of 4: baseline (seed 0)", "method 2 of 4: cam (seed 0)",
        "method 3 of 4: abn (seed 0)", "method 4 of 4: abn-amb (seed 0)",
        "row baseline+random (seed 0)"]
    assert re.fullmatch(f"method 1 of 4: baseline \\(seed 0\\), elapsed {DURATION}", heads[2])
    assert re.fullmatch(f"method 2 of 4: cam \\(seed 0\\), on baseline's weights, elapsed "
                        f"{DURATION}, ETA {DURATION}", heads[3])
    assert heads[4].startswith("method 3 of 4: abn (seed 0), trained above, elapsed ")
    assert heads[-1].startswith("wrote leaderboard.html, leaderboard.csv and ")

    epoch = f"epoch 1/1: loss \\d+\\.\\d+.* \\({DURATION}\\)"
    assert re.fullmatch(f"    abn {epoch}", find(got, "comb_subset")[0])
    baseline = find(got, "method 1 of 4")
    assert len(baseline) == 2 and re.fullmatch(f"    baseline {epoch}", baseline[0])
    assert re.fullmatch(f"  baseline +seed 0  top1 .*  \\(training {DURATION}, evaluation "
                        f"{DURATION}\\)", baseline[1])
    (cam,) = find(got, "method 2 of 4")  # trains nothing: no epoch line
    assert re.search(f"\\(on baseline's weights, evaluation {DURATION}\\)$", cam)
    (abn,) = find(got, "method 3 of 4")  # trained before the rows: its time, no epochs
    assert re.search(f"\\(training {DURATION}, evaluation {DURATION}\\)$", abn)
    amb = find(got, "method 4 of 4")
    assert len(amb) == 2 and re.fullmatch(f"    abn-amb {epoch}", amb[0])
    (ref,) = find(got, "row baseline+random")
    assert re.search(f"\\(the same model as above, evaluation {DURATION}\\)$", ref)

    assert run.main(args) == 0  # warm: every checkpoint and score from the caches
    got = sections(capsys.readouterr().out)
    heads = [k.split(", elapsed")[0] for k in got if k != "(before)"]
    assert heads[1:6] == [
        "method 1 of 4: baseline (seed 0), cached", "method 2 of 4: cam (seed 0), on "
        "baseline's weights", "method 3 of 4: abn (seed 0), cached",
        "method 4 of 4: abn-amb (seed 0), cached", "row baseline+random (seed 0)"]
    assert find(got, "method 1 of 4")[0].endswith("(training cached, evaluation cached)")
    methods = [find(got, f"method {n} of 4") for n in range(1, 5)]
    assert all(len(lines) == 1 for lines in methods), methods  # a score line, no epochs


@pytest.mark.slow
def test_without_progress_only_the_outputs_are_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--methods", "baseline", "--explainers", "native", "--preset", "smoke",
                     "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "c"),
                     "--out", str(tmp_path / "out")]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert re.fullmatch(f"wrote leaderboard.html, leaderboard.csv and \\d+ more files to "
                        f"{re.escape(str(tmp_path / 'out'))} \\(run \\d+ in .*\\) in "
                        f"{DURATION}", line)


def test_the_dry_run_estimate_is_in_the_same_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--methods", "baseline", "--preset", "smoke", "--device", "cpu",
                     "--dry-run", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out.splitlines()
    (row,) = [ln for ln in out if ln.startswith("  baseline ")]
    assert re.search(f"{DURATION} +{DURATION} +{DURATION}$", row)  # step, training, eval
    (total,) = [ln for ln in out if "estimated wall time" in ln]
    assert re.search(f"estimated wall time: {DURATION} on cpu", total)

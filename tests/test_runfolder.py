"""Run folders: each run without --out in runs/<date>-<preset>-<dataset> of its own,
never over an earlier run's, and runs/latest a relative link to the newest finished
one; an explicit --out as given; a real runs/latest of earlier versions left alone."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness import execution, run, runfolder
from harness.errors import UserError

DAY = dt.date(2026, 12, 6)
NAME = "2026-12-06-smoke-cluttered-digits"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own (runs/ is relative to it) on a fixed day."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runfolder, "today", lambda: DAY)
    return tmp_path


# --------------------------------------------------------------------------------------
# the parts
# --------------------------------------------------------------------------------------


def test_folder_names_are_day_preset_dataset() -> None:
    assert runfolder.folder_name("default", "cluttered-digits", DAY) == \
        "2026-12-06-default-cluttered-digits"
    # a plugin's names with path separators, spaces or dots at the ends stay one name
    assert runfolder.folder_name("my preset/v2", "../data set", DAY) == \
        "2026-12-06-my-preset-v2-data-set"
    assert runfolder.folder_name("???", "x", DAY) == "2026-12-06-unnamed-x"


def test_a_taken_name_gets_the_next_counter(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    first = runfolder.reserve(root, NAME)
    (first / "leaderboard.csv").write_text("the first run's")
    (root / f"{NAME}-2").write_text("a file of that name is taken too")
    assert first == root / NAME and first.is_dir()
    assert runfolder.reserve(root, NAME) == root / f"{NAME}-3"
    assert runfolder.reserve(root, NAME) == root / f"{NAME}-4"
    assert (first / "leaderboard.csv").read_text() == "the first run's"
    assert (root / f"{NAME}-2").read_text() == "a file of that name is taken too"


def test_an_unwritable_runs_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where the runs folder goes")
    with pytest.raises(UserError, match=r"^--out \(default .*runs/\.\.\.\): cannot create"):
        runfolder.reserve(tmp_path / "runs", NAME)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a dangling link: no endless try
    with pytest.raises(UserError, match="cannot create"):
        runfolder.reserve(tmp_path / "gone", NAME)


def test_latest_is_a_relative_link_replaced_atomically(tmp_path: Path) -> None:
    old, new = (runfolder.reserve(tmp_path, NAME) for _ in range(2))
    assert runfolder.point_latest(old) is None
    link = tmp_path / "latest"
    assert link.is_symlink() and os.readlink(link) == old.name  # relative: movable
    assert runfolder.point_latest(new) is None
    assert os.readlink(link) == new.name and link.resolve() == new.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME, f"{NAME}-2", "latest"]
    # a link left dangling (its folder deleted) is replaced as well
    new.rmdir()
    assert runfolder.point_latest(old) is None and os.readlink(link) == old.name


def test_a_real_latest_folder_of_earlier_versions_is_left_as_it_is(tmp_path: Path) -> None:
    old = tmp_path / "latest"
    old.mkdir()
    (old / "leaderboard.csv").write_text("an earlier version's outputs")
    line = runfolder.point_latest(runfolder.reserve(tmp_path, NAME))
    assert line is not None and line.startswith("note: ") and "\n" not in line
    assert str(old) in line and "left as it is" in line
    assert not old.is_symlink() and (old / "leaderboard.csv").read_text() == \
        "an earlier version's outputs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME, "latest"]  # no temp link


def test_without_symbolic_links_one_warning_and_nothing_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = (runfolder.reserve(tmp_path, NAME) for _ in range(2))
    assert runfolder.point_latest(old) is None

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", refuse)
    line = runfolder.point_latest(new)
    assert line is not None and line.startswith("warning: ") and "\n" not in line
    assert "Operation not permitted" in line and str(new) in line
    assert os.readlink(tmp_path / "latest") == old.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME, f"{NAME}-2", "latest"]


def test_an_empty_folder_is_dropped_a_used_one_kept(tmp_path: Path) -> None:
    empty, used = (runfolder.reserve(tmp_path, NAME) for _ in range(2))
    (used / "attnbench-error.log").write_text("kept")
    runfolder.drop_if_empty(empty)
    runfolder.drop_if_empty(used)
    runfolder.drop_if_empty(tmp_path / "never-made")
    assert not empty.exists() and (used / "attnbench-error.log").read_text() == "kept"


# --------------------------------------------------------------------------------------
# planning: harness.plan and the command line alike
# --------------------------------------------------------------------------------------


def test_a_plan_without_out_reserves_a_folder_of_its_own(in_tmp: Path) -> None:
    first = harness.plan(methods=["baseline"], preset="smoke", progress=False)
    second = harness.plan(methods=["baseline"], preset="smoke", progress=False)
    assert first.out == Path("runs") / NAME and first.own_folder and first.out.is_dir()
    assert second.out == Path("runs") / f"{NAME}-2" and second.out.is_dir()
    given = harness.plan(methods=["baseline"], preset="smoke", out="mine", progress=False)
    assert given.out == Path("mine") and not given.own_folder
    dry = harness.plan(methods=["baseline"], preset="smoke", dry_run=True)
    assert dry.out == Path("runs") / NAME and dry.own_folder  # named, nothing created
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == [NAME, f"{NAME}-2"]


def test_a_plan_that_fails_reserves_nothing(in_tmp: Path) -> None:
    (in_tmp / "blocker").write_text("")
    with pytest.raises(UserError, match="--cache-dir"):
        harness.plan(methods=["baseline"], preset="smoke", cache_dir="blocker/cache")
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").iterdir())


def test_a_run_that_stops_before_writing_leaves_no_folder(
        in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = harness.plan(methods=["baseline"], preset="smoke", progress=False)
    assert plan.out.is_dir()

    def stop(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(execution.Session, "start", stop)
    with pytest.raises(KeyboardInterrupt):
        harness.execute(plan)
    assert not plan.out.exists() and not (in_tmp / "runs" / "latest").exists()


def test_an_unexpected_error_logs_into_the_run_s_folder(
        in_tmp: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(execution.Session, "start", fail)
    assert run.main(["--methods", "baseline", "--preset", "smoke", "--no-progress"]) == 1
    log = in_tmp / "runs" / NAME / run.ERROR_LOG
    (err,) = capsys.readouterr().err.splitlines()
    assert "RuntimeError: a bug" in err and str(log.relative_to(in_tmp)) in err
    assert "RuntimeError: a bug" in log.read_text()
    assert not (in_tmp / "runs" / "latest").exists()  # the newest finished run: none


# --------------------------------------------------------------------------------------
# end to end: three runs and an explicit --out
# --------------------------------------------------------------------------------------


def _run(*extra: str, cache: Path) -> int:
    return run.main(["--methods", "baseline", "--explainers", "native", "--preset", "smoke",
                     "--device", "cpu", "--no-progress", "--cache-dir", str(cache), *extra])


@pytest.mark.slow
def test_runs_get_folders_of_their_own_and_latest_follows(
        in_tmp: Path, tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path_factory.mktemp("cache")
    old = in_tmp / "runs" / "latest"  # as earlier versions left it: a real folder
    old.mkdir(parents=True)
    (old / "leaderboard.csv").write_text("an earlier version's leaderboard")
    assert _run(cache=cache) == 0
    cap = capsys.readouterr()
    first = Path("runs") / NAME
    assert (first / "leaderboard.csv").is_file() and (first / "leaderboard.html").is_file()
    assert f"to {first} (run " in cap.out  # where the outputs are, also without progress
    note = [ln for ln in cap.err.splitlines() if "left as it is" in ln]
    assert len(note) == 1 and (old / "leaderboard.csv").read_text() == \
        "an earlier version's leaderboard"

    old.rename(in_tmp / "runs" / "old-latest")  # the user moved it away
    assert _run(cache=cache) == 0
    second = Path("runs") / f"{NAME}-2"
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"runs/latest now points to {second.name}"
    assert out[-2].startswith("wrote leaderboard.html, leaderboard.csv and ")
    assert f" to {second} (run " in out[-2]
    assert os.readlink(in_tmp / "runs" / "latest") == second.name
    # the first run's outputs are its own still
    assert pd.read_csv(first / "leaderboard.csv")["method"].tolist() == ["baseline"]

    assert _run("--out", "elsewhere", cache=cache) == 0  # as given; latest stays
    out = capsys.readouterr().out
    assert "to elsewhere (run " in out and "runs/latest" not in out
    assert (in_tmp / "elsewhere" / "leaderboard.csv").is_file()
    assert os.readlink(in_tmp / "runs" / "latest") == second.name
    assert sorted(p.name for p in (in_tmp / "runs").iterdir() if p.is_dir()) == [
        NAME, f"{NAME}-2", "latest", "old-latest"]

"""Fault injection on the results store and the reports: a store is never someone
else's file, never replaced by an output, and every database or argument problem of
``harness.run`` and ``harness.report`` is one line naming the file and what to do,
with nothing torn."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from harness import report, run
from harness.safeio import write_text
from harness.store import Store
from tests.privileged import fill, immutable, read_only_folder, small_disk

SMOKE = ("--preset", "smoke", "--no-progress", "--device", "cpu", "--methods", "baseline")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache with the smoke baseline trained, and a store holding its run (read-only
    for the tests: each copies what it damages)."""
    tmp = tmp_path_factory.mktemp("trained")
    assert run.main([*SMOKE, "--cache-dir", str(tmp / "cache"), "--out", str(tmp / "out"),
                     "--db", str(tmp / "db.sqlite")]) == 0
    return tmp / "cache", tmp / "db.sqlite"


def _run(tmp: Path, cache: Path, db: Path | str, *extra: str) -> int:
    return run.main([*SMOKE, "--cache-dir", str(cache), "--out", str(tmp / "out"), "--db",
                     str(db), *extra])


def _line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _tables(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return sorted(t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE "
                                                "type = 'table'"))
    finally:
        con.close()


def _runs(path: Path) -> list[tuple[int, str]]:
    with Store(path, readonly=True) as st:
        return [(r.id, r.status) for r in st.runs(status=None)]


# --------------------------------------------------------------------------------------
# the store is never someone else's file
# --------------------------------------------------------------------------------------


def test_db_named_as_an_output_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--out o --db o/leaderboard.html`` once ended with the store overwritten by the
    page (every earlier run lost)."""
    out = tmp_path / "out"
    for name in ("leaderboard.html", "leaderboard.csv", "config.yaml", "curves.csv"):
        rc = _run(tmp_path, tmp_path / "cache", out / name)
        line = _line(capsys)
        assert rc == 2 and "is one of the run's outputs" in line and name in line, line
        assert not (out / name).exists()
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing trained


def test_no_output_replaces_a_store(tmp_path: Path, trained: tuple[Path, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A store that already sits where a report writes (renamed by hand, or given as
    ``--db`` to ``harness.report``) is never replaced: the report is refused whole."""
    _, db = trained
    out = tmp_path / "board"
    out.mkdir()
    shutil.copy(db, out / "leaderboard.csv")
    before = (out / "leaderboard.csv").read_bytes()
    assert report.main(["--db", str(out / "leaderboard.csv"), "--out", str(out)]) == 2
    assert "is one of the reports' files" in _line(capsys)
    with pytest.raises(Exception, match="is a SQLite database"):  # the writers' own guard
        write_text(out / "leaderboard.csv", "method,top1\n")
    assert (out / "leaderboard.csv").read_bytes() == before
    assert _runs(out / "leaderboard.csv") == [(1, "done")]


def test_a_database_that_is_not_ours_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Tables of its own at user_version 0: once got attnbench's tables added silently."""
    db = tmp_path / "photos.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE photos (path TEXT); CREATE TABLE albums (name TEXT);"
                      "INSERT INTO photos VALUES ('a.jpg');")
    con.close()
    rc = _run(tmp_path, tmp_path / "cache", db)
    line = _line(capsys)
    assert rc == 2 and str(db) in line and "not an attnbench results store" in line, line
    assert "albums, photos" in line
    assert _tables(db) == ["albums", "photos"]  # untouched
    assert not list((tmp_path / "cache").glob("*.pt"))
    assert report.main(["--db", str(db), "--list"]) == 2
    assert "not an attnbench results store" in _line(capsys)


@pytest.mark.parametrize("damage", ["drop results", "drop a column", "garbage pages"])
def test_a_damaged_store_is_one_line_for_the_run_and_the_report(
        tmp_path: Path, trained: tuple[Path, Path], damage: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Once a raw OperationalError from the run (after training) and a traceback from
    ``harness.report``."""
    _, good = trained
    db = tmp_path / "db.sqlite"
    shutil.copy(good, db)
    if damage == "garbage pages":
        blob = bytearray(db.read_bytes())
        for i in range(4096, len(blob), 97):
            blob[i] = 0xAB
        db.write_bytes(bytes(blob))
        words = "not a usable results database"
    else:
        con = sqlite3.connect(db)
        con.execute("DROP TABLE results" if damage == "drop results"
                    else "ALTER TABLE rows DROP COLUMN gallery")
        con.commit()
        con.close()
        words = ("damaged: table results is missing" if damage == "drop results"
                 else "damaged: table rows lacks column(s) gallery")
    fresh = tmp_path / "fresh-cache"
    rc = _run(tmp_path, fresh, db)
    line = _line(capsys)
    assert rc == 2 and line.startswith(f"error: --db {db}: ") and words in line, line
    assert "restore it from a backup, or give another --db" in line
    assert not list(fresh.glob("*.pt"))  # refused before any training
    for args in (["--list"], ["--out", str(tmp_path / "board")], ["--run", "1", "--out",
                                                                  str(tmp_path / "b")]):
        assert report.main(["--db", str(db), *args]) == 2
        line = _line(capsys)
        assert words in line and "Traceback" not in line, line


def test_an_immutable_store_is_refused_before_training(
        tmp_path: Path, trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Once a raw ``OperationalError: attempt to write a readonly database``; the report
    still reads it."""
    _, good = trained
    db = tmp_path / "db.sqlite"
    shutil.copy(good, db)
    before = db.read_bytes()
    with immutable(db):
        rc = _run(tmp_path, tmp_path / "cache", db)
        line = _line(capsys)
        assert rc == 2 and str(db) in line and "cannot be written" in line, line
        assert "make it writable, or give another --db" in line
        assert not list((tmp_path / "cache").glob("*.pt"))
        assert report.main(["--db", str(db), "--out", str(tmp_path / "board")]) == 0
        assert (tmp_path / "board" / "leaderboard.csv").exists()
    assert db.read_bytes() == before


def test_a_store_in_a_read_only_folder_is_read_by_the_report(
        tmp_path: Path, trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite cannot create the WAL's shared-memory file there: the report once failed
    with 'unable to open database file'; the run is refused in one line."""
    _, good = trained
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(good, folder / "db.sqlite")
    with read_only_folder(folder):
        assert report.main(["--db", str(folder / "db.sqlite"), "--list"]) == 0
        assert "done" in capsys.readouterr().out
        assert report.main(["--db", str(folder / "db.sqlite"), "--out",
                            str(tmp_path / "board")]) == 0
        capsys.readouterr()
        assert (tmp_path / "board" / "leaderboard.html").stat().st_size > 1000
        rc = _run(tmp_path, tmp_path / "cache", folder / "db.sqlite")
        line = _line(capsys)
        assert rc == 2 and "--db's folder" in line and "cannot write there" in line, line
        assert not list(folder.glob("*-wal")) and not list(folder.glob("*-shm"))


def test_a_full_disk_while_writing_the_store_leaves_whole_rows(
        tmp_path: Path, trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite's own 'database or disk is full' (a page limit a few pages above the
    store's size) while the run writes its row: one line, the row rolled back whole,
    the earlier run intact."""
    cache, good = trained
    db = tmp_path / "db.sqlite"
    shutil.copy(good, db)
    connect = sqlite3.connect

    def limited(path: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        con = connect(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(str(path)) == db:  # SQLite refuses to grow the file past two more pages
            (pages,) = con.execute("PRAGMA page_count").fetchone()
            con.execute(f"PRAGMA max_page_count = {pages + 2}")
        return con

    monkeypatch.setattr(sqlite3, "connect", limited)
    rc = _run(tmp_path, cache, db)
    line = _line(capsys)
    assert rc == 2 and line == (f"error: --db {db}: the disk is full; free space on it (the "
                                "interrupted write was rolled back: the stored runs are "
                                "whole)"), line
    monkeypatch.setattr(sqlite3, "connect", connect)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # every stored row is whole: each has its results and per-image scores
    assert con.execute("SELECT COUNT(*) FROM rows WHERE id NOT IN (SELECT row_id FROM "
                       "results)").fetchone()[0] == 0
    con.close()
    runs = _runs(db)
    assert runs[0] == (1, "done") and len(runs) == 2 and runs[1][1] in ("failed", "running")
    assert report.main(["--db", str(db), "--run", "1", "--out", str(tmp_path / "b")]) == 0


def test_a_full_disk_under_the_store_and_under_the_cache(
        tmp_path: Path, trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A real full file system: torch's checkpoint writer once surfaced as a raw
    'inline_container.cc ... file write failed'; SQLite as a raw I/O error."""
    cache, good = trained
    disk = tmp_path / "disk"
    with small_disk(disk, 8192):
        # the cache: its data files fit, then the checkpoint does not
        shutil.copytree(cache / "data", disk / "cache" / "data")
        fill(disk, leave_kib=64)
        rc = _run(tmp_path, disk / "cache", tmp_path / "db.sqlite")
        line = _line(capsys)
        assert rc == 2 and line.startswith(f"error: cannot write {disk / 'cache'}/baseline-")
        assert "no space left on its disk" in line and "inline_container" not in line, line
        assert not [p for p in (disk / "cache").iterdir() if ".tmp" in p.name]
        assert _runs(tmp_path / "db.sqlite") == [(1, "failed")]
        # the store: a whole copy, then not one page more
        (disk / "filler").unlink()
        shutil.rmtree(disk / "cache")
        shutil.copy(good, disk / "db.sqlite")
        fill(disk, leave_kib=0)
        rc = _run(tmp_path, cache, disk / "db.sqlite")
        line = _line(capsys)
        assert rc == 2 and line.startswith(f"error: --db {disk / 'db.sqlite'}: the disk is "
                                           "full"), line
        (disk / "filler").unlink()
        assert _runs(disk / "db.sqlite")[0] == (1, "done")


def test_a_failed_checkpoint_write_is_one_line_naming_the_file(
        tmp_path: Path, trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """torch's writer reports a full disk as a RuntimeError without an errno; as any
    user (the tmpfs case above needs root): the free space names the cause."""
    import torch

    from harness import safeio

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(str(f)).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 "
                           "vs 0: PytorchStreamWriter failed writing file data/0: file "
                           "write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(safeio, "free_bytes", lambda folder: 4096)
    assert _run(tmp_path, tmp_path / "cache", tmp_path / "db.sqlite") == 2
    line = _line(capsys)
    assert line.startswith(f"error: cannot write {tmp_path / 'cache'}/baseline-") and \
        "no space left on its disk (0 MB free)" in line and "inline_container" not in line
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(safeio, "free_bytes", lambda folder: 1 << 40)  # a quota, not space
    assert _run(tmp_path, tmp_path / "cache", tmp_path / "db.sqlite") == 2
    assert "torch could not write it" in _line(capsys)


def test_a_db_linked_to_an_output_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "results.sqlite"
    link.symlink_to(tmp_path / "out" / "leaderboard.csv")
    assert _run(tmp_path, tmp_path / "cache", link) == 2
    assert "is one of the run's outputs" in _line(capsys)


#: each process opens store i of a folder at the agreed moment start + i / 4 s
_OPEN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from harness.store import Store
folder, start, rounds = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for i in range(rounds):
    time.sleep(max(0.0, start + i / 4 - time.time()))
    with Store(folder / f"{{i}}.sqlite") as st:
        st.begin_run(meta={{}}, config={{}}, argv=[])
"""


@pytest.mark.parametrize("start", ["new", "version 1"])
def test_runs_opening_one_store_at_once_never_break_it(tmp_path: Path, start: str) -> None:
    """Three processes open (create, or bring forward) one store at the same moment,
    in eight rounds: each opens it and adds its run; none sees it half made, none
    breaks it for the next (the checks once ran outside the write lock)."""
    import subprocess
    import sys
    import time

    from harness.store import MIGRATIONS, SCHEMA_VERSION

    rounds = 8
    if start == "version 1":
        for i in range(rounds):
            con = sqlite3.connect(tmp_path / f"{i}.sqlite")
            con.executescript(MIGRATIONS[0])
            con.execute("PRAGMA user_version = 1")
            con.close()
    script = _OPEN.format(root=str(Path(__file__).resolve().parents[1]))
    t0 = time.time() + 15  # after every process's imports
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(t0),
                               str(rounds)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errs
    for i in range(rounds):
        with Store(tmp_path / f"{i}.sqlite") as st:
            assert st.version == SCHEMA_VERSION and len(st.runs(status=None)) == 3


def test_the_report_brings_an_older_store_forward(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from harness.store import MIGRATIONS, SCHEMA_VERSION

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(MIGRATIONS[0])
    con.execute("PRAGMA user_version = 1")
    con.close()
    assert report.main(["--db", str(db), "--list"]) == 0
    with Store(db, readonly=True) as st:
        assert st.version == SCHEMA_VERSION
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    assert report.main(["--db", str(empty), "--list"]) == 2
    assert "an empty database, no results store yet" in _line(capsys)


def test_a_db_that_is_a_folder_a_fifo_or_a_device(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    import os

    os.mkfifo(fifo)
    for db, words in ((tmp_path, "a directory, not a database file"),
                      (fifo, "a FIFO, not a database file"),
                      (Path("/dev/null"), "a character device, not a database file")):
        rc = _run(tmp_path, tmp_path / "cache", db)
        line = _line(capsys)
        assert rc == 2 and words in line, line
        assert report.main(["--db", str(db), "--list"]) == 2
        assert words in _line(capsys)
    assert not list((tmp_path / "cache").glob("*.pt"))


# --------------------------------------------------------------------------------------
# harness.report and harness.run: every argument problem is one line
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (["--run", "99999999999999999999999"], "a run id is an integer in [1, 2**63 - 1]"),
    (["--run", "x"], "argument --run: a run id is a positive integer, got 'x'"),
    (["--run", "0"], "a run id is an integer in [1, 2**63 - 1], got 0"),
    (["--compare", "1", "y"], "argument --compare: a run id is a positive integer"),
    (["--compare", "1"], "argument --compare: expected 2 arguments"),
    (["--run", "7"], "--run 7: no such run"),
    (["--reference", "nobody"], "--reference 'nobody' is not a row of the selection"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_report_arguments_are_one_line(tmp_path: Path, trained: tuple[Path, Path],
                                       args: list[str], words: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Once an OverflowError traceback (a huge id) and argparse's usage block."""
    _, db = trained
    rc = report.main(["--db", str(db), "--out", str(tmp_path / "b"), *args])
    line = _line(capsys)
    assert rc == 2 and line.startswith("error: ") and words in line, line
    assert "usage:" not in line


@pytest.mark.parametrize(("args", "words"), [
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--workers", "many"], "argument --workers: invalid int value: 'many'"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (["--engine", "tensorrt"], "argument --engine: invalid choice: 'tensorrt'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--seeds"], "argument --seeds: expected one argument"),
])
def test_run_arguments_are_one_line_without_the_usage_block(
        args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(args) == 2
    line = _line(capsys)
    assert line.startswith("error: ") and words in line, line

"""The results store: round trip, migration, transactions, concurrent writers, selection
and the run comparison."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import report, run
from harness.evaluate import GALLERY, TIMING, MethodResult
from harness.stats import SeedScores
from harness.store import MIGRATIONS, SCHEMA_VERSION, Store

ROOT = Path(__file__).resolve().parent.parent


def result(method: str = "abn", seed: int = 0, shift: float = 0.0, n: int = 40,
           explainer: str = "native") -> MethodResult:
    """A synthetic row: top1 and insertion scores over ``n`` images, a curve, a gallery."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    classes = ids % 4
    ins = (rng.uniform(0, 0.8, n) + shift).astype(np.float32)
    top1 = (rng.uniform(0, 1, n) > 0.3).astype(np.float32)
    per_image = {"top1": SeedScores(top1, classes, ids),
                 "insertion_auc": SeedScores(ins, classes, ids)}
    values = {"top1": float(top1.mean()), "insertion_auc": float(ins.mean()),
              "explain_ms": 1.5, "explain_overhead": 2.0}
    return MethodResult(method, seed, values, per_image, set(),
                        {"insertion_auc": np.linspace(0, 1, 9, dtype=np.float32)},
                        n_test=n, n_causal=n,
                        gallery={"saliency": rng.uniform(0, 1, (2, 8, 8)).astype(np.float32)},
                        explainer=explainer)


def _equal(a: MethodResult, b: MethodResult) -> None:
    assert (a.method, a.seed, a.explainer, a.n_test, a.n_causal) == (
        b.method, b.seed, b.explainer, b.n_test, b.n_causal)
    assert a.values == b.values
    assert a.per_class == b.per_class
    assert set(a.per_image) == set(b.per_image)
    for k, s in a.per_image.items():
        t = b.per_image[k]
        assert s.scores.dtype == t.scores.dtype
        np.testing.assert_array_equal(s.scores, t.scores)
        np.testing.assert_array_equal(s.ids, t.ids)
        np.testing.assert_array_equal(s.classes, t.classes)
    assert set(a.curves) == set(b.curves)
    for k in a.curves:
        np.testing.assert_array_equal(a.curves[k], b.curves[k])
    for k in a.gallery:
        np.testing.assert_array_equal(a.gallery[k], b.gallery[k])


def test_a_row_reads_back_exactly(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as st:
        rid = st.begin_run(meta={"dataset": "d", "preset": "p", "backbone": "b"}, config={},
                           argv=[])
        r = result()
        row = st.add_row(rid, r, checkpoint_key="k1")
        _equal(r, st.result(row))
        assert st.version == SCHEMA_VERSION
        assert st.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A smoke run of three methods and two other explainers into a database of its
    own: (out, db, what it printed)."""
    base = tmp_path_factory.mktemp("stored")
    db, out = base / "db.sqlite", base / "out"
    cap = io.StringIO()
    with contextlib.redirect_stdout(cap):
        rc = run.main(["--methods", "baseline,gradcam,abn", "--preset", "smoke",
                       "--explainers", "att-px,native,gradcam", "--out", str(out),
                       "--db", str(db), "--cache-dir", str(base / "cache")])
    assert rc == 0
    return out, db, cap.getvalue()


def test_one_row_per_model_and_explanation(stored_run: tuple[Path, Path, str]) -> None:
    out, _, printed = stored_run
    frame = pd.read_csv(out / "leaderboard.csv").set_index("method")
    # the methods' own rows first, then the explainers as listed; baseline+gradcam would
    # repeat the gradcam row (same weights, same read-out), gradcam+att-px the
    # baseline+att-px row
    assert list(frame.index) == ["baseline", "gradcam", "abn", "baseline+att-px",
                                 "abn+att-px", "abn+gradcam"]
    assert "no baseline+gradcam row: the same model and explanation as gradcam" in printed
    assert "no gradcam+att-px row: the same model and explanation as baseline+att-px" in printed
    assert list(frame["explainer"])[3:] == ["att-px", "att-px", "gradcam"]
    # the model's own columns stay in its own row
    assert np.isnan(frame.loc["abn+gradcam", "top1"]) and frame.loc["abn", "top1"] >= 0
    assert np.isnan(frame.loc["abn+gradcam", "attn_fix_gain_top1_all"])
    assert frame.loc["abn+gradcam", "insertion_auc"] > 0
    # Grad-CAM and A_px of a GAP + linear head are the same map up to scale
    assert frame.loc["abn+gradcam", "energy_pg"] == pytest.approx(
        frame.loc["abn+att-px", "energy_pg"], abs=1e-4)


def test_no_row_at_all_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run.main(["--methods", "gradcam", "--preset", "smoke", "--explainers", "gradcam",
                   "--out", str(tmp_path), "--db", str(tmp_path / "db"), "--no-progress",
                   "--cache-dir", str(tmp_path / "cache")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no (method, explainer) row to evaluate")
    with Store(tmp_path / "db") as st:
        assert [r.status for r in st.runs(status=None)] == ["failed"]


def test_report_from_the_store_equals_the_runs_own(stored_run: tuple[Path, Path, str],
                                                   tmp_path: Path) -> None:
    out, db, _ = stored_run
    assert report.main(["--db", str(db), "--out", str(tmp_path)]) == 0
    for name in ("leaderboard.csv", "comparisons.csv", "curves.csv", "stability.csv"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    frame = pd.read_csv(tmp_path / "leaderboard.csv")
    assert len(frame) == 6
    with Store(db) as st:
        (r,) = st.runs()
        assert r.status == "done" and r.n_rows == 6 and r.dataset == "cluttered-digits"
        est = st.con.execute("SELECT value FROM estimates WHERE run_id = ? AND row = 'abn' "
                             "AND metric = 'top1'", (r.id,)).fetchone()[0]
    assert est == pytest.approx(frame.set_index("method").loc["abn", "top1"], abs=1e-6)
    html = (tmp_path / "leaderboard.html").read_text()
    assert "abn" in html and "data:image/png;base64," in html


def test_schema_migration_from_version_1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0])
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO runs (id, started, status, dataset, preset, backbone, config, "
                "meta) VALUES (1, '2026-01-01T00:00:00', 'done', 'd', 'p', 'b', '{}', '{}')")
    con.execute("INSERT INTO rows (id, run_id, row, method, explainer, seed, n_test, "
                "n_causal) VALUES (7, 1, 'abn', 'abn', 'native', 0, 2, 2)")
    con.execute("INSERT INTO results (row_id, metric, value) VALUES (7, 'top1', 0.5)")
    con.executemany("INSERT INTO image_scores VALUES (7, 'top1', ?, ?, 0, ?)",
                    [(0, 10, 1.0), (1, 11, 0.0)])
    con.commit()
    con.close()
    with Store(path) as st:
        assert st.version == SCHEMA_VERSION == 2
        cols = {r[1] for r in st.con.execute("PRAGMA table_info(results)")}
        assert "eval_key" in cols
        old = st.result(7)
        assert old.values == {"top1": 0.5}
        np.testing.assert_array_equal(old.per_image["top1"].ids, [10, 11])
        assert st.lookup({"top1": "anything"}) == {}  # old rows carry no evaluation key


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(Exception, match="newer attnbench"):
        Store(path)


def test_not_a_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    assert report.main(["--db", str(bad), "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --db {bad}: not a usable results database")
    assert "\n" not in err


#: what both subprocess scripts start with: a store at argv[1] and a run in it
_PRELUDE = """
import os, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from harness.store import Store
from test_store import result
st = Store(sys.argv[1])
rid = st.begin_run(meta={{"dataset": "d", "preset": "p", "backbone": "b"}}, config={{}},
                   argv=[])
"""

_KILLED = _PRELUDE + textwrap.dedent("""
    st.add_row(rid, result("first"))
    r = result("second")
    class Dying(dict):  # the process dies while the second row's curves are written
        def items(self):
            os._exit(9)
    r.curves = Dying(r.curves)
    st.add_row(rid, r)
""")


def test_a_killed_run_leaves_complete_rows_or_none(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    code = _KILLED.format(root=str(ROOT), tests=str(ROOT / "tests"))
    p = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True)
    assert p.returncode == 9, p.stderr
    with Store(db) as st:
        rows = st.con.execute("SELECT row FROM rows").fetchall()
        assert rows == [("first",)]
        n_scores = st.con.execute("SELECT COUNT(*) FROM image_scores").fetchone()[0]
        assert n_scores == 2 * 40  # the first row's two metrics, nothing of the second
        (r,) = st.runs(status=None)
        assert r.status == "running"
        st.begin_run(meta={"dataset": "d", "preset": "p", "backbone": "b"}, config={}, argv=[])
        assert st.runs(run_ids=[r.id], status=None)[0].status == "interrupted"
        assert st.runs() == []  # neither is a finished run


_WRITER = _PRELUDE + textwrap.dedent("""
    for i in range(25):
        st.add_row(rid, result(sys.argv[2] + str(i), n=300))
    st.finish_run(rid)
""")


def test_two_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    Store(db).close()  # created (and migrated) once; both writers then append
    code = _WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), tag],
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with Store(db) as st:
        assert st.con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = st.runs()
        assert len(runs) == 2 and all(r.n_rows == 25 for r in runs)
        counts = st.con.execute("SELECT row_id, COUNT(*) FROM image_scores GROUP BY row_id"
                                ).fetchall()
        assert len(counts) == 50 and all(c == 2 * 300 for _, c in counts)
        first_rows = {r.row for r in st.rows([runs[0].id])}
        assert len(first_rows) == 25


def _stored(db: Path, rows: list[MethodResult], preset: str = "p") -> int:
    with Store(db) as st:
        rid = st.begin_run(meta={"dataset": "d", "preset": preset, "backbone": "b",
                                 "protocol": "x", "created": "2026-12-01T10:00:00"},
                           config={"eval": {"bootstrap": 200}}, argv=[])
        mm = {}
        for r in rows:
            st.add_row(rid, r)
            mm[r.row] = {"method": r.method, "explainer": r.explainer,
                         "train": {"epochs": 1, "lr": 0.1, "batch_size": 8},
                         "seeds": {r.seed: {"key": "k", "cached": True}}}
        st.finish_run(rid, meta={"dataset": "d", "preset": preset, "backbone": "b",
                                 "protocol": "x", "n_test": 40, "n_causal": 40},
                      method_meta=mm,
                      extras={"gallery_images": np.zeros((2, 8, 8, 3), np.float32)})
        return rid


def test_compare_gives_paired_differences(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    a = _stored(db, [result("abn"), result("only-a")])
    b = _stored(db, [result("abn", shift=0.1), result("only-b")])
    assert report.main(["--db", str(db), "--compare", str(a), str(b),
                        "--out", str(tmp_path / "cmp")]) == 0
    frame = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(frame["row"]) == {"abn"}
    ins = frame.set_index("metric").loc["insertion_auc"]
    assert ins["diff"] == pytest.approx(0.1, abs=1e-6)
    assert ins["diff_lo"] == pytest.approx(0.1, abs=1e-5)  # the same shift on every image
    assert ins["n_images"] == 40
    top1 = frame.set_index("metric").loc["top1"]
    assert top1["diff"] == 0 and top1["p"] == 1
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert f"run {a}" in html and f"run {b}" in html and "+0.100" in html


def test_compare_of_an_unknown_run_is_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db.sqlite"
    a = _stored(db, [result("abn")])
    assert report.main(["--db", str(db), "--compare", str(a), "99", "--out",
                        str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --compare 99: no such run in {db}"


def test_selections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db.sqlite"
    first = _stored(db, [result("abn"), result("cam")])
    second = _stored(db, [result("abn", shift=0.05)])
    other = _stored(db, [result("abn")], preset="q")
    with Store(db) as st:
        runs, rows = report.select(st, run_ids=[first])
        assert [r.id for r in runs] == [first] and [r.row for r in rows] == ["abn", "cam"]
        runs, rows = report.select(st)  # the latest finished run
        assert [r.id for r in runs] == [other]
        runs, rows = report.select(st, preset="p")  # each row from its newest run
        assert sorted((r.row, r.run_id) for r in rows) == [("abn", second), ("cam", first)]
        runs, rows = report.select(st, latest_per_method=True)  # the newest protocol
        assert [r.id for r in runs] == [other]
        with pytest.raises(Exception, match="spans 2 protocols"):
            report.select(st, dataset="d")
        with pytest.raises(Exception, match="no finished run"):
            report.select(st, dataset="nope")
    assert report.main(["--db", str(db), "--preset", "p", "--out", str(tmp_path / "o")]) == 0
    frame = pd.read_csv(tmp_path / "o" / "leaderboard.csv").set_index("method")
    assert frame.loc["abn", "insertion_auc"] == pytest.approx(
        float(result("abn", shift=0.05).values["insertion_auc"]), abs=1e-6)
    assert report.main(["--db", str(db), "--list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("d / p / b") == 2 and "d / q / b" in listing


def test_parts_of_a_row_are_found_by_their_keys(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as st:
        rid = st.begin_run(meta={}, config={}, argv=[])
        r = result()
        keys = {"top1": "K1", "insertion_auc": "K2", TIMING: "KT", GALLERY: "KG"}
        row = st.add_row(rid, r, eval_keys=keys)
        assert st.lookup({"top1": "K1", "insertion_auc": "nope", TIMING: "KT",
                          GALLERY: "KG"}) == {"top1": row, TIMING: row, GALLERY: row}
        parts = st.parts({"top1": row, TIMING: row})
        assert parts.values == {"top1": r.values["top1"], "explain_ms": 1.5,
                                "explain_overhead": 2.0}
        assert set(parts.per_image) == {"top1"}

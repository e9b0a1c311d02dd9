"""The results store: every run appends its rows to one SQLite database.

Tables (``PRAGMA user_version`` is the schema version; :data:`MIGRATIONS` bring an
older database forward, each in one transaction):

- ``runs``: one per run — configuration, git revision, torch version, device,
  precision, protocol, start and end time, host and process, and ``status``
  (``running`` → ``done`` / ``failed`` / ``interrupted``), plus what the reports need
  besides the rows (run metadata, per-method metadata, gallery images, paper values,
  the copy-replace sweep).
- ``rows``: one per evaluated (method, explainer, seed), with its checkpoint key and
  the gallery maps.
- ``results``: each row's value of each metric and timing column.
- ``image_scores``: each row's per-image scores (image id in the test split, class,
  score, in evaluation order), so that paired tests across runs are possible.
- ``curves``: each row's mean insertion / deletion curves.
- ``estimates``: each run's values over seeds with their 95 % intervals.

A row and everything under it are written in one transaction, so a killed run leaves
complete rows or none. The database is in WAL mode with a busy timeout: several runs
may write to it at once. The evaluation cache (:mod:`harness.evalcache`) reads the
results of earlier rows by their ``eval_key``.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from harness.evaluate import GALLERY, TIMING, MethodResult
from harness.stats import SeedScores

#: each entry brings the schema from version i to i + 1 (index i)
MIGRATIONS: tuple[str, ...] = (
    # 1: runs, their rows and every number under them
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started TEXT NOT NULL,
        finished TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
        host TEXT, pid INTEGER,
        dataset TEXT, preset TEXT, backbone TEXT, device TEXT, precision TEXT,
        eval_precision TEXT, protocol TEXT, git_rev TEXT, torch TEXT, python TEXT,
        argv TEXT, config TEXT, meta TEXT, method_meta TEXT, paper_values TEXT,
        cr_sweep TEXT, extras BLOB);
    CREATE TABLE rows (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        row TEXT NOT NULL, method TEXT NOT NULL, explainer TEXT NOT NULL,
        seed INTEGER NOT NULL, checkpoint_key TEXT, n_test INTEGER, n_causal INTEGER,
        created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now', 'localtime')),
        gallery BLOB,
        UNIQUE (run_id, row, seed));
    CREATE TABLE results (
        row_id INTEGER NOT NULL REFERENCES rows(id) ON DELETE CASCADE,
        metric TEXT NOT NULL, value REAL, per_class INTEGER NOT NULL DEFAULT 0,
        per_image INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (row_id, metric));
    CREATE TABLE image_scores (
        row_id INTEGER NOT NULL REFERENCES rows(id) ON DELETE CASCADE,
        metric TEXT NOT NULL, pos INTEGER NOT NULL, image_id INTEGER NOT NULL,
        class INTEGER NOT NULL, score REAL,
        PRIMARY KEY (row_id, metric, pos)) WITHOUT ROWID;
    CREATE TABLE curves (
        row_id INTEGER NOT NULL REFERENCES rows(id) ON DELETE CASCADE,
        metric TEXT NOT NULL, step INTEGER NOT NULL, value REAL,
        PRIMARY KEY (row_id, metric, step)) WITHOUT ROWID;
    CREATE TABLE estimates (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        row TEXT NOT NULL, metric TEXT NOT NULL,
        value REAL, lo REAL, hi REAL, seed_sd REAL,
        PRIMARY KEY (run_id, row, metric));
    CREATE INDEX rows_run ON rows(run_id);
    """,
    # 2: the evaluation cache: which evaluation each stored number came from
    """
    ALTER TABLE results ADD COLUMN eval_key TEXT;
    ALTER TABLE rows ADD COLUMN gallery_key TEXT;
    CREATE INDEX results_eval_key ON results(eval_key);
    CREATE INDEX rows_gallery_key ON rows(gallery_key);
    CREATE TABLE masks (key TEXT PRIMARY KEY, mask BLOB NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
DEFAULT_DB = "runs/attnbench.sqlite"
DB_ENV = "ATTNBENCH_DB"
#: seconds a writer waits for another one's transaction
BUSY_TIMEOUT = 120.0


def default_path() -> Path:
    return Path(os.environ.get(DB_ENV, DEFAULT_DB))


@dataclass
class RunInfo:
    """One stored run (its JSON columns decoded)."""

    id: int
    started: str
    finished: str | None
    status: str
    dataset: str
    preset: str
    backbone: str
    device: str
    git_rev: str
    config: dict[str, Any]
    meta: dict[str, Any]
    method_meta: dict[str, dict[str, Any]]
    paper_values: list[dict[str, Any]]
    cr_sweep: dict[str, Any] | None
    n_rows: int = 0


@dataclass(frozen=True)
class RowInfo:
    id: int
    run_id: int
    row: str
    method: str
    explainer: str
    seed: int


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays as one ``.npz`` blob."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _json(obj: Any) -> str:
    return json.dumps(obj, default=_plain, allow_nan=True)


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__}")


def _int_keys(d: dict[str, Any] | None) -> dict[Any, Any] | None:
    """JSON turns integer keys (seeds) into strings; this turns them back."""
    if d is None:
        return None
    return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v
            for k, v in d.items()}


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The results database at ``path`` (created, or migrated forward, on opening).

    Raises:
        UserError: the file is not a database, or one written by a newer version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self.con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            self.con.execute("PRAGMA journal_mode = WAL")
            self.con.execute("PRAGMA foreign_keys = ON")
            self.con.execute("PRAGMA synchronous = NORMAL")
            self.migrate()
        except sqlite3.DatabaseError as err:
            raise UserError(f"--db {self.path}: not a usable results database ({err})") from None
        except OSError as err:
            raise UserError(f"--db {self.path}: cannot open it ({err.strerror or err})") from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so writers queue on the busy timeout
        instead of failing half-way)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            if self.con.in_transaction:  # SQLite may have rolled back itself (disk full)
                self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    @property
    def version(self) -> int:
        return int(self.con.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, one version per transaction."""
        with self.transaction():  # read the version under the write lock
            have = self.version
        if have > SCHEMA_VERSION:
            raise UserError(f"--db {self.path}: written by a newer attnbench (schema "
                            f"{have}, this one reads up to {SCHEMA_VERSION})")
        for v in range(have, SCHEMA_VERSION):
            with self.transaction() as con:
                if self.version != v:  # another process migrated meanwhile
                    continue
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.execute(f"PRAGMA user_version = {v + 1}")

    # ---- writing ---------------------------------------------------------------

    def begin_run(self, *, meta: dict[str, Any], config: dict[str, Any],
                  argv: Sequence[str]) -> int:
        """A new run with status ``running``; earlier ``running`` runs of this host
        whose process is gone are marked ``interrupted``."""
        host = socket.gethostname()
        with self.transaction() as con:
            for rid, pid in con.execute("SELECT id, pid FROM runs WHERE status = 'running' "
                                        "AND host = ?", (host,)).fetchall():
                if pid is not None and pid != os.getpid() and not _pid_alive(int(pid)):
                    con.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", (rid,))
            cur = con.execute(
                "INSERT INTO runs (started, status, host, pid, dataset, preset, backbone, "
                "device, precision, eval_precision, protocol, git_rev, torch, python, argv, "
                "config, meta) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (meta.get("created", ""), host, os.getpid(), meta.get("dataset"),
                 meta.get("preset"), meta.get("backbone"), meta.get("device"),
                 meta.get("precision"), meta.get("eval_precision"), meta.get("protocol"),
                 meta.get("git_rev"), meta.get("torch"), meta.get("python"),
                 _json(list(argv)), _json(config), _json(meta)))
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def add_row(self, run_id: int, res: MethodResult, *, checkpoint_key: str = "",
                eval_keys: dict[str, str] | None = None,
                method_meta: dict[str, dict[str, Any]] | None = None) -> int:
        """Store one evaluated row and everything under it, in one transaction (with
        the run's per-row metadata so far, so that a run that stops half-way is
        reported with what it knew of its rows)."""
        keys = eval_keys or {}
        with self.transaction() as con:
            if method_meta is not None:
                con.execute("UPDATE runs SET method_meta = ? WHERE id = ?",
                            (_json(method_meta), run_id))
            cur = con.execute(
                "INSERT INTO rows (run_id, row, method, explainer, seed, checkpoint_key, "
                "n_test, n_causal, gallery, gallery_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, res.row, res.method, res.explainer, res.seed, checkpoint_key,
                 res.n_test, res.n_causal, pack(res.gallery) if res.gallery else None,
                 keys.get(GALLERY) if res.gallery else None))
            row_id = int(cur.lastrowid or 0)
            con.executemany(
                "INSERT INTO results (row_id, metric, value, per_class, per_image, eval_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(row_id, k, float(v), int(k in res.per_class), int(k in res.per_image),
                  keys.get(k if k in res.per_image else TIMING))
                 for k, v in res.values.items()])
            for k, s in res.per_image.items():
                con.executemany(
                    "INSERT INTO image_scores (row_id, metric, pos, image_id, class, score) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    zip([row_id] * len(s.scores), [k] * len(s.scores), range(len(s.scores)),
                        s.ids.astype(np.int64).tolist(), s.classes.astype(np.int64).tolist(),
                        s.scores.astype(np.float64).tolist(), strict=True))
            for k, c in res.curves.items():
                con.executemany("INSERT INTO curves (row_id, metric, step, value) "
                                "VALUES (?, ?, ?, ?)",
                                [(row_id, k, i, float(v)) for i, v in enumerate(c)])
        return row_id

    def finish_run(self, run_id: int, *, status: str = "done",
                   meta: dict[str, Any] | None = None,
                   method_meta: dict[str, dict[str, Any]] | None = None,
                   extras: dict[str, np.ndarray] | None = None,
                   paper_values: Sequence[dict[str, Any]] | None = None,
                   cr_sweep: dict[str, Any] | None = None,
                   estimates: Sequence[tuple[str, str, float, float, float, float]] = ()
                   ) -> None:
        """Set the run's status (and end time, unless ``running``), add its estimates and
        store what the reports need besides rows; an argument left None keeps what is
        stored."""
        with self.transaction() as con:
            con.execute("UPDATE runs SET status = ?, finished = ?, "
                        "meta = COALESCE(?, meta), method_meta = COALESCE(?, method_meta), "
                        "extras = COALESCE(?, extras), paper_values = COALESCE(?, paper_values), "
                        "cr_sweep = COALESCE(?, cr_sweep) "
                        "WHERE id = ?",
                        (status, _now() if status != "running" else None,
                         None if meta is None else _json(meta),
                         None if method_meta is None else _json(method_meta),
                         None if extras is None else pack(extras),
                         None if paper_values is None else _json(list(paper_values)),
                         None if cr_sweep is None else _json(cr_sweep), run_id))
            con.executemany("INSERT OR REPLACE INTO estimates (run_id, row, metric, value, "
                            "lo, hi, seed_sd) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(run_id, *e) for e in estimates])

    def set_status(self, run_id: int, status: str) -> None:
        """Mark an unfinished run ``failed`` / ``interrupted`` (a ``done`` run stays)."""
        with self.transaction() as con:
            con.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ? AND "
                        "status = 'running'", (status, _now(), run_id))

    def mask(self, key: str) -> np.ndarray | None:
        r = self.con.execute("SELECT mask FROM masks WHERE key = ?", (key,)).fetchone()
        return None if r is None else unpack(r[0])["mask"]

    def put_mask(self, key: str, mask: np.ndarray) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO masks (key, mask) VALUES (?, ?)",
                        (key, pack({"mask": mask})))

    # ---- reading ---------------------------------------------------------------

    def runs(self, *, run_ids: Sequence[int] | None = None, status: str | None = "done",
             dataset: str | None = None, preset: str | None = None,
             since: str | None = None, until: str | None = None) -> list[RunInfo]:
        """Stored runs, oldest first, filtered (``since`` / ``until``: ISO dates or
        times, compared with the start time; ``until`` a date includes that day)."""
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("status", status), ("dataset", dataset), ("preset", preset)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since:
            where.append("started >= ?")
            args.append(since)
        if until:
            where.append("started <= ?")
            args.append(until + ("T99" if len(until) == 10 else ""))
        if run_ids is not None:
            where.append(f"id IN ({','.join('?' * len(run_ids))})")
            args += list(run_ids)
        sql = ("SELECT id, started, finished, status, dataset, preset, backbone, device, "
               "git_rev, config, meta, method_meta, paper_values, cr_sweep, "
               "(SELECT COUNT(*) FROM rows WHERE run_id = runs.id) FROM runs")
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = []
        for r in self.con.execute(sql + " ORDER BY id", args).fetchall():
            mm = json.loads(r[11]) if r[11] else {}
            for v in mm.values():
                v["seeds"] = _int_keys(v.get("seeds", {}))
            meta = json.loads(r[10]) if r[10] else {}
            if meta.get("n_comb"):
                meta["n_comb"] = _int_keys(meta["n_comb"])
            out.append(RunInfo(int(r[0]), r[1], r[2], r[3], r[4] or "", r[5] or "",
                               r[6] or "", r[7] or "", r[8] or "",
                               json.loads(r[9]) if r[9] else {}, meta, mm,
                               json.loads(r[12]) if r[12] else [],
                               json.loads(r[13]) if r[13] else None, int(r[14])))
        return out

    def extras(self, run_id: int) -> dict[str, np.ndarray]:
        (blob,) = self.con.execute("SELECT extras FROM runs WHERE id = ?", (run_id,)).fetchone()
        return unpack(blob)

    def rows(self, run_ids: Sequence[int]) -> list[RowInfo]:
        """The rows of ``run_ids``, in the order they were written."""
        if not run_ids:
            return []
        q = ",".join("?" * len(run_ids))
        return [RowInfo(*r) for r in self.con.execute(
            f"SELECT id, run_id, row, method, explainer, seed FROM rows WHERE run_id IN ({q}) "
            "ORDER BY id", list(run_ids)).fetchall()]

    def result(self, row_id: int) -> MethodResult:
        """Row ``row_id`` as the evaluator returned it."""
        r = self.con.execute("SELECT method, explainer, seed, n_test, n_causal, gallery "
                             "FROM rows WHERE id = ?", (row_id,)).fetchone()
        if r is None:
            raise KeyError(row_id)
        parts = self.parts({m: row_id for m in self.metrics(row_id)} | {GALLERY: row_id})
        return MethodResult(r[0], int(r[2]), parts.values, parts.per_image, parts.per_class,
                            parts.curves, n_test=int(r[3]), n_causal=int(r[4]),
                            gallery=parts.gallery, explainer=r[1])

    def metrics(self, row_id: int) -> list[str]:
        """The columns stored for a row; the timing columns as one ``timing`` part."""
        return list(dict.fromkeys(m if per_image else TIMING for m, per_image in self.con.execute(
            "SELECT metric, per_image FROM results WHERE row_id = ? ORDER BY rowid",
            (row_id,))))

    # ---- the evaluation cache --------------------------------------------------

    def lookup(self, keys: dict[str, str]) -> dict[str, int]:
        """For each part (a metric, ``timing``, ``gallery``) whose key is stored, the
        newest row holding it."""
        out: dict[str, int] = {}
        for part, key in keys.items():
            if part == GALLERY:
                r = self.con.execute("SELECT MAX(id) FROM rows WHERE gallery_key = ?",
                                     (key,)).fetchone()
            else:
                r = self.con.execute("SELECT MAX(row_id) FROM results WHERE eval_key = ?",
                                     (key,)).fetchone()
            if r is not None and r[0] is not None:
                out[part] = int(r[0])
        return out

    def parts(self, where: dict[str, int]) -> Parts:
        """The stored parts ``{part: row_id}`` (metrics, ``timing``, ``gallery``)."""
        p = Parts()
        for part, row_id in where.items():
            if part == GALLERY:
                (blob,) = self.con.execute("SELECT gallery FROM rows WHERE id = ?",
                                           (row_id,)).fetchone()
                p.gallery = unpack(blob)
                continue
            if part == TIMING:
                for m, v in self.con.execute(
                        "SELECT metric, value FROM results WHERE row_id = ? AND per_image = 0 "
                        "ORDER BY rowid", (row_id,)):
                    p.values[m] = float("nan") if v is None else float(v)
                continue
            v, per_class = self.con.execute("SELECT value, per_class FROM results WHERE "
                                            "row_id = ? AND metric = ?",
                                            (row_id, part)).fetchone()
            p.values[part] = float("nan") if v is None else float(v)
            if per_class:
                p.per_class.add(part)
            ids, classes, scores = [], [], []
            for i, c, s in self.con.execute(
                    "SELECT image_id, class, score FROM image_scores WHERE row_id = ? AND "
                    "metric = ? ORDER BY pos", (row_id, part)):
                ids.append(i)
                classes.append(c)
                scores.append(float("nan") if s is None else s)
            # the evaluator's scores are float32: stored exactly as doubles, read back
            p.per_image[part] = SeedScores(np.asarray(scores, dtype=np.float32),
                                           np.asarray(classes, dtype=np.int64),
                                           np.asarray(ids, dtype=np.int64))
            curve = [v for (v,) in self.con.execute(
                "SELECT value FROM curves WHERE row_id = ? AND metric = ? ORDER BY step",
                (row_id, part))]
            if curve:
                p.curves[part] = np.asarray(curve, dtype=np.float32)
        return p


@dataclass
class Parts:
    """Pieces of a :class:`MethodResult` read from the store."""

    values: dict[str, float] = field(default_factory=dict)
    per_image: dict[str, SeedScores] = field(default_factory=dict)
    per_class: set[str] = field(default_factory=set)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    gallery: dict[str, np.ndarray] = field(default_factory=dict)


__all__ = ["DB_ENV", "DEFAULT_DB", "MIGRATIONS", "SCHEMA_VERSION", "Parts", "RowInfo",
           "RunInfo", "Store", "default_path", "pack", "unpack"]

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
- ``masks``: the test images a reference method misclassifies (COMB's subset), by the
  key of the model and split they were found with, so a rerun does not predict again.

A row and everything under it are written in one transaction, so a killed run leaves
complete rows or none. The database is in WAL mode with a busy timeout: several runs
may write to it at once. The evaluation cache (:mod:`harness.evalcache`) reads the
results of earlier rows by their ``eval_key``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np

from harness.errors import UserError, shown_path
from harness.evaluate import GALLERY, TIMING, MethodResult
from harness.progress import duration
from harness.safeio import free_bytes, instead, kind
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


class StoreError(UserError):
    """The results database cannot be used: one line naming the file and what to do."""


def explain(err: sqlite3.Error, path: Path) -> StoreError:
    """``err``, raised by SQLite on the database at ``path``, as one line saying what
    it means and what to do (a transaction it interrupted was rolled back)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err)
    # SQLite reports a full disk as an I/O error where it cannot create or grow the
    # WAL's files: the free space tells
    full = (name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "I/O error" in text
            or "unable to open" in text) and free_bytes(path.parent) < (1 << 20)
    if full or name.startswith("SQLITE_FULL") or "disk is full" in text:
        why = ("the disk is full; free space on it (the interrupted write was rolled back: "
               "the stored runs are whole)")
    elif name.startswith("SQLITE_READONLY") or "readonly" in text:
        why = ("it cannot be written (a read-only or immutable file, folder or file "
               "system); make it writable, or give another --db")
    elif name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text \
            or "not a database" in text:
        why = ("not a usable results database (damaged, or not a SQLite file); restore it "
               "from a backup, or give another --db")
    elif "no such table" in text or "no such column" in text:
        why = (f"its tables are damaged ({text}); restore it from a backup, or give "
               "another --db")
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        why = ("another process holds it locked (waited for up to "
               f"{duration(BUSY_TIMEOUT)}); retry when that process is done")
    elif name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        why = ("it cannot be opened (its folder must be readable, and writable for a "
               "run); check the permissions, or give another --db")
    elif name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
        why = "the disk reported an I/O error; check it, or give another --db"
    else:
        why = f"{text or type(err).__name__}; give another --db if it persists"
    return StoreError(f"--db {shown_path(path)}: {why}")


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(fn: _F) -> _F:
    """A store method whose SQLite errors become one-line :class:`StoreError` s."""
    @functools.wraps(fn)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as err:
            raise explain(err, self.path) from None
        except OverflowError:  # an id beyond SQLite's 64-bit integers: no such row
            raise StoreError(f"--db {shown_path(self.path)}: an id beyond 2**63 - 1 names no "
                             "stored run or row") from None

    return wrapper  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def expected_schema() -> dict[str, tuple[str, ...]]:
    """Each table of a current store and its columns (the migrations applied to an
    empty in-memory database)."""
    con = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS:
            con.executescript(script)
        return _schema(con)
    finally:
        con.close()


def _schema(con: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {t: tuple(c for (c,) in con.execute("SELECT name FROM pragma_table_info(?)", (t,)))
            for t in tables}


class Store:
    """The results database at ``path`` (created, or migrated forward, on opening).

    A writable store is checked on opening: a database that is not attnbench's (tables
    of its own at schema version 0), one written by a newer version, one whose tables
    were dropped or altered, and one that cannot be written are refused in one line.
    ``readonly`` opens an existing store for reading only (``harness.report``), also in
    a read-only folder.

    Raises:
        StoreError: the path is not a usable results database (one line naming it and
            what to do).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.readonly = readonly
        what = kind(self.path)
        if what == "missing" and readonly:
            raise StoreError(f"--db {shown_path(self.path)}: no such file (a run writes it: "
                             "python -m harness.run ...)")
        if what is None and self.path.is_dir():
            what = "a directory"
        if what not in (None, "missing"):
            raise StoreError(f"--db {shown_path(self.path)}: {instead(what, 'a database file')}")
        try:
            self.con = self._open_readonly() if readonly else self._open()
            if readonly and 0 < self.version < SCHEMA_VERSION and _writable(self.path):
                # an older store the report can bring forward where a run could
                self.con.close()
                self.readonly, self.con = False, self._open()
            self.check()
        except sqlite3.Error as err:
            raise explain(err, self.path) from None
        except OSError as err:
            raise StoreError(f"--db {shown_path(self.path)}: cannot open it "
                             f"({err.strerror or err})") from None

    def _open(self) -> sqlite3.Connection:
        """A connection for reading and writing, in WAL mode with a busy timeout."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        _wal(con)
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    def _open_readonly(self) -> sqlite3.Connection:
        """A read-only connection. In a folder that cannot be written, where SQLite
        cannot create the WAL's shared-memory file, the file is read as immutable
        (nobody can be writing it there) — unless its write-ahead log still holds
        changes, which an immutable reader would silently leave out."""
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError:
            con.close()
            if _writable(self.path.parent):
                raise
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"--db {shown_path(self.path)}: its write-ahead log ({wal.name}) "
                             "holds changes not yet merged into it, which cannot be read in "
                             "a read-only folder; open it once where its folder is writable")
        return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)

    def check(self) -> None:
        """Refuse what is not a usable store (see the class docstring). A writable store
        is checked under the write lock, with a write probe (refused now, not after
        training), then brought forward (:meth:`migrate`): a run opening it at the same
        moment sees it before or after, never half made."""
        if self.readonly:
            self._refuse(self.version, _schema(self.con))
        else:
            with self.transaction() as con:
                have = self.version
                self._refuse(have, _schema(con))
                con.execute(f"PRAGMA user_version = {have}")
            self.migrate()
        schema = _schema(self.con)
        for table, columns in expected_schema().items():
            missing = [c for c in columns if c not in schema.get(table, ())]
            if table not in schema or missing:
                what = (f"table {table} is missing" if table not in schema
                        else f"table {table} lacks column(s) {', '.join(missing)}")
                raise StoreError(f"--db {shown_path(self.path)}: damaged: {what}; restore it "
                                 "from a backup, or give another --db")

    def _refuse(self, have: int, schema: dict[str, tuple[str, ...]]) -> None:
        """Refuse a database that is not a store of this version: tables, none of them
        ours (whatever its ``user_version``: other programs set theirs); a newer
        schema; for reading, an empty or older one that cannot be brought forward."""
        where = f"--db {shown_path(self.path)}"
        if schema and not set(schema) & set(expected_schema()):
            names = ", ".join(sorted(schema)[:4]) + (", ..." if len(schema) > 4 else "")
            raise StoreError(f"{where}: a SQLite database that is not an attnbench results "
                             f"store (its tables: {names}); give another --db")
        if have > SCHEMA_VERSION:
            raise StoreError(f"{where}: written by a newer attnbench (schema {have}, this "
                             f"one reads up to {SCHEMA_VERSION})")
        if self.readonly and not schema:
            raise StoreError(f"{where}: an empty database, no results store yet (a run "
                             "writes it: python -m harness.run ...)")
        if self.readonly and have < SCHEMA_VERSION:
            raise StoreError(f"{where}: written by an older attnbench (schema {have}), which "
                             "cannot be brought forward here (the file or its folder is "
                             "read-only)")

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
            raise StoreError(f"--db {shown_path(self.path)}: written by a newer attnbench (schema "
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

    @_guarded
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

    @_guarded
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

    @_guarded
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

    @_guarded
    def set_status(self, run_id: int, status: str, *, wait: float = BUSY_TIMEOUT) -> None:
        """Mark an unfinished run ``failed`` / ``interrupted`` (a ``done`` run stays),
        waiting at most ``wait`` seconds for another writer (after SIGTERM a container
        runtime kills the process seconds later)."""
        self.con.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        with self.transaction() as con:
            con.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ? AND "
                        "status = 'running'", (status, _now(), run_id))

    @_guarded
    def mask(self, key: str) -> np.ndarray | None:
        r = self.con.execute("SELECT mask FROM masks WHERE key = ?", (key,)).fetchone()
        return None if r is None else unpack(r[0])["mask"]

    @_guarded
    def put_mask(self, key: str, mask: np.ndarray) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO masks (key, mask) VALUES (?, ?)",
                        (key, pack({"mask": mask})))

    # ---- reading ---------------------------------------------------------------

    @_guarded
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

    @_guarded
    def extras(self, run_id: int) -> dict[str, np.ndarray]:
        (blob,) = self.con.execute("SELECT extras FROM runs WHERE id = ?", (run_id,)).fetchone()
        return unpack(blob)

    @_guarded
    def rows(self, run_ids: Sequence[int]) -> list[RowInfo]:
        """The rows of ``run_ids``, in the order they were written."""
        if not run_ids:
            return []
        q = ",".join("?" * len(run_ids))
        return [RowInfo(*r) for r in self.con.execute(
            f"SELECT id, run_id, row, method, explainer, seed FROM rows WHERE run_id IN ({q}) "
            "ORDER BY id", list(run_ids)).fetchall()]

    @_guarded
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

    @_guarded
    def metrics(self, row_id: int) -> list[str]:
        """The columns stored for a row; the timing columns as one ``timing`` part."""
        return list(dict.fromkeys(m if per_image else TIMING for m, per_image in self.con.execute(
            "SELECT metric, per_image FROM results WHERE row_id = ? ORDER BY rowid",
            (row_id,))))

    # ---- the evaluation cache --------------------------------------------------

    @_guarded
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

    @_guarded
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
                p.causal_passes = p.causal_passes or self._passes_of(row_id)
        return p

    def _passes_of(self, row_id: int) -> dict[str, Any]:
        """How the causal passes of a stored row ran, as its run recorded them."""
        run_id, row, seed = self.con.execute("SELECT run_id, row, seed FROM rows WHERE "
                                             "id = ?", (row_id,)).fetchone()
        (blob,) = self.con.execute("SELECT method_meta FROM runs WHERE id = ?",
                                   (run_id,)).fetchone()
        seeds = (json.loads(blob) if blob else {}).get(row, {}).get("seeds", {})
        passes = seeds.get(str(seed), {}).get("causal_passes") or {}
        if "images_per_batch" in passes:  # JSON keys are strings: sizes again
            passes["images_per_batch"] = {int(k): v for k, v in
                                          passes["images_per_batch"].items()}
        return dict(passes)


@dataclass
class Parts:
    """Pieces of a :class:`MethodResult` read from the store."""

    values: dict[str, float] = field(default_factory=dict)
    per_image: dict[str, SeedScores] = field(default_factory=dict)
    per_class: set[str] = field(default_factory=set)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    gallery: dict[str, np.ndarray] = field(default_factory=dict)
    #: how the run that computed the causal metrics' parts ran their forward passes
    causal_passes: dict[str, Any] = field(default_factory=dict)


def _wal(con: sqlite3.Connection) -> None:
    """Put the database in WAL mode (it stays so, in the file). SQLite answers "database
    is locked" at once, without its busy handler, while another connection creates the
    database or removes its WAL on closing: retried here for the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _writable(path: Path) -> bool:
    """Whether ``path`` (a file, or a folder whose files SQLite creates) can be written:
    permissions, a read-only file system, an immutable file (``os.access`` says so for
    all three)."""
    return os.access(path, os.W_OK) and os.access(path.parent if path.is_file() else path,
                                                    os.W_OK)


__all__ = ["DB_ENV", "DEFAULT_DB", "MIGRATIONS", "SCHEMA_VERSION", "Parts", "RowInfo",
           "RunInfo", "Store", "StoreError", "default_path", "explain", "pack", "unpack"]

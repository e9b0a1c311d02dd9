"""Files that survive crashes and concurrent runs: atomic writes and per-key locks;
the user's paths checked before any work.

Every output and cache file is written to a temporary name beside its target,
flushed to disk (fsync) and renamed over the target, so a reader sees the old file or
the new one, never a torn one; a write that fails for want of space or permission is
one line naming the file, and no write ever replaces a SQLite database (the results
store). Two runs sharing a cache serialise on a per-key advisory lock
(``fcntl.flock``; on systems without it the lock is a no-op).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from harness.errors import UserError, clip, shown_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


#: the first 16 bytes of every SQLite database file
SQLITE_HEADER = b"SQLite format 3\x00"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; when the block
    succeeds it is fsync-ed and renamed over ``path``, else removed.

    Raises:
        UserError: ``path`` is a SQLite database (a results store is never replaced by
            an output or a cache file); the write failed for want of space or
            permission (the previous file, if any, stays whole).
    """
    path = Path(path)
    if is_database(path):
        raise UserError(f"{shown_path(path)} is a SQLite database (a results store?): no output "
                        "or cache file replaces it; write elsewhere (--out, --cache-dir) "
                        "or move the database (--db)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except (OSError, RuntimeError) as err:
            why = write_failure(err, path.parent)
            if why is None:
                raise
            raise UserError(f"cannot write {shown_path(path)}: {why}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def is_database(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts like a SQLite database."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


#: write errors that are the disk's or the folder's, not the program's
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_failure(err: BaseException, folder: Path) -> str | None:
    """What a failed write means for the user (no space, a read-only file system, no
    permission, with what to do), or None when ``err`` is not about the disk. torch's
    writer reports a full disk as a ``RuntimeError`` ("file write failed") without an
    errno; the folder's free space then tells."""
    code = getattr(err, "errno", None)
    if isinstance(err, RuntimeError) and not isinstance(err, OSError):
        if "write failed" not in str(err) and "inline_container" not in str(err):
            return None
        if free_bytes(folder) >= (1 << 20):
            return (f"torch could not write it ({clip(err, 120)}); check the folder's "
                    "quota and file-size limit, or write elsewhere")
        code = errno.ENOSPC
    if code in _NO_SPACE:
        return (f"no space left on its disk ({free_bytes(folder) >> 20} MB free); free "
                "space there or write elsewhere (any file it replaces is kept whole)")
    if code == errno.EROFS:
        return "its file system is read-only; write elsewhere"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; make the folder writable or write elsewhere"
    if code == errno.EIO:
        return "the disk reported an I/O error; check it, or write elsewhere"
    return None


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on ``folder``'s file system (a large number when it
    cannot be told)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return 1 << 62
    return st.f_bavail * st.f_frsize


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


#: the locks this process holds
_HELD: set[Path] = set()


@contextlib.contextmanager
def key_lock(path: Path, say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the advisory lock of ``path`` (``path.lock``) for the block; if another
    process holds it, say so and wait for it."""
    lock = path.with_name(path.name + ".lock")
    if lock in _HELD:  # flock is per open file: a second hold here would wait forever
        raise RuntimeError(f"{lock} is already held by this process")
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another run that is training {path.name} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.add(lock)
        yield
    finally:
        _HELD.discard(lock)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def output_clash(path: Path, out: Path, names: Sequence[str]) -> str | None:
    """The name of the output in ``out`` that ``path`` is (the same file, through any
    link), or None."""
    for name in names:
        target = out / name
        if path.resolve() == target.resolve():
            return name
        with contextlib.suppress(OSError):
            if path.exists() and target.exists() and os.path.samefile(path, target):
                return name
    return None


def kind(path: Path) -> str | None:
    """What ``path`` is, when it is not a regular file or a directory: ``a FIFO``,
    ``a character device``, ``a block device``, ``a socket``, ``a symlink loop``,
    ``missing``, or None for a file or a directory (links followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        if err.errno == errno.ENAMETOOLONG:
            return "too long a name for the file system"
        if err.errno == errno.ENOTDIR:
            return "missing"
        return f"not accessible ({err.strerror or err})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"  # pragma: no cover - no other kinds on POSIX


def instead(k: str, wanted: str) -> str:
    """``k`` (from :func:`kind`) said of a path that should be ``wanted``."""
    return k if k.startswith(("too long", "not accessible")) else f"{k}, not {wanted}"


def need_file(given: str | Path, option: str, what: str = "file") -> Path:
    """``given`` as a Path to a regular, readable file (checked by reading a byte).

    Raises:
        UserError: ``option`` and the path, and what it is instead: missing, a
            directory, a FIFO, a device, a loop, unreadable.
    """
    if not str(given).strip():
        raise UserError(f"{option} is empty: give a {what}")
    path = Path(given).expanduser()
    k = kind(path)
    if k is None and path.is_dir():
        k = "a directory"
    if k is not None:
        k = "no such file" if k == "missing" else instead(k, f"a {what}")
        raise UserError(f"{option} {shown_path(path)}: {k}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise UserError(f"{option} {shown_path(path)}: cannot read it ({err.strerror or err})"
                        ) from None
    return path


def need_dir(given: str | Path, option: str) -> Path:
    """``given`` as a Path to a readable directory, or to nothing yet (the caller says
    what a missing folder means).

    Raises:
        UserError: ``option`` and the path when it is a file, a FIFO, a device or a loop,
            or a directory that cannot be listed.
    """
    if not str(given).strip():
        raise UserError(f"{option} is empty: give a directory")
    path = Path(given).expanduser()
    k = kind(path)
    if k == "missing":
        return path
    if k is None and not path.is_dir():
        k = "a file"
    if k is not None:
        raise UserError(f"{option} {shown_path(path)}: {instead(k, 'a directory')}")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as err:
        raise UserError(f"{option} {shown_path(path)}: cannot list it ({err.strerror or err})"
                        ) from None
    return path


def probe_writable(given: str | Path, option: str) -> Path:
    """Create the folder ``given`` if needed and write and remove a probe file in it;
    returns it as a Path.

    Raises:
        UserError: an empty path, a path that is or lies under a file (or a FIFO, a
            device), or a folder that cannot be written (naming ``option``).
    """
    if not str(given).strip():
        raise UserError(f"{option} is empty: give a directory")
    folder = Path(given).expanduser()
    for p in [folder, *folder.parents]:
        k = kind(p)
        if k == "missing":
            continue
        if k is None and not p.is_dir():
            k = "a file"
        if k is not None:
            what = "it is " if p == folder else f"{shown_path(p)} is "
            raise UserError(f"{option} {shown_path(folder)}: {what}{instead(k, 'a directory')}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".attnbench-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{option} {shown_path(folder)}: cannot write there "
                        f"({err.strerror or err}); give a writable folder"
                        + (" or --no-cache" if "cache" in option else "")) from None
    return folder

"""Files that survive crashes and concurrent runs: atomic writes and per-key locks.

Every output and cache file is written to a temporary name beside its target,
flushed to disk (fsync) and renamed over the target, so a reader sees the old file or
the new one, never a torn one. Two runs sharing a cache serialise on a per-key
advisory lock (``fcntl.flock``; on systems without it the lock is a no-op).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; when the block
    succeeds it is fsync-ed and renamed over ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


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


def probe_writable(given: str | Path, option: str) -> Path:
    """Create the folder ``given`` if needed and write and remove a probe file in it;
    returns it as a Path.

    Raises:
        UserError: an empty path, a path that is or lies under a file, or a folder that
            cannot be written (naming ``option``).
    """
    from harness.errors import UserError

    if not str(given).strip():
        raise UserError(f"{option} is empty: give a directory")
    folder = Path(given).expanduser()
    for p in [folder, *folder.parents]:
        if p.exists() and not p.is_dir():
            raise UserError(f"{option} {folder}: {p} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".attnbench-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{option} {folder}: cannot write there ({err.strerror or err}); "
                        "give a writable folder" + (" or --no-cache" if "cache" in option
                                                   else "")) from None
    return folder

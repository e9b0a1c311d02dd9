"""Real file-system faults for the fault suite: a read-only folder, an immutable file,
a full disk. As root (CI, containers) permissions do not stop writes, so these use a
read-only bind mount, ``chattr +i`` and a small tmpfs; as another user, permissions
where they suffice. A test whose fault this machine cannot make is skipped, saying
why; with ``ATTNBENCH_REQUIRE_FAULTS=1`` (CI) it fails instead."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0
#: set by CI, whose machine can make every fault: a fault it cannot make fails the test
#: instead of skipping it, so these checks cannot pass unrun there
REQUIRED = os.environ.get("ATTNBENCH_REQUIRE_FAULTS", "") not in ("", "0")


def _cannot(why: str) -> None:
    """Skip the test (or, with ``ATTNBENCH_REQUIRE_FAULTS``, fail it): this machine cannot
    make the fault."""
    if REQUIRED:
        pytest.fail(f"ATTNBENCH_REQUIRE_FAULTS is set, but {why}")
    pytest.skip(why)


def _try(*cmd: str) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` (which exists, with its files) made read-only for the block."""
    if not ROOT:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    if not (_try("mount", "--bind", str(folder), str(folder))):
        _cannot("a read-only folder needs a bind mount, which this machine refuses")
    try:
        if not _try("mount", "-o", "remount,bind,ro", str(folder)):
            _cannot("this machine refuses a read-only remount")
        yield folder
    finally:
        _try("umount", "-l", str(folder))


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``path`` made unwritable for the block (``chattr +i`` as root)."""
    if not ROOT:
        path.chmod(0o444)
        try:
            yield path
        finally:
            path.chmod(0o644)
        return
    if not _try("chattr", "+i", str(path)):
        _cannot("chattr +i is not supported here")
    try:
        yield path
    finally:
        _try("chattr", "-i", str(path))


@contextlib.contextmanager
def small_disk(folder: Path, kib: int) -> Iterator[Path]:
    """``folder`` as a file system of ``kib`` KiB (a tmpfs) for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    if not ROOT or not _try("mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs",
                            str(folder)):
        _cannot("a full disk needs a small tmpfs, which only root can mount")
    try:
        yield folder
    finally:
        _try("umount", "-l", str(folder))


def fill(folder: Path, leave_kib: int) -> None:
    """Fill ``folder``'s file system until ``leave_kib`` KiB are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave_kib * 1024))

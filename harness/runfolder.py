"""Run folders: without ``--out`` each run writes into a folder of its own,
``runs/<date>-<preset>-<dataset>/`` (``-2``, ``-3``, ... when that name is taken), and
``runs/latest`` is a relative symbolic link to the newest run that finished.

A run never writes into another run's folder: the folder is created exclusively when
the run is planned (two runs starting at once get two folders), and a run that stops
before writing anything leaves no empty folder behind. ``runs/latest`` moves only once
a run's reports are written, by replacing the link atomically (a new link renamed over
the old one), so it always names a complete run. An explicit ``--out DIR`` is used as
given and leaves ``runs/latest`` alone.

This module imports only the standard library and :mod:`harness.errors`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from itertools import count
from pathlib import Path

from harness.errors import UserError, shown_path

#: where run folders (and, by default, the results store) live, relative to the
#: working directory
RUNS = Path("runs")
#: the link in :data:`RUNS` to the newest finished run's folder
LATEST = "latest"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def today() -> _dt.date:
    """The local date a new run folder is named after."""
    return _dt.date.today()


def folder_name(preset: str, dataset: str, day: _dt.date | None = None) -> str:
    """``2026-12-06-default-cluttered-digits``: the day (default :func:`today`), the
    preset and the dataset, any run of characters other than letters, digits, ``.``,
    ``_`` and ``-`` written as one ``-``."""
    parts = [(day or today()).isoformat(), preset, dataset]
    return "-".join(_UNSAFE.sub("-", p).strip("-.") or "unnamed" for p in parts)


def reserve(root: Path, name: str) -> Path:
    """Create and return ``root/name``, or ``root/name-2``, ``name-3``, ... the first
    that does not exist yet: each created exclusively, so that no two runs share one.

    Raises:
        UserError: ``root`` cannot take a folder (naming it).
    """
    folder = root
    try:
        root.mkdir(parents=True, exist_ok=True)
        for i in count(1):
            folder = root / (name if i == 1 else f"{name}-{i}")
            try:
                folder.mkdir()
            except FileExistsError:  # an earlier run's (or a file of that name): the next
                continue
            return folder
    except OSError as err:
        raise UserError(f"--out (default {shown_path(root)}/...): cannot create "
                        f"{shown_path(folder)} ({err.strerror or err}); give a writable "
                        "--out") from None
    raise AssertionError("unreachable")  # pragma: no cover - count() never ends


def drop_if_empty(folder: Path) -> None:
    """Remove ``folder`` when nothing was written into it (a run that stopped early);
    a folder holding anything stays."""
    with contextlib.suppress(OSError):  # not empty, or already gone: it stays as it is
        folder.rmdir()


def point_latest(folder: Path) -> str | None:
    """Make ``latest`` beside ``folder`` a relative symbolic link to it, replacing an
    older link atomically. Returns None when done, else the one line that says why the
    link was left as it was: ``latest`` is a real folder or file (as earlier versions
    wrote it: never touched), or the file system takes no symbolic links."""
    link = folder.parent / LATEST
    if link.exists() and not link.is_symlink():
        what = "folder" if link.is_dir() else "file"
        return (f"note: {link} is a {what}, not a link (as earlier versions wrote it): left "
                f"as it is; move it away and {link} will point at the newest run")
    tmp = folder.parent / f".{LATEST}-{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # this process's, left by a run that stopped right here
        os.symlink(folder.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except (OSError, NotImplementedError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return (f"warning: could not point {link} at {folder.name} (no symbolic links "
                f"here? {why}); this run's outputs are in {folder}")
    return None

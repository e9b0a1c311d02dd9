"""Progress output: bars on a terminal, one line per step of work in a log.

tqdm's carriage-return bars turn a log file into one very long line; when stderr is
not a terminal they are off and the trainer and the run print one line per epoch,
per evaluated method and per method started (with the elapsed time and an ETA).
"""

from __future__ import annotations

import sys


def bars(progress: bool) -> bool:
    """Whether to draw tqdm bars: progress wanted and stderr a terminal."""
    return progress and sys.stderr.isatty()


def lines(progress: bool) -> bool:
    """Whether to print one line per unit of work instead of bars."""
    return progress and not sys.stderr.isatty()


def duration(seconds: float) -> str:
    """``seconds`` in the largest sensible whole units (``4 d 3 h``, ``12 min``, ``40 s``)."""
    s = round(seconds)
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s" if s < 600 else f"{s // 60} min"
    return f"{s} s"

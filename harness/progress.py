"""Progress output: bars on a terminal, one line per step of work in a log, and the one
format every duration on the console is written in.

tqdm's carriage-return bars turn a log file into one very long line; when stderr is
not a terminal they are off and the trainer and the run print one line per epoch,
per evaluated method and per method started (with the elapsed time and an ETA).
"""

from __future__ import annotations

import math
import sys


def bars(progress: bool) -> bool:
    """Whether to draw tqdm bars: progress wanted and stderr a terminal."""
    return progress and sys.stderr.isatty()


def lines(progress: bool) -> bool:
    """Whether to print one line per unit of work instead of bars."""
    return progress and not sys.stderr.isatty()


def duration(seconds: float) -> str:
    """``seconds`` as the console writes every duration: ``0.42 s`` under a second,
    ``12.3 s`` under a minute, then two whole units, the second one zero-padded:
    ``4 min 05 s``, ``1 h 02 min``, ``3 d 07 h``.

    Raises:
        ValueError: a negative, infinite or NaN number of seconds.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration is a finite number of seconds >= 0, got {seconds!r}")
    if seconds < 0.995:  # what rounds to 1.00 s is written 1.0 s
        return f"{seconds:.2f} s"
    if seconds < 59.95:  # what rounds to 60.0 s is written 1 min 00 s
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    m = round(seconds / 60)
    if m < 24 * 60:
        return f"{m // 60} h {m % 60:02d} min"
    h = round(seconds / 3600)
    return f"{h // 24} d {h % 24:02d} h"

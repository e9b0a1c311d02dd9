"""Uncertainty: percentile-bootstrap 95 % intervals over test images (scipy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats


def bootstrap_ci(scores: np.ndarray, classes: np.ndarray,
                 aggregate: Callable[[np.ndarray, np.ndarray], float] | None = None,
                 n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``aggregate(scores, classes)`` over images.

    With ``aggregate=None`` the statistic is the mean (vectorised). Fewer than two
    images give a NaN interval.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2 or n_resamples < 2:
        return float("nan"), float("nan")
    if np.all(scores == scores[0]):
        return float(scores[0]), float(scores[0])
    rng = np.random.default_rng(seed)
    if aggregate is None:
        res = stats.bootstrap((scores,), np.mean, n_resamples=n_resamples, method="percentile",
                              confidence_level=level, random_state=rng, vectorized=True)
    else:
        def stat(s: np.ndarray, c: np.ndarray) -> float:
            return aggregate(s, c)

        res = stats.bootstrap((scores, np.asarray(classes)), stat, paired=True,
                              vectorized=False, n_resamples=n_resamples, method="percentile",
                              confidence_level=level, random_state=rng)
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)

"""Uncertainty over test images and training seeds, paired tests, ranking stability.

A leaderboard value is the mean over seeds of a per-seed aggregate of per-image scores
(the mean, or the mean of per-class means). Its 95 % interval comes from a two-level
percentile bootstrap: each replicate draws the seeds with replacement, then the test
images with replacement, and recomputes the value. When every seed scored the same
images (the usual case: the test split is fixed and seeds only change training) the
image draw is shared by the seeds of a replicate — the design is crossed, an image
that is hard for one seed is hard for all — otherwise each drawn seed draws its own
images (nested). With one seed this is the ordinary bootstrap over images.

A paired comparison resamples two methods with the same draws on the images and seeds
both scored, so the interval of the difference reflects only what differs between
them. Its two-sided p-value is twice the smaller share of replicates on either side of
0, counted with the usual +1 (so p >= 2 / (R + 1)): below 0.05 essentially when the 95 %
interval excludes 0, up to the discreteness of R replicates. The p-values of a family
of comparisons are Holm-adjusted.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def aggregate(scores: np.ndarray, classes: np.ndarray, per_class: bool = False) -> float:
    """The mean of ``scores``, or with ``per_class`` the mean of per-class means; NaN
    for no scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return float("nan")
    w = np.ones((1, len(scores)))
    return float(weighted_aggregate(scores, np.asarray(classes), w, per_class)[0])


def weighted_aggregate(scores: np.ndarray, classes: np.ndarray, weights: np.ndarray,
                       per_class: bool = False) -> np.ndarray:
    """:func:`aggregate` under each row of ``weights`` ``[R,n]`` (an image drawn k
    times has weight k): ``[R]``, vectorised over the replicates."""
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if not per_class:
        return (weights @ scores) / np.maximum(weights.sum(1), 1e-300)
    _, cls = np.unique(np.asarray(classes), return_inverse=True)
    onehot = np.zeros((len(scores), int(cls.max()) + 1 if len(cls) else 0))
    onehot[np.arange(len(scores)), cls] = 1.0
    num = (weights * scores) @ onehot
    den = weights @ onehot
    present = den > 0
    means = np.where(present, num / np.where(present, den, 1.0), 0.0)
    return means.sum(1) / np.maximum(present.sum(1), 1)


@dataclass(frozen=True)
class SeedScores:
    """One seed's per-image scores of one metric: ``scores``, ``classes`` and the
    images' test-split ``ids`` (all ``[n]``)."""

    scores: np.ndarray
    classes: np.ndarray
    ids: np.ndarray

    def take(self, ids: np.ndarray) -> SeedScores:
        """The scores of ``ids`` (which must all be present), in that order."""
        pos = {int(i): k for k, i in enumerate(self.ids)}
        idx = np.array([pos[int(i)] for i in ids], dtype=np.int64)
        return SeedScores(self.scores[idx], self.classes[idx], self.ids[idx])


@dataclass(frozen=True)
class Estimate:
    """A value over seeds with its bootstrap interval and seed spread.

    Attributes:
        value: mean over seeds of the per-seed aggregates.
        lo, hi: the two-level bootstrap interval (NaN with fewer than two images).
        per_seed: each seed's aggregate.
        seed_sd: standard deviation of ``per_seed`` (ddof 1; NaN for one seed).
    """

    value: float
    lo: float
    hi: float
    per_seed: tuple[float, ...]
    seed_sd: float


@functools.lru_cache(maxsize=4)
def _image_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[R,n]`` multinomial draw counts of n images with replacement (float64): the
    same draws for every metric and method with this many images (read-only)."""
    rng = np.random.default_rng([seed, n])
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    w.setflags(write=False)
    return w


def _replicates(seeds: Sequence[Sequence[SeedScores]], per_class: bool, n_resamples: int,
                seed: int) -> np.ndarray:
    """Bootstrap replicates ``[G,R]`` of the seed mean of each of G aligned groups
    (``seeds[g][s]``; the groups share every draw: a paired resampling)."""
    rng = np.random.default_rng(seed)
    n_groups, n_seeds = len(seeds), len(seeds[0])
    draws = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    sizes = [len(s.scores) for s in seeds[0]]
    crossed = all(np.array_equal(seeds[0][0].ids, s.ids) for s in seeds[0])
    out = np.zeros((n_groups, n_resamples))
    if crossed:  # one image draw per replicate, shared by its seeds
        w = _image_weights(sizes[0], n_resamples, seed)
        for g in range(n_groups):
            per = np.stack([weighted_aggregate(s.scores, s.classes, w, per_class)
                            for s in seeds[g]])  # [S,R]
            out[g] = per[draws, np.arange(n_resamples)[:, None]].mean(1)
        return out
    for slot in range(n_seeds):  # nested: each drawn seed draws its own images
        for s in range(n_seeds):
            rows = np.flatnonzero(draws[:, slot] == s)
            if not len(rows):
                continue
            n = sizes[s]
            wn = rng.multinomial(n, np.full(n, 1.0 / n), size=len(rows))
            for g in range(n_groups):
                sc = seeds[g][s]
                out[g, rows] += weighted_aggregate(sc.scores, sc.classes, wn, per_class)
    return out / n_seeds


def estimate(seeds: Sequence[SeedScores], per_class: bool = False, n_resamples: int = 1000,
             seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean over seeds of the per-seed aggregate, with its two-level bootstrap interval.

    Seeds without scores are left out; no scores at all give NaN throughout.
    """
    seeds = [s for s in seeds if len(s.scores)]
    per_seed = tuple(aggregate(s.scores, s.classes, per_class) for s in seeds)
    if not seeds:
        nan = float("nan")
        return Estimate(nan, nan, nan, (), nan)
    value = float(np.mean(per_seed))
    sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
    if min(len(s.scores) for s in seeds) < 2 or n_resamples < 2:
        return Estimate(value, float("nan"), float("nan"), per_seed, sd)
    reps = _replicates([seeds], per_class, n_resamples, seed)[0]
    lo, hi = _percentile(reps, level)
    return Estimate(value, lo, hi, per_seed, sd)


def _percentile(reps: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(scores: np.ndarray, classes: np.ndarray | None = None,
                 per_class: bool = False, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval over images of one seed's aggregate."""
    scores = np.asarray(scores, dtype=np.float64)
    cls = np.zeros(len(scores), np.int64) if classes is None else np.asarray(classes)
    e = estimate([SeedScores(scores, cls, np.arange(len(scores)))], per_class,
                 n_resamples, seed, level)
    return e.lo, e.hi


@dataclass(frozen=True)
class Comparison:
    """A method minus a reference on the images and seeds both scored.

    Attributes:
        diff: value(method) - value(reference) on the common images.
        lo, hi: bootstrap interval of ``diff``.
        p: two-sided bootstrap p-value of ``diff = 0``; ``p_holm`` after Holm's
            correction within its family (set by :func:`holm`).
        n_images: common images per seed (the smallest over seeds).
    """

    diff: float
    lo: float
    hi: float
    p: float
    n_images: int
    p_holm: float = float("nan")


def paired_difference(method: Sequence[SeedScores], reference: Sequence[SeedScores],
                      per_class: bool = False, n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> Comparison:
    """``method - reference`` paired on images and seeds (the ith seed of each).

    Each seed keeps the images both scored; seeds where they share fewer than two
    images are dropped (no seeds left: NaN throughout).
    """
    a_all, b_all = [], []
    for a, b in zip(method, reference, strict=True):
        common = np.intersect1d(a.ids, b.ids)
        if len(common) >= 2:
            a_all.append(a.take(common))
            b_all.append(b.take(common))
    nan = float("nan")
    if not a_all:
        return Comparison(nan, nan, nan, nan, 0)
    diff = float(np.mean([aggregate(a.scores, a.classes, per_class) for a in a_all])
                 - np.mean([aggregate(b.scores, b.classes, per_class) for b in b_all]))
    reps = _replicates([a_all, b_all], per_class, n_resamples, seed)
    d = reps[0] - reps[1]
    lo, hi = _percentile(d, level)
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_resamples + 1))
    return Comparison(diff, lo, hi, p, min(len(a.scores) for a in a_all))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaNs stay NaN and are not
    counted in the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def ranking_stability(per_seed: Mapping[str, Sequence[float]]) -> float:
    """Mean Kendall's tau-b between the seeds' rankings of the methods: ``per_seed``
    maps each method to its value under each seed (same seed order). Methods with a
    NaN under some seed are left out; NaN with fewer than two seeds or methods."""
    rows = [np.asarray(v, dtype=np.float64) for v in per_seed.values()]
    rows = [r for r in rows if not np.isnan(r).any()]
    if len(rows) < 2 or len(rows[0]) < 2:
        return float("nan")
    table = np.stack(rows)  # [methods, seeds]
    taus = []
    for a, b in itertools.combinations(range(table.shape[1]), 2):
        x, y = table[:, a], table[:, b]
        flat_x, flat_y = bool(np.all(x == x[0])), bool(np.all(y == y[0]))
        if flat_x or flat_y:  # tau is undefined: all tied in both = the same order
            taus.append(1.0 if flat_x and flat_y else 0.0)
        else:
            taus.append(float(sps.kendalltau(x, y).statistic))
    return float(np.mean(taus))

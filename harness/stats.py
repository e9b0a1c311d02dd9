"""Uncertainty over test images and training seeds, paired tests, ranking stability.

A leaderboard value is the mean over seeds of a per-seed aggregate of per-image scores
(the mean, or the mean of per-class means). Two things make it uncertain: which test
images were drawn, and which training seeds. Both are counted:

* **images**: a bootstrap over the test images with the seeds held fixed. When every
  seed scored the same images (the usual case: the test split is fixed and seeds only
  change training) one image draw serves all seeds of a replicate — the design is
  crossed, an image that is hard for one seed is hard for all; otherwise (the COMB
  subset depends on each seed's ``abn``) each seed draws its own images (nested). This
  gives SE_images.
* **seeds**: the spread of the per-seed values, SE_seeds = sd / sqrt(S). Resampling
  three seeds with replacement would not do: it has ten distinct outcomes and puts the
  2.5 % percentile on the smallest seed, so its intervals and tests are far too
  confident (a sign-flip test on three seeds cannot go below p = 0.25).

With one seed the interval is the percentile bootstrap over images, conditional on
that trained model. With S >= 2 it is value +- t * SE, SE^2 = SE_images^2 + SE_seeds^2,
t from Student's t with the Welch-Satterthwaite degrees of freedom
(S - 1) (SE / SE_seeds)^4: dominated by the seeds it is a t-interval on S - 1 degrees of
freedom, dominated by the images a normal one.

A paired comparison does the same for the per-seed differences of two methods on the
images both scored (the image draws shared, so only what differs between the two
counts); its two-sided p-value is that of the t statistic diff / SE on those degrees of
freedom (normal with one seed, where it is conditional on the trained models). The
p-values of a family of comparisons are Holm-adjusted.
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
        """The scores of ``ids`` (which must all be present), in that order; an image
        with several scores (one per label of a multi-label image) brings all of them,
        in their order."""
        pos: dict[int, list[int]] = {}
        for k, i in enumerate(self.ids):
            pos.setdefault(int(i), []).append(k)
        idx = np.array([k for i in ids for k in pos[int(i)]], dtype=np.int64)
        return SeedScores(self.scores[idx], self.classes[idx], self.ids[idx])


def _draws(ids: np.ndarray, n_resamples: int, seed: int,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """``[R,n]`` bootstrap weights of the ``n`` scores with ids ``ids``: images drawn with
    replacement, each score weighted by the draws of its image (the scores of one
    image, one per label, are drawn together). With one score an image: the shared
    draws of :func:`_image_weights` (or ``rng``'s)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    n = len(uniq)
    w = (_image_weights(n, n_resamples, seed) if rng is None
         else rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64))
    return w if n == len(ids) else w[:, inverse]


@dataclass(frozen=True)
class Estimate:
    """A value over seeds with its interval (images and seeds) and seed spread.

    Attributes:
        value: mean over seeds of the per-seed aggregates.
        lo, hi: its 95 % interval over images and seeds (NaN with fewer than two images).
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


def _image_replicates(seeds: Sequence[Sequence[SeedScores]], per_class: bool,
                      n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap replicates ``[G,R]`` over the test images of the seed mean of each of G
    aligned groups (``seeds[g][s]``), the seeds held fixed; the groups share every
    draw (a paired resampling). Crossed when every seed has the same image ids."""
    rng = np.random.default_rng(seed)
    n_groups, n_seeds = len(seeds), len(seeds[0])
    crossed = all(np.array_equal(seeds[0][0].ids, s.ids) for s in seeds[0])
    out = np.zeros((n_groups, n_resamples))
    for i in range(n_seeds):
        w = _draws(seeds[0][i].ids, n_resamples, seed, None if crossed else rng)
        for g in range(n_groups):
            sc = seeds[g][i]
            out[g] += weighted_aggregate(sc.scores, sc.classes, w, per_class)
    return out / n_seeds


def _t_interval(value: float, se_images: float, se_seeds: float, n_seeds: int,
                level: float) -> tuple[float, float, float, float]:
    """(lo, hi, se, df) of value +- t * se with the two variance components."""
    se = float(np.hypot(se_images, se_seeds))
    if se_seeds > 0 and n_seeds > 1:
        df = (n_seeds - 1) * (se / se_seeds) ** 4
    else:
        df = float("inf")
    t = float(sps.t.ppf(0.5 + level / 2, df)) if np.isfinite(df) else float(
        sps.norm.ppf(0.5 + level / 2))
    return value - t * se, value + t * se, se, df


def estimate(seeds: Sequence[SeedScores], per_class: bool = False, n_resamples: int = 1000,
             seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean over seeds of the per-seed aggregate, with its interval over images and
    seeds (see the module docstring).

    Seeds without scores are left out (``per_seed`` lists the seeds used); seeds with a
    single score add no image variance; no scores at all give NaN throughout.
    """
    seeds = [s for s in seeds if len(s.scores)]
    per_seed = tuple(aggregate(s.scores, s.classes, per_class) for s in seeds)
    nan = float("nan")
    if not seeds:
        return Estimate(nan, nan, nan, (), nan)
    value = float(np.mean(per_seed))
    sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else nan
    boot = [s for s in seeds if len(s.scores) >= 2]
    if not boot or n_resamples < 2:
        return Estimate(value, nan, nan, per_seed, sd)
    reps = _image_replicates([boot], per_class, n_resamples, seed)[0]
    if len(seeds) == 1:
        lo, hi = _percentile(reps, level)
        return Estimate(value, lo, hi, per_seed, sd)
    se_images = float(np.std(reps, ddof=1)) * len(boot) / len(seeds)
    lo, hi, _, _ = _t_interval(value, se_images, sd / np.sqrt(len(seeds)), len(seeds),
                               level)
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
        diff: value(method) - value(reference) on the common images (mean over seeds of
            the per-seed differences).
        lo, hi: its interval (t with the two variance components).
        p: two-sided p-value of ``diff = 0``; ``p_holm`` after Holm's correction within
            its family (set by the caller).
        n_images: common images per seed (the smallest over seeds).
        n_seeds: seeds compared; with one, the comparison is conditional on the two
            trained models (image noise only).
    """

    diff: float
    lo: float
    hi: float
    p: float
    n_images: int
    n_seeds: int = 1
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
        return Comparison(nan, nan, nan, nan, 0, 0)
    d = np.array([aggregate(a.scores, a.classes, per_class)
                  - aggregate(b.scores, b.classes, per_class)
                  for a, b in zip(a_all, b_all, strict=True)])
    diff, n_seeds = float(d.mean()), len(d)
    reps = _image_replicates([a_all, b_all], per_class, n_resamples, seed)
    se_images = float(np.std(reps[0] - reps[1], ddof=1))
    se_seeds = float(np.std(d, ddof=1) / np.sqrt(n_seeds)) if n_seeds > 1 else 0.0
    lo, hi, se, df = _t_interval(diff, se_images, se_seeds, n_seeds, level)
    if se > 0:
        t = abs(diff) / se
        p = float(2 * (sps.t.sf(t, df) if np.isfinite(df) else sps.norm.sf(t)))
    else:  # no variation at all: certain (given the models) unless the difference is 0
        p = 1.0 if diff == 0 else 0.0
    return Comparison(diff, lo, hi, p, min(len(np.unique(a.ids)) for a in a_all), n_seeds)


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

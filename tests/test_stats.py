"""Seed x image bootstrap, paired comparisons, Holm and Kendall's tau against hand
computations and independent references (scipy, sklearn)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import balanced_accuracy_score

from harness import stats
from harness.stats import SeedScores


def _seed(scores: np.ndarray, classes: np.ndarray | None = None,
          ids: np.ndarray | None = None) -> SeedScores:
    n = len(scores)
    return SeedScores(np.asarray(scores, float),
                      np.zeros(n, int) if classes is None else np.asarray(classes),
                      np.arange(n) if ids is None else np.asarray(ids))


def test_aggregates_and_their_weighted_form() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.7, y, rng.integers(0, 4, 60))
    hits = (pred == y).astype(float)
    assert stats.aggregate(hits, y) == pytest.approx(hits.mean())
    assert stats.aggregate(hits, y, per_class=True) == pytest.approx(
        balanced_accuracy_score(y, pred))
    # an image drawn k times weighs k: the same as repeating it
    w = rng.integers(0, 3, size=(5, 60))
    got = stats.weighted_aggregate(hits, y, w, per_class=True)
    for r in range(5):
        rep = np.repeat(np.arange(60), w[r])
        assert got[r] == pytest.approx(stats.aggregate(hits[rep], y[rep], per_class=True))
    assert np.isnan(stats.aggregate(np.zeros(0), np.zeros(0)))


def test_one_seed_is_the_ordinary_percentile_bootstrap() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.2, 300)
    e = stats.estimate([_seed(x)], n_resamples=4000)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile",
                        random_state=np.random.default_rng(2)).confidence_interval
    assert e.value == pytest.approx(x.mean())
    assert e.lo == pytest.approx(ref.low, abs=0.004) and e.hi == pytest.approx(ref.high, abs=0.004)
    assert np.isnan(e.seed_sd) and e.per_seed == (pytest.approx(x.mean()),)
    assert stats.estimate([_seed(np.ones(5))]).lo == 1.0  # no spread, no width
    nan = stats.estimate([_seed(np.ones(1))])
    assert nan.value == 1.0 and np.isnan(nan.lo)


def test_seed_variance_widens_the_interval() -> None:
    """Three seeds whose every image scores 0.2, 0.5 and 0.8: no image variance, so the
    interval is the t-interval of three values: 0.5 +- t(0.975, 2) * 0.3 / sqrt(3)."""
    seeds = [_seed(np.full(200, v)) for v in (0.2, 0.5, 0.8)]
    e = stats.estimate(seeds, n_resamples=500)
    assert e.value == pytest.approx(0.5) and e.seed_sd == pytest.approx(0.3)
    assert e.per_seed == pytest.approx((0.2, 0.5, 0.8))
    half = sps.t.ppf(0.975, 2) * 0.3 / np.sqrt(3)
    assert e.lo == pytest.approx(0.5 - half) and e.hi == pytest.approx(0.5 + half)
    single = stats.estimate(seeds[:1] * 3, n_resamples=500)
    assert single.lo == pytest.approx(0.2) and single.hi == pytest.approx(0.2)


def test_intervals_and_tests_hold_their_level_with_few_seeds() -> None:
    """Two methods of equal expected value, each seed with its own training offset (sd
    0.03) on top of a shared image effect: the paired test rejects at about its 5 %
    level, and the value's 95 % interval covers the truth about 95 % of the time.
    Resampling the three seeds themselves rejected 29 % of such comparisons."""
    rng = np.random.default_rng(11)
    n, reps = 300, 300
    rejects, covered = 0, 0
    for _ in range(reps):
        image = rng.normal(0, 0.2, n)
        a = [_seed(image + rng.normal(0, 0.03) + rng.normal(0, 0.05, n)) for _ in range(3)]
        b = [_seed(image + rng.normal(0, 0.03) + rng.normal(0, 0.05, n)) for _ in range(3)]
        rejects += stats.paired_difference(a, b, n_resamples=200).p < 0.05
        e = stats.estimate(a, n_resamples=200)
        covered += e.lo <= 0.0 <= e.hi
    assert rejects / reps < 0.09
    assert covered / reps > 0.9


def test_crossed_and_nested_designs() -> None:
    rng = np.random.default_rng(4)
    hard = rng.normal(0, 1, 400)  # an image effect shared by the seeds
    same = [_seed(hard + rng.normal(0, 0.1, 400)) for _ in range(3)]
    crossed = stats.estimate(same, n_resamples=2000)
    # the shared image effect does not average out over seeds: the interval stays about
    # as wide as one seed's image interval (a nested bootstrap would shrink it by ~sqrt 3)
    one = stats.estimate(same[:1], n_resamples=2000)
    assert (crossed.hi - crossed.lo) == pytest.approx(one.hi - one.lo, rel=0.25)
    # different image sets (the comb subset differs per seed): the nested design
    diff = [_seed(rng.normal(0.5, 0.1, n), ids=np.arange(n) + k)
            for k, n in enumerate((50, 60, 70))]
    e = stats.estimate(diff, n_resamples=500)
    assert e.lo < e.value < e.hi and e.value == pytest.approx(np.mean(e.per_seed))
    # nested, each seed constant on its own images: only the seeds' spread remains
    flat = [_seed(np.full(n, v), ids=np.arange(n) + k)
            for k, (n, v) in enumerate(((50, 0.4), (60, 0.5), (70, 0.9)))]
    f = stats.estimate(flat, n_resamples=300)
    half = sps.t.ppf(0.975, 2) * np.std([0.4, 0.5, 0.9], ddof=1) / np.sqrt(3)
    assert f.lo == pytest.approx(0.6 - half) and f.hi == pytest.approx(0.6 + half)
    # one image per seed in one of them: it adds no image variance, the rest still counts
    short = stats.estimate([*flat[:2], _seed(np.array([0.9]), ids=np.array([999]))],
                           n_resamples=300)
    assert short.lo == pytest.approx(f.lo) and short.hi == pytest.approx(f.hi)


def test_paired_difference() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(300)
    ref = [_seed(base)]
    same = stats.paired_difference(ref, ref, n_resamples=500)
    assert same.diff == 0 and same.lo == same.hi == 0 and same.p == 1.0
    shifted = stats.paired_difference([_seed(base + 0.01)], ref, n_resamples=500)
    # a constant shift: every paired replicate is +0.01, however noisy the images are;
    # with one seed the comparison is conditional on the two models: certain
    assert shifted.diff == pytest.approx(0.01) and shifted.lo == pytest.approx(0.01)
    assert shifted.p == 0.0 and shifted.n_seeds == 1
    # three seeds: the per-seed differences 0.01, 0.02, 0.03 carry the test (t, 2 df)
    three = stats.paired_difference([_seed(base + k) for k in (0.01, 0.02, 0.03)],
                                    [_seed(base)] * 3, n_resamples=500)
    t = 0.02 / (0.01 / np.sqrt(3))
    assert three.diff == pytest.approx(0.02) and three.n_seeds == 3
    assert three.p == pytest.approx(2 * sps.t.sf(t, 2))
    noise = stats.paired_difference([_seed(base + rng.normal(0, 0.5, 300))], ref,
                                    n_resamples=1000)
    assert noise.lo < 0 < noise.hi and noise.p > 0.05
    # pairing by test-split id: only common images count, whatever their order
    a = _seed(np.array([1.0, 2.0, 3.0, 9.0]), ids=np.array([3, 1, 2, 7]))
    b = _seed(np.array([1.0, 1.0, 1.0]), ids=np.array([1, 2, 3]))
    c = stats.paired_difference([a], [b], n_resamples=200)
    assert c.n_images == 3 and c.diff == pytest.approx(1.0)


def test_holm_against_a_hand_computation() -> None:
    # sorted: 0.01 * 4 = 0.04; 0.03 * 3 = 0.09; 0.04 * 2 = 0.08 -> 0.09 (monotone); 0.5
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    got = stats.holm([0.2, float("nan"), 0.6])  # NaN: not in the family
    assert got[0] == pytest.approx(0.4) and np.isnan(got[1]) and got[2] == pytest.approx(0.6)
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]


def test_ranking_stability_is_the_mean_pairwise_kendall_tau() -> None:
    same = {"a": [0.9, 0.8, 0.85], "b": [0.5, 0.4, 0.45], "c": [0.1, 0.2, 0.0]}
    assert stats.ranking_stability(same) == pytest.approx(1.0)
    flip = {"a": [0.9, 0.1], "b": [0.5, 0.5], "c": [0.1, 0.9]}
    assert stats.ranking_stability(flip) == pytest.approx(-1.0)
    rng = np.random.default_rng(6)
    table = rng.random((6, 4))
    want = np.mean([sps.kendalltau(table[:, i], table[:, j]).statistic
                    for i, j in itertools.combinations(range(4), 2)])
    got = stats.ranking_stability({str(k): list(v) for k, v in enumerate(table)})
    assert got == pytest.approx(want)
    assert np.isnan(stats.ranking_stability({"a": [0.1], "b": [0.2]}))  # one seed
    # methods with a NaN under some seed are left out
    assert stats.ranking_stability({**same, "d": [0.3, float("nan"), 0.2]}) == 1.0

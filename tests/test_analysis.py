"""Rows over seeds, paired comparisons with their verdicts, and ranking stability, on
hand-made per-image scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness import analysis, stats
from harness.evaluate import MethodResult
from harness.stats import SeedScores

N = 200


def result(method: str, seed: int, **scores: np.ndarray) -> MethodResult:
    per = {k: SeedScores(np.asarray(v, float), np.arange(N) % 4, np.arange(N))
           for k, v in scores.items()}
    values = {k: float(np.mean(v)) for k, v in scores.items()}
    values["explain_ms"] = 1.0 + seed
    return MethodResult(method, seed, values, per, {"pointing_game"}, {}, N, N)


def runs(seeds: tuple[int, ...] = (0, 1, 2)) -> list[MethodResult]:
    rng = np.random.default_rng(0)
    out = []
    for s in seeds:
        hard = rng.random(N)
        out += [
            result("baseline", s, top1=(rng.random(N) < 0.9).astype(float),
                   deletion_auc=hard * 0.5 + 0.4),
            result("gradcam", s, top1=(rng.random(N) < 0.9).astype(float),
                   deletion_auc=hard * 0.5 + 0.1),
            # clearly better deletion (lower) than gradcam, same accuracy draws
            result("abn", s, top1=(rng.random(N) < 0.9).astype(float),
                   deletion_auc=hard * 0.5 + 0.05 - 0.01 * s),
            # clearly worse deletion
            result("msabn", s, top1=(rng.random(N) < 0.9).astype(float),
                   deletion_auc=hard * 0.5 + 0.3),
        ]
    return out


def test_rows_aggregate_each_method_over_its_seeds() -> None:
    rows = {r.method: r for r in analysis.summarise(runs(), n_resamples=300)}
    abn = rows["abn"]
    assert abn.seeds == (0, 1, 2)
    d = abn.estimates["deletion_auc"]
    assert d.value == pytest.approx(np.mean(d.per_seed)) and len(d.per_seed) == 3
    assert d.seed_sd == pytest.approx(np.std(d.per_seed, ddof=1))
    assert d.lo < d.value < d.hi
    t = abn.estimates["explain_ms"]  # no per-image scores: seed mean, no interval
    assert t.value == pytest.approx(2.0) and math.isnan(t.lo)


def test_comparisons_against_each_columns_reference() -> None:
    res = runs()
    refs = analysis.default_references(res)
    assert refs == {"top1": "baseline", "deletion_auc": "gradcam"}
    cmp = {(c.method, c.metric): c
           for c in analysis.compare(res, refs, reference_rows={"baseline"}, n_resamples=500)}
    # deletion: lower is better
    assert cmp[("abn", "deletion_auc")].verdict == "better"
    assert cmp[("abn", "deletion_auc")].comparison.diff == pytest.approx(-0.06, abs=1e-9)
    assert cmp[("msabn", "deletion_auc")].verdict == "worse"
    # the centre-prior row is compared on accuracy only, and no row with itself
    assert ("baseline", "deletion_auc") not in cmp and ("gradcam", "deletion_auc") not in cmp
    assert ("baseline", "top1") not in cmp and ("gradcam", "top1") in cmp
    # same accuracy distribution: no detectable difference after Holm
    for m in ("gradcam", "abn", "msabn"):
        c = cmp[(m, "top1")]
        assert c.verdict == "no detectable difference", (m, c)
        assert c.comparison.p_holm >= c.comparison.p
    family = [cmp[(m, "top1")].comparison for m in ("gradcam", "abn", "msabn")]
    assert [f.p_holm for f in family] == pytest.approx(
        stats.holm([f.p for f in family]))


def test_a_missing_reference_gives_no_comparisons() -> None:
    res = [r for r in runs() if r.method != "gradcam"]
    refs = analysis.default_references(res)
    got = analysis.compare(res, refs, n_resamples=100)
    assert {c.metric for c in got} == {"top1"}


def test_stability_of_the_explanation_columns() -> None:
    res = runs()
    tau = analysis.stability(res, reference_rows={"baseline"})
    assert set(tau) == {"deletion_auc"}  # accuracy columns are not ranked for stability
    assert tau["deletion_auc"] == pytest.approx(1.0)  # abn < gradcam < msabn on every seed
    assert math.isnan(analysis.stability(runs((0,)))["deletion_auc"])  # one seed


def test_verdict_rules() -> None:
    from harness.stats import Comparison

    sure = Comparison(0.1, 0.05, 0.15, 0.001, 10, 3, p_holm=0.003)
    assert analysis.verdict(sure, True) == "better"
    assert analysis.verdict(sure, False) == "worse"
    unsure = Comparison(0.1, -0.05, 0.15, 0.2, 10, 3, p_holm=0.4)
    assert analysis.verdict(unsure, True) == "no detectable difference"


def test_intervals_stay_within_what_a_score_can_take() -> None:
    """top-1 of 1.0, 1.0 and 0.95 over three seeds: the t-interval reaches past 1."""
    res = [result("abn", s, top1=np.r_[np.ones(N - k), np.zeros(k)])
           for s, k in ((0, 0), (1, 0), (2, 10))]
    raw = stats.estimate([r.per_image["top1"] for r in res], n_resamples=300)
    assert raw.hi > 1.0
    (row,) = analysis.summarise(res, n_resamples=300)
    e = row.estimates["top1"]
    assert e.hi == 1.0 and e.lo == pytest.approx(raw.lo) and e.value == pytest.approx(raw.value)

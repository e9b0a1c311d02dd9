"""From evaluated rows to what a reader needs: values over seeds with intervals, paired
comparisons against a reference method, and the stability of each column's ranking.

Input is one :class:`~harness.evaluate.MethodResult` per (method, seed); the statistics
are those of :mod:`harness.stats`. Nothing here trains or evaluates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from harness.evaluate import MethodResult
from harness.stats import Comparison, Estimate, estimate, holm, paired_difference
from harness.stats import ranking_stability as _tau
from metrics.base import METRICS

#: a comparison's Holm-adjusted p-value below this is a detectable difference
ALPHA = 0.05
#: a column whose mean Kendall tau across seeds is below this is marked unstable
STABLE_TAU = 0.8


@dataclass
class Row:
    """One (method, explainer) over all its seeds.

    Attributes:
        estimates: each metric's value over seeds with its interval and seed spread.
        seeds: the training seeds, in the order of ``Estimate.per_seed``.
    """

    method: str
    seeds: tuple[int, ...]
    estimates: dict[str, Estimate]
    n_test: int
    n_causal: int


@dataclass
class PairedRow:
    """``method`` against ``reference`` on one metric, with the reader's verdict."""

    method: str
    metric: str
    reference: str
    comparison: Comparison
    verdict: str = ""


@dataclass
class Analysis:
    """Everything the reports show beyond the per-seed rows."""

    rows: list[Row]
    comparisons: list[PairedRow] = field(default_factory=list)
    #: metric -> mean Kendall tau of the per-seed rankings (NaN with one seed)
    stability: dict[str, float] = field(default_factory=dict)
    #: metric -> the reference method its comparisons use
    references: dict[str, str] = field(default_factory=dict)


def by_method(results: Sequence[MethodResult]) -> dict[str, list[MethodResult]]:
    """The results grouped by row, (method, explainer), in first-appearance order, each
    sorted by seed."""
    out: dict[str, list[MethodResult]] = {}
    for r in results:
        out.setdefault(r.row, []).append(r)
    return {k: sorted(v, key=lambda r: r.seed) for k, v in out.items()}


def summarise(results: Sequence[MethodResult], n_resamples: int = 1000,
              seed: int = 0) -> list[Row]:
    """One :class:`Row` per method: every metric over its seeds (images and seeds;
    columns without per-image scores, such as the timings, get the seed mean only)."""
    rows = []
    for name, group in by_method(results).items():
        est: dict[str, Estimate] = {}
        for k in dict.fromkeys(k for r in group for k in r.values):
            if k in group[0].per_image:
                est[k] = clipped(estimate([r.per_image[k] for r in group],
                                          k in group[0].per_class, n_resamples, seed),
                                 METRICS.get(k).bounds if k in METRICS else None)
            else:
                vals = tuple(float(r.values[k]) for r in group)
                sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
                est[k] = Estimate(float(np.mean(vals)), float("nan"), float("nan"), vals, sd)
        rows.append(Row(name, tuple(r.seed for r in group), est,
                        n_test=group[0].n_test, n_causal=group[0].n_causal))
    return rows


def clipped(e: Estimate, bounds: tuple[float, float] | None) -> Estimate:
    """``e`` with its interval clipped to the values a score can take (a t-interval of
    a few seeds can reach past them: top-1 of 0.998 +- 0.004)."""
    if bounds is None or np.isnan(e.lo):
        return e
    return dataclasses.replace(e, lo=max(e.lo, bounds[0]), hi=min(e.hi, bounds[1]))


def comparable_metrics(results: Sequence[MethodResult]) -> list[str]:
    """Ranked metric columns with per-image scores present in ``results``."""
    present = {k for r in results for k in r.per_image}
    return [e.name for e in METRICS if e.name in present and e.obj.ranked]


def compare(results: Sequence[MethodResult], references: dict[str, str],
            reference_rows: set[str] = frozenset(),  # type: ignore[assignment]
            n_resamples: int = 1000, seed: int = 0) -> list[PairedRow]:
    """Every method against its column's reference, paired on images and seeds.

    Args:
        references: metric -> the reference method (missing metrics are not compared).
        reference_rows: methods whose explanation is itself a reference (the centre
            prior): compared on accuracy columns only.

    Within each metric, the p-values of all methods against the reference are
    Holm-adjusted; the verdict is "better" / "worse" (by the metric's direction) when
    the adjusted p-value is below :data:`ALPHA`, else "no detectable difference". With
    one seed a verdict is about the two trained models, not the methods
    (:class:`harness.stats.Comparison`).
    """
    groups = by_method(results)
    out: list[PairedRow] = []
    for metric in comparable_metrics(results):
        ref = references.get(metric)
        if ref is None or ref not in groups:
            continue
        spec = METRICS.get(metric)
        ref_by_seed = {r.seed: r for r in groups[ref]}
        family = []
        for name, group in groups.items():
            if name == ref or (spec.explanation and name in reference_rows):
                continue
            pairs = [(r, ref_by_seed[r.seed]) for r in group if r.seed in ref_by_seed]
            pairs = [(a, b) for a, b in pairs if metric in a.per_image and metric in b.per_image]
            if not pairs:
                continue
            per_class = metric in pairs[0][0].per_class
            cmp = paired_difference([a.per_image[metric] for a, _ in pairs],
                                    [b.per_image[metric] for _, b in pairs], per_class,
                                    n_resamples, seed)
            if np.isnan(cmp.diff):
                continue
            if spec.bounds is not None:  # a difference of two bounded values
                span = spec.bounds[1] - spec.bounds[0]
                cmp = dataclasses.replace(cmp, lo=max(cmp.lo, -span), hi=min(cmp.hi, span))
            family.append(PairedRow(name, metric, ref, cmp))
        adjusted = holm([f.comparison.p for f in family])
        for f, p in zip(family, adjusted, strict=True):
            f.comparison = dataclasses.replace(f.comparison, p_holm=p)
            f.verdict = verdict(f.comparison, spec.higher_is_better)
        out += family
    return out


def verdict(c: Comparison, higher_is_better: bool) -> str:
    """"better", "worse" or "no detectable difference" from a Holm-adjusted comparison."""
    if np.isnan(c.p_holm) or c.p_holm >= ALPHA or c.diff == 0:
        return "no detectable difference"
    return "better" if (c.diff > 0) == higher_is_better else "worse"


def stability(results: Sequence[MethodResult],
              reference_rows: set[str] = frozenset()) -> dict[str, float]:  # type: ignore[assignment]
    """Mean Kendall tau between the seeds' rankings of the methods, per ranked
    explanation column (reference rows left out); NaN with fewer than two seeds."""
    groups = by_method(results)
    seeds = sorted({r.seed for r in results})
    out = {}
    for metric in comparable_metrics(results):
        if not METRICS.get(metric).explanation:
            continue
        table = {}
        for name, group in groups.items():
            vals = {r.seed: r.values.get(metric, float("nan")) for r in group}
            if name in reference_rows or set(vals) != set(seeds):
                continue
            table[name] = [vals[s] for s in seeds]
        out[metric] = _tau(table) if len(seeds) > 1 else float("nan")
    return out


def default_references(results: Sequence[MethodResult], reference: str | None = None
                       ) -> dict[str, str]:
    """The reference of each comparable column: ``reference`` for all of them when
    given, else ``baseline`` for accuracy columns and ``gradcam`` for explanation
    columns."""
    refs = {}
    for metric in comparable_metrics(results):
        if reference is not None:
            refs[metric] = reference
        else:
            refs[metric] = "gradcam" if METRICS.get(metric).explanation else "baseline"
    return refs


def analyse(results: Sequence[MethodResult], *, reference: str | None = None,
            reference_rows: set[str] = frozenset(),  # type: ignore[assignment]
            n_resamples: int = 1000, seed: int = 0) -> Analysis:
    """Rows over seeds, paired comparisons and ranking stability of ``results``."""
    refs = default_references(results, reference)
    return Analysis(rows=summarise(results, n_resamples, seed),
                    comparisons=compare(results, refs, reference_rows, n_resamples, seed),
                    stability=stability(results, reference_rows), references=refs)


__all__ = ["ALPHA", "STABLE_TAU", "Analysis", "PairedRow", "Row", "analyse", "compare",
           "default_references", "stability", "summarise", "verdict"]

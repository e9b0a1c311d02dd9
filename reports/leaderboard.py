"""Leaderboards: ``leaderboard.csv``, ``comparisons.csv``, ``stability.csv``,
``curves.csv``, ``config.yaml`` and a self-contained ``leaderboard.html`` (table with
intervals and paired-comparison marks, ranking stability, curves, attention gallery,
class confusion).

Reports read only the :class:`RunRecord` (the evaluated rows, their analysis and run
metadata) and the metric registry's metadata (direction, description); they never call
a method.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from matplotlib.patches import Rectangle

from harness.analysis import ALPHA, STABLE_TAU, Analysis, Row, by_method, summarise
from harness.evaluate import MethodResult
from harness.paper_values import PaperValue
from harness.safeio import atomic_path, write_text
from metrics.base import METRICS

if TYPE_CHECKING:  # the report reads the record only
    from harness.sweep import CRSweep

#: curve panels of the HTML report: metric id -> (title, x label)
CURVE_PANELS = {
    "insertion_auc": ("insertion, RISE (higher is better)", "fraction of pixels inserted"),
    "deletion_auc": ("deletion, RISE (lower is better)", "fraction of pixels deleted"),
    "comb_insertion_auc": ("insertion, COMB protocol (higher is better)",
                           "fraction of most salient pixels kept"),
}


@dataclass
class RunRecord:
    """One run: its per-seed rows, their analysis, and what is needed to picture them.

    Attributes:
        results: one evaluated row per (method, seed).
        analysis: the rows over seeds, paired comparisons and ranking stability.
        gallery_rows: the rows whose maps the figures show (the first seed's).
    """

    results: list[MethodResult]
    analysis: Analysis
    gallery_rows: list[MethodResult]
    meta: dict[str, Any]
    method_meta: dict[str, dict[str, Any]]
    config: dict[str, Any]
    gallery_images: np.ndarray  # [N,H,W,3] in [0,1]
    gallery_boxes: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N,4]
    gallery_labels: np.ndarray | None = None
    cr_sweep: CRSweep | None = None
    #: the numbers the preset's paper reports for this protocol
    paper_values: tuple[PaperValue, ...] = ()

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.results})


def metric_columns(rows: list[Row]) -> list[str]:
    """Registered metric ids present in any row, in registry order."""
    present = set().union(*(r.estimates for r in rows)) if rows else set()
    return [e.name for e in METRICS if e.name in present]


def to_frame(record: RunRecord) -> pd.DataFrame:
    """One row per (method, explainer) over all seeds (``seed`` = "all" when there are
    several), then, with several seeds, one row per (method, explainer, seed). Each
    metric has its 95 % interval bounds (``_lo``/``_hi``: over seeds and images on the
    aggregated rows, over images on the per-seed rows) and the seed standard deviation
    (``_sd``, aggregated rows only)."""
    rows = record.analysis.rows
    cols = metric_columns(rows)
    seeds = record.seeds
    multi = len(seeds) > 1
    papers = {(p.method, p.metric): p for p in record.paper_values}
    paper_metrics = [c for c in cols if any(p.metric == c for p in record.paper_values)]
    per_seed: list[tuple[Row, int]] = []
    if multi:
        n_res = int(record.config.get("eval", {}).get("bootstrap", 1000))
        for r in record.results:
            (row,) = summarise([r], n_resamples=n_res, seed=r.seed)
            per_seed.append((row, r.seed))
    records = []
    for row, seed in [(r, None) for r in rows] + per_seed:
        mm = record.method_meta.get(row.method, {})
        run = mm.get("seeds", {}).get(seed, {}) if seed is not None else mm
        out: dict[str, Any] = {
            "method": row.method, "explainer": mm.get("explainer", "native"),
            "init_from": mm.get("init_from") or "", "dataset": record.meta["dataset"],
            "backbone": record.meta["backbone"],
            "seed": seed if seed is not None else ("all" if multi else seeds[0]),
            "seeds": ",".join(map(str, row.seeds)), "n": row.n_test, "n_causal": row.n_causal}
        for c in cols:
            e = row.estimates.get(c)
            out[c] = e.value if e else math.nan
            out[f"{c}_lo"] = e.lo if e else math.nan
            out[f"{c}_hi"] = e.hi if e else math.nan
            out[f"{c}_sd"] = e.seed_sd if e and seed is None else math.nan
        if seed is None:  # the paper's number beside ours, where it reports one
            for c in paper_metrics:
                pv = papers.get((row.method, c))
                out[f"{c}_paper"] = pv.value if pv else math.nan
        out["train_s"] = run.get("train_seconds", math.nan)
        out["cached"] = run.get("cached", False)
        out["config_hash"] = run.get("key", "")  # aggregated rows: every seed's key
        out["protocol"] = record.meta["protocol"]
        out["git_rev"] = record.meta.get("git_rev", "")
        records.append(out)
    return pd.DataFrame.from_records(records)


def paper_verdict(lo: float, hi: float, value: float) -> str:
    """Whether a paper's value lies in our interval: "inside", "outside", or "n/a"
    without an interval."""
    if lo is None or math.isnan(lo):
        return "n/a"
    return "inside" if lo - 1e-12 <= value <= hi + 1e-12 else "outside"


def paper_frame(record: RunRecord) -> pd.DataFrame:
    """Each number the preset's paper reports beside ours: our value and interval, the
    paper's value (as a number and as printed), its source, and whether it falls
    inside our interval."""
    rows = {r.method: r for r in record.analysis.rows}
    out = []
    for p in record.paper_values:
        row = rows.get(p.method)
        e = row.estimates.get(p.metric) if row else None
        verdict = "n/a" if e is None else paper_verdict(e.lo, e.hi, p.value)
        out.append({"method": p.method, "metric": p.metric,
                    "ours": e.value if e else math.nan, "ours_lo": e.lo if e else math.nan,
                    "ours_hi": e.hi if e else math.nan, "paper": p.value,
                    "paper_sd": math.nan if p.sd is None else p.sd,
                    "inside": {"inside": "yes", "outside": "no"}.get(verdict, "n/a"),
                    "quoted": p.quoted, "source": p.source, "note": p.note})
    return pd.DataFrame.from_records(out, columns=[
        "method", "metric", "ours", "ours_lo", "ours_hi", "paper", "paper_sd", "inside",
        "quoted", "source", "note"])


def comparisons_frame(record: RunRecord) -> pd.DataFrame:
    """Every paired comparison: method - reference per metric, interval, p-values and
    the verdict."""
    out = []
    for c in record.analysis.comparisons:
        k = c.comparison
        out.append({"method": c.method, "metric": c.metric, "reference": c.reference,
                    "diff": k.diff, "diff_lo": k.lo, "diff_hi": k.hi, "p": k.p,
                    "p_holm": k.p_holm, "verdict": c.verdict, "n_images": k.n_images,
                    "n_seeds": k.n_seeds})
    return pd.DataFrame.from_records(out, columns=[
        "method", "metric", "reference", "diff", "diff_lo", "diff_hi", "p", "p_holm",
        "verdict", "n_images", "n_seeds"])


def stability_frame(record: RunRecord) -> pd.DataFrame:
    """Mean Kendall tau of each explanation column's per-seed rankings."""
    out = [{"metric": m, "kendall_tau": t, "stable": bool(t >= STABLE_TAU),
            "n_seeds": len(record.seeds)}
           for m, t in record.analysis.stability.items() if not math.isnan(t)]
    return pd.DataFrame.from_records(out, columns=["metric", "kendall_tau", "stable",
                                                  "n_seeds"])


def mean_curves(record: RunRecord) -> dict[str, dict[str, np.ndarray]]:
    """method -> metric -> the mean curve over seeds (and images)."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for r in record.results:
        for metric, curve in r.curves.items():
            out.setdefault(r.row, {}).setdefault(metric, []).append(curve)
    return {m: {k: np.mean(v, axis=0) for k, v in d.items()} for m, d in out.items()}


#: metrics whose curves have their own CSV (randomisation steps; ROAR / KAR's t)
OWN_CSV_CURVES = ("mprt_spearman", "mprt_ssim", "roar_auc", "kar_auc")


def curves_frame(record: RunRecord) -> pd.DataFrame:
    """Mean curves: method, metric (the column they belong to), step, fraction (of the
    pixels inserted, deleted or removed), score; the randomisation's are in mprt.csv,
    ROAR / KAR's in roar.csv."""
    out = []
    for method, by_metric in mean_curves(record).items():
        for metric, curve in by_metric.items():
            if metric in OWN_CSV_CURVES:
                continue
            n = len(curve) - 1
            x = (road_fractions(len(curve)) if metric in ROAD_PANELS
                 else np.arange(len(curve)) / max(n, 1))
            for k, s in enumerate(curve):
                out.append({"method": method, "metric": metric, "step": k,
                            "fraction": float(x[k]), "score": float(s)})
    return pd.DataFrame.from_records(out, columns=["method", "metric", "step", "fraction",
                                                  "score"])


def mprt_frame(record: RunRecord) -> pd.DataFrame:
    """The model-parameter randomisation per step: row, scheme (``cascading``: the
    groups down to this one re-initialised; ``independent``: this one alone), step, the
    group re-initialised at this step, and the mean Spearman and SSIM (over images and
    seeds) between the trained model's map and the randomised model's."""
    out = []
    for row, by_metric in mean_curves(record).items():
        groups = list(record.method_meta.get(row, {}).get("parameter_groups", []))
        sp, ss = by_metric.get("mprt_spearman"), by_metric.get("mprt_ssim")
        curve = sp if sp is not None else ss
        if curve is None or not groups or len(curve) != 2 * len(groups):
            continue
        for k in range(len(curve)):
            out.append({"method": row, "scheme": "cascading" if k < len(groups)
                        else "independent", "step": k % len(groups) + 1,
                        "group": groups[k % len(groups)],
                        "spearman": float(sp[k]) if sp is not None else math.nan,
                        "ssim": float(ss[k]) if ss is not None else math.nan})
    return pd.DataFrame.from_records(out, columns=["method", "scheme", "step", "group",
                                                   "spearman", "ssim"])


#: ROAR / KAR: the column of each mode, and what its t is a share of
ROAR_PANELS = {"roar_auc": ("roar", "ROAR: top t removed (lower is better)",
                            "share t of the pixels removed, most relevant first"),
               "kar_auc": ("kar", "KAR: top t kept (higher is better)",
                           "share t of the pixels kept, most relevant")}


def roar_frame(record: RunRecord) -> pd.DataFrame:
    """Remove and retrain / keep and retrain per row: mode (``roar``: the top t of the
    pixels removed; ``kar``: the top t alone kept), t (ROAR's 0 and KAR's 1: the model
    trained on the unmodified images), and the retrained model's mean test top-1 (over
    seeds)."""
    out = []
    for row, by_metric in mean_curves(record).items():
        axes = record.method_meta.get(row, {}).get("roar_fractions") or {}
        for metric, (mode, _title, _x) in ROAR_PANELS.items():
            curve, ts = by_metric.get(metric), axes.get(mode)
            if curve is None or ts is None or len(ts) != len(curve):
                continue
            out += [{"method": row, "mode": mode, "t": float(t), "top1": float(v)}
                    for t, v in zip(ts, curve, strict=True)]
    return pd.DataFrame.from_records(out, columns=["method", "mode", "t", "top1"])


#: every file :func:`write_all` may write into its folder, by key
OUTPUTS = {"csv": "leaderboard.csv", "curves": "curves.csv",
           "comparisons": "comparisons.csv", "stability": "stability.csv",
           "config": "config.yaml", "html": "leaderboard.html", "paper": "paper.csv",
           "cr_sweep": "cr_sweep.csv", "cr_sweep_png": "cr_sweep.png", "mprt": "mprt.csv",
           "roar": "roar.csv", "per_label": "per_label.csv"}


def label_names(record: RunRecord) -> tuple[str, ...]:
    """The run dataset's class names, when its registry entry gives them."""
    from harness.data import DATASETS

    name = record.meta.get("dataset", "")
    if name not in DATASETS:
        return ()
    return tuple(DATASETS.entry(name).meta.get("label_names") or ())


def per_label_frame(record: RunRecord) -> pd.DataFrame:
    """The multi-label columns label by label: each row's mean over seeds of its
    per-label value (accuracy, average precision, per-class localisation) with the
    number of (image, label) pairs scored. Empty for single-label runs."""
    names = label_names(record)
    cols = [e.name for e in METRICS if "multi" in e.obj.tasks]
    records = []
    for row, group in by_method(record.results).items():
        for c in cols:
            if not all(c in r.per_image for r in group):
                continue
            per_seed = []
            for r in group:
                s = r.per_image[c]
                frame = pd.DataFrame({"label": s.classes, "score": s.scores})
                per_seed.append(frame.groupby("label")["score"].agg(["mean", "size"]))
            both = pd.concat(per_seed, keys=range(len(per_seed)))
            for label, g in both.groupby(level=1):
                k = int(label)
                records.append({"row": row, "metric": c, "label": k,
                                "name": names[k] if k < len(names) else str(k),
                                "value": float(g["mean"].mean()), "n": int(g["size"].iloc[0]),
                                "seeds": len(g)})
    return pd.DataFrame.from_records(
        records, columns=["row", "metric", "label", "name", "value", "n", "seeds"])


def per_label_tables(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The HTML's per-label tables: one per metric, a row per leaderboard row, a column
    per label."""
    out = []
    for metric, g in frame.groupby("metric", sort=False):
        wide = g.pivot_table(index="row", columns="label", values="value", sort=False)
        labels = [str(g[g["label"] == k]["name"].iloc[0]) for k in wide.columns]
        out.append({"metric": metric, "description": METRICS.get(str(metric)).description,
                    "labels": labels,
                    "rows": [{"row": r, "cells": ["" if pd.isna(v) else f"{v:.3f}"
                                                   for v in wide.loc[r]]}
                             for r in wide.index]})
    return out


def write_all(record: RunRecord, out: Path) -> dict[str, Path]:
    """Write every output file into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / OUTPUTS[k]
             for k in ("csv", "curves", "comparisons", "stability", "config", "html")}
    frame = to_frame(record)
    tables = {"csv": frame, "curves": curves_frame(record),
              "comparisons": comparisons_frame(record), "stability": stability_frame(record)}
    if record.paper_values:
        paths["paper"] = out / OUTPUTS["paper"]
        tables["paper"] = paper_frame(record)
    for key, table in (("mprt", mprt_frame(record)), ("roar", roar_frame(record)),
                       ("per_label", per_label_frame(record))):
        if len(table):
            paths[key] = out / OUTPUTS[key]
            tables[key] = table
    if record.cr_sweep is not None:
        paths["cr_sweep"] = out / OUTPUTS["cr_sweep"]
        tables["cr_sweep"] = pd.DataFrame.from_records(record.cr_sweep.rows())
    # each file is written whole or not at all (a crash leaves the previous run's)
    for key, table in tables.items():
        with atomic_path(paths[key]) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    write_text(paths["config"], yaml.safe_dump({
        "run": record.meta, "config": record.config,
        "references": record.analysis.references, "methods": record.method_meta},
        sort_keys=False))
    if record.cr_sweep is not None:
        paths["cr_sweep_png"] = out / OUTPUTS["cr_sweep_png"]
        fig = sweep_figure(record.cr_sweep)
        with atomic_path(paths["cr_sweep_png"]) as tmp:
            fig.savefig(tmp, dpi=130)
        plt.close(fig)
    write_text(paths["html"], render_html(record, frame))
    return paths


def best_values(frame: pd.DataFrame, cols: list[str],
                reference: pd.Series | None = None) -> dict[str, float]:
    """The best value of each metric column, by the registry's direction; rows marked
    ``reference`` compete on accuracy columns only."""
    best = {}
    for c in cols:
        if not METRICS.get(c).ranked:
            continue
        s = frame[c]
        if reference is not None and METRICS.get(c).explanation:
            s = s[~reference.to_numpy()]
        s = s.dropna()
        if len(s):
            best[c] = float(s.max() if METRICS.get(c).higher_is_better else s.min())
    return best


def _fmt(v: float, c: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if METRICS.get(c).unit == "ms" or c == "explain_overhead":
        return f"{v:.2f}"
    return f"{v:.3f}"


#: how a paired comparison's verdict is drawn in the table
MARKS = {"better": ("▲", "better"), "worse": ("▼", "worse"),
         "no detectable difference": ("=", "same")}


def comparison_matrix(record: RunRecord) -> dict[str, Any]:
    """The paired comparisons as a method x metric table for the HTML report."""
    comps = record.analysis.comparisons
    metrics = [m for m in metric_columns(record.analysis.rows)
               if any(c.metric == m for c in comps)]
    methods = [r.method for r in record.analysis.rows
               if any(c.method == r.method for c in comps)]
    by_key = {(c.method, c.metric): c for c in comps}
    rows = []
    for method in methods:
        cells: list[dict[str, Any] | None] = []
        for m in metrics:
            c = by_key.get((method, m))
            cells.append(None if c is None else {
                "diff": c.comparison.diff, "lo": c.comparison.lo, "hi": c.comparison.hi,
                "p_holm": c.comparison.p_holm, "mark": MARKS[c.verdict][0],
                "mark_cls": MARKS[c.verdict][1]})
        rows.append({"method": method, "cells": cells})
    return {"rows": rows, "metrics": [
        {"id": m, "arrow": "↑" if METRICS.get(m).higher_is_better else "↓",
         "reference": record.analysis.references.get(m, "")} for m in metrics]}


def render_html(record: RunRecord, frame: pd.DataFrame) -> str:
    """The self-contained HTML leaderboard (the aggregated rows)."""
    rows = record.analysis.rows
    cols = metric_columns(rows)
    frame = frame[frame["seed"].astype(str) == str(frame["seed"].iloc[0])].reset_index(drop=True)
    ref = frame["method"].map(lambda m: bool(record.method_meta.get(m, {}).get("reference")))
    best = best_values(frame, cols, ref)
    stab = record.analysis.stability
    header = []
    for c in cols:
        tau = stab.get(c, math.nan)
        header.append({"id": c, "arrow": "↑" if METRICS.get(c).higher_is_better else "↓",
                       "desc": METRICS.get(c).description,
                       "tau": "" if math.isnan(tau) else f"τ {tau:.2f}",
                       "unstable": not math.isnan(tau) and tau < STABLE_TAU})
    cmp = {(c.method, c.metric): c for c in record.analysis.comparisons}
    papers = {(p.method, p.metric): p for p in record.paper_values}
    multi = len(record.seeds) > 1
    body = []
    for idx, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            lo, hi, sd = row[f"{c}_lo"], row[f"{c}_hi"], row[f"{c}_sd"]
            ranked = not (ref[idx] and METRICS.get(c).explanation)
            # ties at the displayed precision share the mark
            is_best = ranked and c in best and not pd.isna(v) and _fmt(v, c) == _fmt(best[c], c)
            ci = "" if pd.isna(lo) else f"[{_fmt(lo, c)}, {_fmt(hi, c)}]"
            mark, mark_cls, mark_title = "", "", ""
            k = cmp.get((row["method"], c))
            if k is not None:
                mark, mark_cls = MARKS[k.verdict]
                kc = k.comparison
                mark_title = (f"{k.verdict} than {k.reference}: {kc.diff:+.3f} "
                              f"[{kc.lo:+.3f}, {kc.hi:+.3f}], Holm p = {kc.p_holm:.3g}")
            pv = papers.get((row["method"], c))
            paper = ""
            if pv is not None:
                paper = f"paper {_fmt(pv.value, c)} ({paper_verdict(lo, hi, pv.value)})"
            cells.append({"text": _fmt(v, c), "ci": ci, "best": is_best, "paper": paper,
                          "paper_title": "" if pv is None else
                          f"{pv.quoted}: {pv.source}{'; ' + pv.note if pv.note else ''}",
                          "sd": "" if not multi or pd.isna(sd) else f"± {_fmt(sd, c)} sd",
                          "mark": mark, "mark_cls": mark_cls, "mark_title": mark_title,
                          "sort": "" if pd.isna(v) else f"{v:.9g}"})
        mm = record.method_meta.get(row["method"], {})
        body.append({"method": row["method"], "explainer": row["explainer"],
                     "paper": mm.get("paper", ""), "description": mm.get("description", ""),
                     "cells": cells, "train_s": row["train_s"], "cached": row["cached"]})
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    comparisons = comparison_matrix(record)
    return env.get_template("leaderboard.html.j2").render(
        meta=record.meta, header=header, body=body, methods=record.method_meta,
        seeds=record.seeds, references=sorted(set(record.analysis.references.values())),
        comparisons=comparisons, stable_tau=STABLE_TAU, alpha=ALPHA,
        paper=paper_frame(record).to_dict("records") if record.paper_values else [],
        has_distractor="distractor_bbox" in record.gallery_boxes,
        stability=[{"metric": m, "tau": t, "stable": t >= STABLE_TAU}
                   for m, t in stab.items() if not math.isnan(t)],
        groups=[{"title": title, "curves": _png(curves_figure(sub)) if any(
                     k in r.curves for r in sub.results for k in CURVE_PANELS) else "",
                 "gallery": _png(gallery_figure(sub)) if len(sub.gallery_images)
                 and sub.gallery_rows else "",
                 # the class maps of the other explainers are scored in the columns; one
                 # figure of them (the methods' own) keeps the page's size in check
                 "confusion": _png(fig) if i == 0 and (fig := confusion_figure(sub))
                 is not None else ""}
                for i, (title, sub) in enumerate(by_explainer(record))],
        sanity=sanity_matrix(record),
        sanity_figs={k: _png(f) for k, f in (("cascade", cascade_figure(record)),
                                             ("class_pairs", class_pair_figure(record)),
                                             ("road", road_figure(record)),
                                             ("roar", roar_figure(record)))
                     if f is not None},
        sweep=record.cr_sweep,
        sweep_png=_png(sweep_figure(record.cr_sweep)) if record.cr_sweep else "",
        metrics=[{"id": c, **vars(METRICS.get(c))} for c in cols],
        per_label=per_label_tables(per_label_frame(record)),
        config_yaml=yaml.safe_dump(record.config, sort_keys=False))


def by_explainer(record: RunRecord) -> list[tuple[str, RunRecord]]:
    """The record's rows in one group per explainer (each method's own first), each as
    a record of its own: one set of figures per group keeps each figure readable."""
    kinds = sorted(dict.fromkeys(r.explainer for r in record.results),
                   key=lambda k: k != "native")
    if len(kinds) == 1:
        return [("each method's own explanation" if kinds[0] == "native" else kinds[0],
                 record)]
    out = []
    for kind in kinds:
        keep = {r.row for r in record.results if r.explainer == kind}
        title = ("each method's own explanation" if kind == "native"
                 else f"{kind} applied to each trained model")
        out.append((title, dataclasses.replace(
            record, results=[r for r in record.results if r.row in keep],
            gallery_rows=[r for r in record.gallery_rows if r.row in keep],
            analysis=dataclasses.replace(record.analysis, rows=[
                r for r in record.analysis.rows if r.method in keep]))))
    return out


def curves_figure(record: RunRecord) -> plt.Figure:
    """Mean curves of every row, one panel per causal metric present."""
    curves = mean_curves(record)
    values = {r.method: r.estimates for r in record.analysis.rows}
    panels = [k for k in CURVE_PANELS if any(k in c for c in curves.values())]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.6),
                             constrained_layout=True, squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=False):
        for method, by_metric in curves.items():
            c = by_metric.get(metric)
            if c is None or not len(c):
                continue
            e = values.get(method, {}).get(metric)
            auc = e.value if e is not None else math.nan
            ax.plot(np.linspace(0, 1, len(c)), c, label=f"{method} ({auc:.3f})")
        title, xlabel = CURVE_PANELS[metric]
        probability_axes(ax, title, xlabel, "probability of the tracked class", 8)
    return fig


def probability_axes(ax: Any, title: str, xlabel: str, ylabel: str, legend: int) -> None:
    """A curve panel's frame: a probability against a share of the pixels, both in
    [0, 1], grid and legend."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


def sweep_figure(sweep: CRSweep) -> plt.Figure:
    """Top-1 against the annotated share (MSABN Figs. 8-9): one point per lambda_out
    with its 95 % interval, vanilla fine-tuning as the reference line (band = its
    interval), the model before fine-tuning dotted."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    pts = sorted(sweep.points, key=lambda p: p.share)
    x = np.array([100 * p.share for p in pts])
    y = np.array([100 * p.top1 for p in pts])
    err = np.array([[100 * (p.top1 - p.top1_lo) for p in pts],
                    [100 * (p.top1_hi - p.top1) for p in pts]])
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, color="tab:blue",
                label="copy-replace fine-tuning")
    for p, xi, yi in zip(pts, x, y, strict=True):
        lam = "—" if p.lambda_out is None else f"{p.lambda_out:.3g}"
        ax.annotate(f"λ={lam}", (xi, yi), textcoords="offset points", xytext=(4, 6),
                    fontsize=7)
    v = sweep.vanilla
    ax.axhline(100 * v.top1, color="tab:red", linestyle="--",
               label=f"vanilla fine-tuning ({100 * v.top1:.1f} %)")
    ax.axhspan(100 * v.top1_lo, 100 * v.top1_hi, color="tab:red", alpha=0.12)
    ax.axhline(100 * sweep.parent.top1, color="gray", linestyle=":",
               label=f"msabn before fine-tuning ({100 * sweep.parent.top1:.1f} %)")
    ax.set_xlabel("annotated training images (%): frac_out > λ_out, worst-localised first")
    ax.set_ylabel("test top-1 (%)")
    ax.set_xlim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


#: pixels between the tiles of the gallery mosaics
GAP = 2


def overlay(images: np.ndarray, maps: np.ndarray, alpha: float) -> np.ndarray:
    """``maps`` ``[n,h,w]`` in [0, 1] in the jet colour map laid over ``images``
    ``[n,h,w,3]`` with opacity ``alpha`` (what imshow of one over the other draws)."""
    rgb = matplotlib.colormaps["jet"](np.clip(maps, 0, 1))[..., :3]
    return (1 - alpha) * images + alpha * rgb


def mosaic(tiles: list[list[np.ndarray]], vgap: int = GAP) -> np.ndarray:
    """Rows of equally sized ``[h,w,3]`` tiles as one image, white between them
    (``vgap`` pixels between rows, room for titles)."""
    h, w = tiles[0][0].shape[:2]
    ncol = max(len(r) for r in tiles)
    out = np.ones((len(tiles) * (h + vgap) - vgap, ncol * (w + GAP) - GAP, 3))
    for i, row in enumerate(tiles):
        for j, t in enumerate(row):
            out[i * (h + vgap):i * (h + vgap) + h, j * (w + GAP):j * (w + GAP) + w] = t
    return out


def _mosaic_axes(img: np.ndarray, inch_per_px: float, left: float = 0.0,
                 top: float = 0.0) -> tuple[plt.Figure, Any]:
    """One figure holding ``img`` at ``inch_per_px``, with ``left`` / ``top`` inches
    for labels (a single axes: fast to draw, unlike one axes per tile)."""
    h, w = img.shape[:2]
    fw, fh = left + w * inch_per_px, top + h * inch_per_px
    fig = plt.figure(figsize=(fw, fh))
    ax = fig.add_axes((left / fw, 0.0, w * inch_per_px / fw, h * inch_per_px / fh))
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.axis("off")
    return fig, ax


def gallery_figure(record: RunRecord) -> plt.Figure:
    """Test images (target box green, distractor box red dashed) and every row's map,
    one column per row, as one mosaic."""
    imgs = record.gallery_images
    n = len(imgs)
    rows = record.gallery_rows
    h, w = imgs.shape[1:3]
    tiles = [[imgs[i]] + [overlay(imgs[i:i + 1], r.gallery["saliency"][i:i + 1], 0.5)[0]
                          for r in rows] for i in range(n)]
    ncol = 1 + len(rows)
    fig, ax = _mosaic_axes(mosaic(tiles), 1.55 / w, top=0.25)
    for j, title in enumerate(["image", *(r.row for r in rows)]):
        ax.text(j * (w + GAP) + w / 2, -3, title, ha="center", va="bottom", fontsize=8)
    for i in range(n):
        y0 = i * (h + GAP)
        if record.gallery_labels is not None:
            ax.text(1, y0 + 7, str(int(record.gallery_labels[i])), color="white", fontsize=7,
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1})
        for name, color, style in (("bbox", "lime", "-"), ("distractor_bbox", "red", "--")):
            b = record.gallery_boxes.get(name)
            if b is None or np.isnan(b[i]).any():
                continue
            x1, y1, x2, y2 = b[i]
            for j in range(ncol):
                x0 = j * (w + GAP)
                ax.add_patch(Rectangle((x0 + x1 - 0.5, y0 + y1 - 0.5), x2 - x1, y2 - y1,
                                       fill=False, edgecolor=color, linestyle=style,
                                       linewidth=1.2))
    return fig


#: test images per method in the class-confusion figure
CONFUSION_IMAGES = 4


def confusion_figure(record: RunRecord) -> plt.Figure | None:
    """For each row with class maps and the first test images: the target class's and
    the most confusing class's maps (one colour scale per pair, negatives clipped) with
    the image's ``siou_confusion`` (the metric's per-image score: test images are scored
    in order), as one mosaic. None if no row has class maps."""
    rows = [r for r in record.gallery_rows if len(r.gallery.get("confusion_maps", ()))]
    if not rows:
        return None
    imgs = record.gallery_images
    n = min(CONFUSION_IMAGES, len(imgs), *(len(r.gallery["confusion_maps"]) for r in rows))
    h, w = imgs.shape[1:3]
    grey = np.repeat(imgs[:n].mean(-1, keepdims=True), 3, axis=-1)
    tiles = [[overlay(grey[j:j + 1], r.gallery["confusion_maps"][j:j + 1, k], 0.55)[0]
              for j in range(n) for k in range(2)] for r in rows]
    vgap = max(GAP, h // 6)  # room for each tile's title
    fig, ax = _mosaic_axes(mosaic(tiles, vgap), 1.45 / w, left=1.2, top=0.25)
    for i, r in enumerate(rows):
        y0 = i * (h + vgap)
        classes = r.gallery["confusion_classes"]
        ax.text(-4, y0 + h / 2, r.row, ha="right", va="center", fontsize=8)
        for j in range(n):
            for k, what in enumerate(("target", "conf.")):
                title = f"{what} {int(classes[j, k])}"
                if k and "siou_confusion" in r.per_image:
                    title += f" · sIoU {float(r.per_image['siou_confusion'].scores[j]):.2f}"
                ax.text((2 * j + k) * (w + GAP) + w / 2, y0 - 1, title, ha="center",
                        va="bottom", fontsize=7)
    return fig


@dataclass(frozen=True)
class SanityCheck:
    """One column of the HTML's sanity matrix: ``metric`` passes ``below`` a threshold
    (``threshold`` set) or above the random explainer's reference row (``threshold``
    None), judged on the row's 95 % interval: pass when the whole interval is on the
    right side, fail when none of it is, unclear otherwise."""

    metric: str
    title: str
    threshold: float | None = None


#: the checks, with their thresholds (stated in the report; not from the papers, which
#: judge by eye: a map still ranked like the trained model's at 0.5 has not changed much)
SANITY_CHECKS = (
    SanityCheck("mprt_spearman", "model randomisation, Spearman < 0.5", 0.5),
    SanityCheck("mprt_ssim", "model randomisation, SSIM < 0.5", 0.5),
    SanityCheck("data_rand_spearman", "data randomisation, Spearman < 0.5", 0.5),
    SanityCheck("data_rand_ssim", "data randomisation, SSIM < 0.5", 0.5),
    SanityCheck("class_sensitivity", "class sensitivity, SSIM < 0.9", 0.9),
    SanityCheck("road_combined", "ROAD combined above the random row"),
    SanityCheck("insertion_auc", "insertion above the random row"),
    SanityCheck("roar_auc", "ROAR below the random row"),
    SanityCheck("kar_auc", "KAR above the random row"),
)
MARK = {"pass": ("✓", "pass"), "fail": ("✗", "fail"), "unclear": ("~", "unclear")}


def random_floor(record: RunRecord) -> dict[str, float]:
    """The random explainer's reference row's values (the floor), if the run has one."""
    for row in record.analysis.rows:
        if record.method_meta.get(row.method, {}).get("explainer") == "random":
            return {k: e.value for k, e in row.estimates.items()}
    return {}


def sanity_matrix(record: RunRecord) -> dict[str, Any]:
    """Rows × checks of :data:`SANITY_CHECKS` present in the run: each cell's verdict,
    value and interval; the random row itself is not judged against itself."""
    floor = random_floor(record)
    checks = [c for c in SANITY_CHECKS
              if any(c.metric in r.estimates for r in record.analysis.rows)
              and (c.threshold is not None or c.metric in floor)]
    rows = []
    for row in record.analysis.rows:
        is_floor = record.method_meta.get(row.method, {}).get("explainer") == "random"
        cells: list[dict[str, str] | None] = []
        for c in checks:
            e = row.estimates.get(c.metric)
            if e is None or math.isnan(e.value) or (c.threshold is None and is_floor):
                cells.append(None)
                continue
            lo, hi = (e.lo, e.hi) if not math.isnan(e.lo) else (e.value, e.value)
            if c.threshold is not None:
                verdict = "pass" if hi < c.threshold else "fail" if lo >= c.threshold \
                    else "unclear"
            else:
                ref = floor[c.metric]
                better = METRICS.get(c.metric).higher_is_better
                good, bad = (lo > ref, hi <= ref) if better else (hi < ref, lo >= ref)
                verdict = "pass" if good else "fail" if bad else "unclear"
            mark, cls = MARK[verdict]
            cells.append({"mark": mark, "cls": cls, "value": f"{e.value:.3f}",
                          "title": f"{verdict}: {e.value:.3f} [{lo:.3f}, {hi:.3f}]"
                          + ("" if c.threshold is not None else
                             f" against the random row's {floor[c.metric]:.3f}")})
        rows.append({"method": row.method, "cells": cells})
    return {"checks": checks, "rows": rows}


def cascade_figure(record: RunRecord) -> plt.Figure | None:
    """Adebayo et al.'s Fig. 2 for the first test image: per row, the image, the trained
    model's map and the map as each parameter group is re-initialised in turn (top-down,
    cascading; |map| over its maximum), then, with ``--sanity data``, the map of the
    model trained on permuted labels. None if no row has the cascade."""
    rows = [r for r in record.gallery_rows if len(r.gallery.get("mprt_cascade", ()))]
    if not rows or not len(record.gallery_images):
        return None
    img = record.gallery_images[0]
    h, w = img.shape[:2]
    grey = np.repeat(img.mean(-1, keepdims=True), 3, axis=-1)[None]
    maps = [[*r.gallery["mprt_cascade"][0], *r.gallery.get("permuted_pair", [[]])[0][1:]]
            for r in rows]
    tiles = [[img] + [overlay(grey, m[None], 0.6)[0] for m in row] for row in maps]
    vgap = max(GAP, h // 5)
    fig, ax = _mosaic_axes(mosaic(tiles, vgap), 1.3 / w, left=1.3, top=0.3)
    for i, r in enumerate(rows):
        y0 = i * (h + vgap)
        ax.text(-4, y0 + h / 2, r.row, ha="right", va="center", fontsize=8)
        groups = list(record.method_meta.get(r.row, {}).get("parameter_groups", []))
        titles = ["image", "trained"] + [f"+ {g}".replace("backbone.", "")
                                         for g in groups]
        if len(r.gallery.get("permuted_pair", ())):
            titles.append("labels permuted")
        for j, t in enumerate(titles[:len(tiles[i])]):
            ax.text(j * (w + GAP) + w / 2, y0 - 1, t, ha="center", va="bottom", fontsize=6)
    return fig


#: test images per row in the target-vs-other-class figure
CLASS_PAIR_IMAGES = 3


def class_pair_figure(record: RunRecord) -> plt.Figure | None:
    """Per row and first test images: the map of the ground-truth class beside the map
    of the other class ``class_sensitivity`` drew for the image (each |map| over its
    maximum), titled with the classes and the image's SSIM. None without the pairs."""
    rows = [r for r in record.gallery_rows if len(r.gallery.get("class_pair_maps", ()))]
    if not rows or not len(record.gallery_images):
        return None
    imgs = record.gallery_images
    n = min(CLASS_PAIR_IMAGES, len(imgs), *(len(r.gallery["class_pair_maps"]) for r in rows))
    h, w = imgs.shape[1:3]
    grey = np.repeat(imgs[:n].mean(-1, keepdims=True), 3, axis=-1)
    tiles = [[overlay(grey[j:j + 1], r.gallery["class_pair_maps"][j:j + 1, k], 0.6)[0]
              for j in range(n) for k in range(2)] for r in rows]
    vgap = max(GAP, h // 5)
    fig, ax = _mosaic_axes(mosaic(tiles, vgap), 1.3 / w, left=1.3, top=0.3)
    for i, r in enumerate(rows):
        y0 = i * (h + vgap)
        ax.text(-4, y0 + h / 2, r.row, ha="right", va="center", fontsize=8)
        classes = r.gallery["class_pair_classes"]
        scores = r.per_image.get("class_sensitivity")
        for j in range(n):
            for k, what in enumerate(("class", "other")):
                title = f"{what} {int(classes[j, k])}"
                if k and scores is not None and j < len(scores.scores):
                    title += f" · SSIM {float(scores.scores[j]):.2f}"
                ax.text((2 * j + k) * (w + GAP) + w / 2, y0 - 1, title, ha="center",
                        va="bottom", fontsize=6)
    return fig


#: ROAD's panels: curve -> title
ROAD_PANELS = {"road_morf": "ROAD, most relevant first (lower is better)",
               "road_lerf": "ROAD, least relevant first (higher is better)"}


def road_figure(record: RunRecord) -> plt.Figure | None:
    """Mean probability of the predicted class against the share of pixels removed and
    imputed, most and least relevant first, one line per row (legend: the column's
    value). None without ROAD curves."""
    curves = mean_curves(record)
    if not any(k in c for c in curves.values() for k in ROAD_PANELS):
        return None
    values = {r.method: r.estimates for r in record.analysis.rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True, squeeze=False)
    for ax, (metric, title) in zip(axes[0], ROAD_PANELS.items(), strict=True):
        for row, by_metric in curves.items():
            c = by_metric.get(metric)
            if c is None or not len(c):
                continue
            e = values.get(row, {}).get(metric)
            style = ":" if record.method_meta.get(row, {}).get("explainer") == "random" else "-"
            ax.plot(road_fractions(len(c)), c, style, marker=".",
                    label=f"{row} ({e.value if e is not None else math.nan:.3f})")
        probability_axes(ax, title, "share of pixels removed (noisy linear imputation)",
                         "probability of the predicted class", 7)
    return fig


def roar_figure(record: RunRecord) -> plt.Figure | None:
    """The retrained model's test top-1 against t, ROAR and KAR, one line per row
    (legend: the column's value; the random row dotted). None without ROAR / KAR."""
    frame = roar_frame(record)
    if not len(frame):
        return None
    values = {r.method: r.estimates for r in record.analysis.rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True, squeeze=False)
    for ax, (metric, (mode, title, xlabel)) in zip(axes[0], ROAR_PANELS.items(), strict=True):
        for row, part in frame[frame["mode"] == mode].groupby("method", sort=False):
            e = values.get(str(row), {}).get(metric)
            style = ":" if record.method_meta.get(row, {}).get("explainer") == "random" \
                else "-"
            ax.plot(part["t"], part["top1"], style, marker=".",
                    label=f"{row} ({e.value if e is not None else math.nan:.3f})")
        probability_axes(ax, title, xlabel, "test top-1 of the retrained model", 7)
    return fig


def road_fractions(n: int) -> np.ndarray:
    """The removed shares of an ``n``-point ROAD curve: 1/(n+1) ... n/(n+1) (10 % ...
    90 % for the default 9)."""
    return np.arange(1, n + 1) / (n + 1)


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    # fast zlib level: the gallery PNGs are large, and level 6 takes seconds for ~10 % less
    fig.savefig(buf, format="png", dpi=110, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")

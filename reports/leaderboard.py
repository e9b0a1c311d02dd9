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
import re
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
from matplotlib.font_manager import FontProperties
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextPath

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


def num_classes(record: RunRecord) -> int | None:
    """The run dataset's class count: the run's record, else its registry entry's
    (None when neither says)."""
    from harness.data import DATASETS

    k = record.meta.get("num_classes")
    name = record.meta.get("dataset", "")
    if k is None and name in DATASETS:
        k = DATASETS.entry(name).meta.get("num_classes")
    return None if k is None else int(k)


def left_out(record: RunRecord) -> dict[str, str]:
    """The metric columns the reports leave out, each with the sentence saying why:
    those that need more classes than the dataset has
    (:attr:`metrics.base.MetricSpec.min_classes`: top-5 of 5 classes or fewer is 1
    whatever the model)."""
    k = num_classes(record)
    out = {}
    for c in metric_columns(record.analysis.rows):
        need = METRICS.get(c).min_classes
        if k is not None and k < need:
            dataset = record.meta.get("dataset") or "the dataset"
            out[c] = (f"{c} ({METRICS.get(c).description}) is left out (table and CSV): "
                      f"{dataset} has {k} classes, and with {need - 1} or fewer it scores "
                      "every model alike.")
    return out


def shown_columns(record: RunRecord) -> list[str]:
    """The metric columns of the reports: those present (:func:`metric_columns`) less
    those :func:`left_out`."""
    gone = left_out(record)
    return [c for c in metric_columns(record.analysis.rows) if c not in gone]


def to_frame(record: RunRecord) -> pd.DataFrame:
    """One row per (method, explainer) over all seeds (``seed`` = "all" when there are
    several), then, with several seeds, one row per (method, explainer, seed). Each
    metric has its 95 % interval bounds (``_lo``/``_hi``: over seeds and images on the
    aggregated rows, over images on the per-seed rows) and the seed standard deviation
    (``_sd``, aggregated rows only)."""
    rows = record.analysis.rows
    cols = shown_columns(record)
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
    inside our interval (the columns :func:`left_out` of the run left out here too)."""
    rows = {r.method: r for r in record.analysis.rows}
    gone = left_out(record)
    out = []
    for p in record.paper_values:
        if p.metric in gone:
            continue
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
    gone = left_out(record)
    for c in record.analysis.comparisons:
        if c.metric in gone:
            continue
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
    """The run dataset's class names: those the run recorded (a folder dataset's class
    folders, :attr:`harness.data.DatasetInfo.label_names`), else its registry entry's;
    empty when neither names them."""
    from harness.data import DATASETS

    if record.meta.get("label_names"):
        return tuple(str(n) for n in record.meta["label_names"])
    name = record.meta.get("dataset", "")
    if name not in DATASETS:
        return ()
    return tuple(DATASETS.entry(name).meta.get("label_names") or ())


def class_label(names: tuple[str, ...], k: int) -> str:
    """Class ``k`` by its name, or its number when the dataset names none."""
    return names[k] if 0 <= k < len(names) else str(k)


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


@dataclass(frozen=True)
class Lens:
    """A group of the leaderboard's columns that answer one question (a lens), the
    unit the HTML's column checkboxes show and hide: ``key`` names it in the page
    (``#cols-KEY``, class ``lens-KEY``), ``columns`` in the order the table shows them,
    ``shown`` those visible by default."""

    key: str
    title: str
    columns: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()


#: the lenses in the table's order; by default the table shows the accuracy, the RISE
#: causal columns, the main localisation columns, the class discrimination, the cost,
#: and every column of a lens not listed (a plugin's: :func:`lens_of`)
LENSES = (
    Lens("accuracy", "accuracy",
         ("top1", "balanced_acc", "label_acc", "mAP", "top5", "max_wrong_prob"),
         ("top1", "balanced_acc", "label_acc", "mAP")),
    Lens("faithfulness", "faithfulness (causal)",
         ("insertion_auc", "deletion_auc", "comb_insertion_auc", "road_morf", "road_lerf",
          "road_combined", "avg_drop", "increase_conf", "roar_auc", "kar_auc"),
         ("insertion_auc", "deletion_auc")),
    Lens("localisation", "localisation",
         ("energy_pg", "pointing_game", "class_energy_pg", "class_pointing_game",
          "bbox_inside_frac", "pointing_game_0px", "distractor_frac",
          "class_bbox_inside_frac"),
         ("energy_pg", "pointing_game", "class_energy_pg", "class_pointing_game")),
    Lens("discrimination", "class discrimination",
         ("siou_confusion", "siou_confusion_pred", "class_sensitivity"), ("siou_confusion",)),
    Lens("randomisation", "randomisation",
         ("mprt_spearman", "mprt_ssim", "data_rand_spearman", "data_rand_ssim")),
    Lens("robustness", "robustness", ("max_sensitivity", "avg_sensitivity", "local_lipschitz")),
    Lens("shape", "map shape", ("sparseness", "complexity")),
    Lens("attention", "attention fix (COMB)",
         ("attn_fix_gain_wrong_prob", "attn_fix_gain_top1", "attn_fix_gain_wrong_prob_all",
          "attn_fix_gain_top1_all")),
    Lens("cost", "cost", ("explain_ms", "explain_overhead"), ("explain_ms",)),
)
#: the lens of a column no lens lists: shown by default
OTHER = Lens("other", "other")


def lens_of(column: str) -> Lens:
    """The lens a column belongs to: the one listing it, else by its registry
    metadata (an accuracy column, a localisation column), else :data:`OTHER`."""
    for lens in LENSES:
        if column in lens.columns:
            return lens
    spec = METRICS.get(column)
    if not spec.explanation:
        return LENSES[0]
    if spec.needs_boxes and not spec.of_model:
        return next(x for x in LENSES if x.key == "localisation")
    return OTHER


def shown_by_default(column: str) -> bool:
    """Whether the table shows ``column`` before any checkbox is ticked."""
    lens = lens_of(column)
    return lens is OTHER or column in lens.shown or column not in lens.columns


def table_order(columns: list[str]) -> list[str]:
    """``columns`` grouped by lens, in :data:`LENSES` order (each lens's own order;
    unlisted columns after its listed ones, in registry order)."""
    keys = [*LENSES, OTHER]

    def key(c: str) -> tuple[int, int]:
        lens = lens_of(c)
        pos = lens.columns.index(c) if c in lens.columns else len(lens.columns)
        return keys.index(lens), pos

    return sorted(columns, key=key)  # stable: registry order among equals


def column_controls(columns: list[str]) -> list[dict[str, Any]]:
    """The lens checkboxes of the table: each lens with hidden columns, its title and
    those columns."""
    out = []
    for lens in [*LENSES, OTHER]:
        hidden = [c for c in columns if lens_of(c) is lens and not shown_by_default(c)]
        if hidden:
            out.append({"key": lens.key, "title": lens.title, "hidden": hidden})
    return out


def column_head(c: str) -> dict[str, Any]:
    """What a table header and its cells need of column ``c``: its direction arrow, its
    lens and whether it is hidden until its lens's checkbox is ticked."""
    return {"id": c, "arrow": "↑" if METRICS.get(c).higher_is_better else "↓",
            "lens": lens_of(c).key, "lens_title": lens_of(c).title,
            "more": not shown_by_default(c)}


def comparison_matrix(record: RunRecord) -> dict[str, Any]:
    """The paired comparisons as a method x metric table for the HTML report (its
    columns in the leaderboard's order, hidden alike)."""
    comps = record.analysis.comparisons
    metrics = [m for m in table_order(shown_columns(record))
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
        {**column_head(m), "reference": record.analysis.references.get(m, "")}
        for m in metrics]}


#: two rows explain alike when their per-image scores differ by at most this on
#: average, in every compared column (:func:`coinciding_rows`)
COINCIDE_TOL = 1e-3


def coinciding_rows(record: RunRecord) -> list[tuple[str, ...]]:
    """Groups of rows whose explanations coincide up to scale, as the scores show: in
    every bounded explanation column both rows have (per-image scores of the same
    images and seeds; shares, AUCs, correlations, which read a map min-max normalised
    or by rank: the unbounded ones such as ``local_lipschitz`` are in the map's own
    units, and the columns of the model alone are left out), the per-image scores
    differ by :data:`COINCIDE_TOL` or less on average. Columns of 0/1 hits are left
    out (two maps equal up to float rounding can break a tie for their arg-max
    differently: a pointing-game hit flips), and a map binarised at a threshold moves
    by a pixel or two (``bbox_inside_frac``: about 0.003 on an image of 64 x 64), which
    the average absorbs. Grad-CAM of the last stage and CAM coincide so on a backbone
    whose head is global average pooling and one linear layer (the gradient of a logit
    with respect to the last feature maps is then the class's weights, the same at
    every position)."""
    groups = by_method(record.results)
    names = list(groups)
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if root(a) != root(b) and _same_explanations(groups[a], groups[b]):
                parent[root(b)] = root(a)
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(root(n), []).append(n)
    return [tuple(g) for g in out.values() if len(g) > 1]


def _same_explanations(a: list[MethodResult], b: list[MethodResult]) -> bool:
    by_seed = {r.seed: r for r in b}
    compared = 0
    for x in a:
        y = by_seed.get(x.seed)
        if y is None:
            continue
        for c, sx in x.per_image.items():
            spec = METRICS.get(c) if c in METRICS else None
            sy = y.per_image.get(c)
            if (spec is None or not spec.explanation or spec.of_model or spec.bounds is None
                    or sy is None
                    or not len(sx.scores) or len(sx.scores) != len(sy.scores)
                    or not np.array_equal(sx.ids, sy.ids)):
                continue
            xs, ys = np.asarray(sx.scores, float), np.asarray(sy.scores, float)
            if np.isin(xs, (0.0, 1.0)).all() and np.isin(ys, (0.0, 1.0)).all():
                continue  # hits (the pointing game): a tie for the arg-max flips one
            if float(np.mean(np.abs(xs - ys))) > COINCIDE_TOL:
                return False
            compared += 1
    return compared > 0


def below_uniform(record: RunRecord) -> dict[str, str]:
    """The rows whose maps put less of their energy inside the box than a uniform map
    would: ``energy_pg`` below the run's ``uniform_energy_pg`` (the mean share of the
    image that the test boxes cover, :func:`harness.evalcache.uniform_energy_cached`)
    over the whole 95 % interval (the value, without one); row -> the mark's title."""
    u = record.meta.get("uniform_energy_pg")
    if u is None or "energy_pg" not in shown_columns(record):
        return {}
    out = {}
    for row in record.analysis.rows:
        e = row.estimates.get("energy_pg")
        if e is None or math.isnan(e.value):
            continue
        top = e.value if math.isnan(e.hi) else e.hi
        if top < u:
            out[row.method] = (f"less energy in the box than a uniform map ({u:.3f}): "
                               f"{e.value:.3f}" + ("" if math.isnan(e.hi) else
                                                   f" [{e.lo:.3f}, {e.hi:.3f}]"))
    return out


#: where a run's protocol line goes on to how its causal forward passes ran
PASSES_MARK = "; causal forward passes: "


def protocol_parts(protocol: str) -> tuple[str, list[str]]:
    """A run's protocol line as the page shows it: the protocol proper, and the phrases
    on its causal forward passes (one per model kind, each ending in its parenthesis)
    that the page folds away; the CSV keeps the whole line."""
    head, _, passes = protocol.partition(PASSES_MARK)
    return head, re.split(r"(?<=\)); ", passes) if passes else []


#: the in-page anchors of the findings' notes (the documentation links to them)
FINDING_ANCHORS = {"coinciding": "findings-coinciding-explanations",
                   "uniform": "findings-less-energy-than-uniform"}


def render_html(record: RunRecord, frame: pd.DataFrame) -> str:
    """The self-contained HTML leaderboard (the aggregated rows)."""
    cols = table_order(shown_columns(record))
    frame = frame[frame["seed"].astype(str) == str(frame["seed"].iloc[0])].reset_index(drop=True)
    ref = frame["method"].map(lambda m: bool(record.method_meta.get(m, {}).get("reference")))
    best = best_values(frame, cols, ref)
    stab = record.analysis.stability
    header = []
    for c in cols:
        tau = stab.get(c, math.nan)
        header.append({**column_head(c), "desc": METRICS.get(c).description,
                       "tau": "" if math.isnan(tau) else f"τ {tau:.2f}",
                       "unstable": not math.isnan(tau) and tau < STABLE_TAU})
    cmp = {(c.method, c.metric): c for c in record.analysis.comparisons}
    papers = {(p.method, p.metric): p for p in record.paper_values}
    multi = len(record.seeds) > 1
    coinciding = coinciding_rows(record)
    same_as = {n: [m for m in g if m != n] for g in coinciding for n in g}
    low = below_uniform(record)
    body = []
    for idx, row in frame.iterrows():
        cells = []
        for c, h in zip(cols, header, strict=True):
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
                          "sort": "" if pd.isna(v) else f"{v:.9g}",
                          "lens": h["lens"], "more": h["more"],
                          "uniform": low.get(row["method"], "") if c == "energy_pg" else ""})
        mm = record.method_meta.get(row["method"], {})
        twins = same_as.get(row["method"], [])
        body.append({"method": row["method"], "explainer": row["explainer"],
                     "paper": mm.get("paper", ""), "description": mm.get("description", ""),
                     "same_as": ("the same explanation as " + ", ".join(twins)
                                 + ": their per-image scores agree") if twins else "",
                     "cells": cells, "train_s": row["train_s"], "cached": row["cached"]})
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    comparisons = comparison_matrix(record)
    groups = by_explainer(record)
    protocol, passes = protocol_parts(record.meta["protocol"])
    return env.get_template("leaderboard.html.j2").render(
        meta=record.meta, protocol=protocol, passes=passes, header=header, body=body,
        methods=record.method_meta,
        seeds=record.seeds, references=sorted(set(record.analysis.references.values())),
        comparisons=comparisons, stable_tau=STABLE_TAU, alpha=ALPHA,
        paper=paper_frame(record).to_dict("records") if record.paper_values else [],
        has_distractor="distractor_bbox" in record.gallery_boxes,
        stability=[{"metric": m, "tau": t, "stable": t >= STABLE_TAU}
                   for m, t in stab.items() if not math.isnan(t)],
        controls=column_controls(cols), lenses=[*LENSES, OTHER],
        left_out=list(left_out(record).values()),
        coinciding=coinciding, coincide_tol=COINCIDE_TOL, below_uniform=low,
        uniform=record.meta.get("uniform_energy_pg") if "energy_pg" in cols else None,
        anchors=FINDING_ANCHORS,
        groups=[{"title": title, "curves": _png(curves_figure(sub)) if any(
                     k in r.curves for r in sub.results for k in CURVE_PANELS) else "",
                 "gallery": _png(gallery_figure(sub)) if len(sub.gallery_images)
                 and sub.gallery_rows else "",
                 # the class maps of the other explainers are scored in the columns; one
                 # figure of them (the methods' own) keeps the page's size in check
                 "confusion": _png(fig) if i == 0 and (fig := confusion_figure(sub))
                 is not None else "",
                 "confusion_rows": [r.row for r in figure_rows(sub, "confusion_maps")],
                 "confusion_n": confusion_images(sub)}
                for i, (title, sub) in enumerate(groups)],
        class_names=bool(label_names(record)),
        figure_rows={k: [r.row for r in figure_rows(record, key)]
                     for k, key in (("cascade", "mprt_cascade"),
                                    ("class_pairs", "class_pair_maps"))},
        class_pair_n=class_pair_images(record),
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


#: the resolution the report's figures are drawn at (PNG pixels per inch)
PNG_DPI = 110
#: the widest figure the page shows at its own size (the page's content is 1400 px
#: wide): a wider one would be scaled down, its labels with it
PAGE_WIDTH_PX = 1380
PAGE_WIDTH_IN = PAGE_WIDTH_PX / PNG_DPI
#: the size of the figures' labels in points: 9 pt at :data:`PNG_DPI` is 13.75 px on
#: the page (10.3 CSS pt) when the figure is shown at its own size
LABEL_PT = 9.0
#: the legend entries of the curve figures, in points
LEGEND_PT = 8.0

#: the curve figures' line colours: tab20's ten strong hues, then their light twins
LINE_COLOURS = tuple(matplotlib.colormaps["tab20"](i)
                     for i in (*range(0, 20, 2), *range(1, 20, 2)))
#: their line styles, cycled against the colours: a hue's light twin (ten rows on) and
#: the same colour again (twenty rows on) are drawn in another style; dotted is kept for
#: the random explainer's rows (the floor)
LINE_STYLES = ("-", "--", "-.")
FLOOR_STYLE = ":"


def row_order(record: RunRecord) -> list[str]:
    """Every row of the run in the run's order: the rows of ``method_meta`` (shared by
    the groups of :func:`by_explainer`), then any other row of the results."""
    return list(dict.fromkeys([*record.method_meta, *(r.row for r in record.results)]))


def line_styles(record: RunRecord) -> dict[str, dict[str, Any]]:
    """Each row's colour and line style in the curve figures (matplotlib ``plot``
    keywords), fixed by its place in the run: the same row looks the same in every
    figure of a report, and no two of the first 60 rows look alike. The random
    explainer's rows are dotted, the others never."""
    out = {}
    for k, row in enumerate(row_order(record)):
        floor = record.method_meta.get(row, {}).get("explainer") == "random"
        out[row] = {"color": LINE_COLOURS[k % len(LINE_COLOURS)],
                    "linestyle": FLOOR_STYLE if floor else LINE_STYLES[k % len(LINE_STYLES)]}
    return out


def panels_figure(n: int, entries: int) -> tuple[plt.Figure, Any]:
    """A row of ``n`` curve panels as wide as the page (at most 4.2 inches each), with
    room below each for a legend of ``entries`` rows in two columns."""
    n = max(1, n)
    height = 3.1 + LEGEND_PT / 72 * 1.45 * math.ceil(entries / 2)
    fig, axes = plt.subplots(1, n, figsize=(min(PAGE_WIDTH_IN, 4.2 * n), height),
                             layout=ConstrainedLayoutEngine(h_pad=0.08), squeeze=False)
    return fig, axes[0]


def curves_figure(record: RunRecord) -> plt.Figure:
    """Mean curves of every row, one panel per causal metric present (legend below each
    panel: the row and its AUC)."""
    curves = mean_curves(record)
    values = {r.method: r.estimates for r in record.analysis.rows}
    styles = line_styles(record)
    panels = [k for k in CURVE_PANELS if any(k in c for c in curves.values())]
    fig, axes = panels_figure(len(panels), len(curves))
    for ax, metric in zip(axes, panels, strict=False):
        for method, by_metric in curves.items():
            c = by_metric.get(metric)
            if c is None or not len(c):
                continue
            e = values.get(method, {}).get(metric)
            auc = e.value if e is not None else math.nan
            ax.plot(np.linspace(0, 1, len(c)), c, label=f"{method} ({auc:.3f})",
                    linewidth=1.4, **styles.get(method, {}))
        title, xlabel = CURVE_PANELS[metric]
        probability_axes(ax, title, xlabel, "probability of the tracked class")
    return fig


def probability_axes(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    """A curve panel's frame: a probability against a share of the pixels, both in
    [0, 1], grid, and the legend below the axes (never over the curves)."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=LEGEND_PT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
              frameon=False, handlelength=3.0, columnspacing=1.2)


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
                 top: float = 0.0, right: float = 0.0) -> tuple[plt.Figure, Any]:
    """One figure holding ``img`` at ``inch_per_px``, with ``left`` / ``top`` /
    ``right`` inches for labels (a single axes: fast to draw, unlike one axes per
    tile)."""
    h, w = img.shape[:2]
    fw, fh = left + w * inch_per_px + right, top + h * inch_per_px
    fig = plt.figure(figsize=(fw, fh))
    ax = fig.add_axes((left / fw, 0.0, w * inch_per_px / fw, h * inch_per_px / fh))
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.axis("off")
    return fig, ax


#: the pixels of one label line at :data:`LABEL_PT` in the PNG (and on the page)
LINE_PX = LABEL_PT * PNG_DPI / 72


def label_px(text: str) -> float:
    """How wide ``text`` is drawn at :data:`LABEL_PT` in matplotlib's font, in PNG
    pixels."""
    if not text:
        return 0.0
    width = TextPath((0, 0), text, size=LABEL_PT, prop=FontProperties()).get_extents().width
    return float(width) * PNG_DPI / 72


def fit_label(text: str, px: float) -> str:
    """``text``, cut short with an ellipsis where it is wider than ``px`` pixels."""
    if label_px(text) <= px:
        return text
    keep = len(text) - 1
    while keep > 1 and label_px(text[:keep] + "…") > px:
        keep -= 1
    return text[:keep] + "…"


def mosaic_scale(width_px: int, tile_px: int, tile_in: float, margin_in: float) -> float:
    """Inches per mosaic pixel: a tile ``tile_px`` pixels wide drawn ``tile_in`` inches
    wide, or smaller where the mosaic (``width_px`` wide) and ``margin_in`` inches of
    labels would not fit the page at their own size."""
    return min(tile_in / tile_px, (PAGE_WIDTH_IN - margin_in) / width_px)


def labelled_mosaic(tiles: list[list[np.ndarray]], row_labels: list[str],
                    titles: list[list[str]], tile_in: float) -> tuple[plt.Figure, Any, int]:
    """Rows of equally sized tiles as one figure no wider than the page: each row's
    label on its left, each tile's title above it (cut to the tile's width), all at
    :data:`LABEL_PT`, with tiles up to ``tile_in`` inches wide. Returns the figure, its
    axes (data coordinates: mosaic pixels) and the mosaic's gap between rows."""
    h, w = tiles[0][0].shape[:2]
    ncol = max(len(r) for r in tiles)
    left = max(label_px(t) for t in row_labels) / PNG_DPI + 0.15
    scale = mosaic_scale(ncol * (w + GAP) - GAP, w, tile_in, left)
    title_px = 1.3 * LINE_PX + 4  # a title line and its offset, on the page
    vgap = max(GAP, math.ceil(title_px / (scale * PNG_DPI)))
    fig, ax = _mosaic_axes(mosaic(tiles, vgap), scale, left=left, top=title_px / PNG_DPI)
    tile_px = w * scale * PNG_DPI
    for i, label in enumerate(row_labels):
        y0 = i * (h + vgap)
        ax.annotate(label, (-0.5, y0 + h / 2), xytext=(-5, 0), textcoords="offset points",
                    ha="right", va="center", fontsize=LABEL_PT)
        for j, t in enumerate(titles[i]):
            ax.annotate(fit_label(t, tile_px + GAP * scale * PNG_DPI),
                        (j * (w + GAP) + w / 2, y0 - 0.5), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom",
                        fontsize=LABEL_PT)
    return fig, ax, vgap


#: the slant of the gallery's column titles when they are wider than a tile (degrees)
SLANT = 40.0


def gallery_figure(record: RunRecord) -> plt.Figure:
    """Test images (target box green, distractor box red dashed; the image's class in
    its corner) and every row's map, one column per row, as one mosaic no wider than
    the page; the column titles slant when a row's name is wider than its tile."""
    imgs = record.gallery_images
    n = len(imgs)
    rows = record.gallery_rows
    h, w = imgs.shape[1:3]
    tiles = [[imgs[i]] + [overlay(imgs[i:i + 1], r.gallery["saliency"][i:i + 1], 0.5)[0]
                          for r in rows] for i in range(n)]
    ncol = 1 + len(rows)
    titles = ["image", *(r.row for r in rows)]
    width_px = ncol * (w + GAP) - GAP
    scale = mosaic_scale(width_px, w, 1.55, 0.0)
    tile_px = w * scale * PNG_DPI
    longest = max(label_px(t) for t in titles)
    slant = longest > tile_px + GAP * scale * PNG_DPI
    right = 0.0
    if slant:  # the last title reaches past the mosaic's right edge
        cos, sin, line = math.cos(math.radians(SLANT)), math.sin(math.radians(SLANT)), \
            1.3 * LINE_PX
        right = max(0.0, longest * cos + line * sin - tile_px / 2) / PNG_DPI + 0.05
        scale = mosaic_scale(width_px, w, 1.55, right)
        tile_px = w * scale * PNG_DPI
        top = (longest * sin + line * cos + 3 * PNG_DPI / 72 + 4) / PNG_DPI
    else:
        top = (1.3 * LINE_PX + 4) / PNG_DPI
    fig, ax = _mosaic_axes(mosaic(tiles), scale, top=top, right=right)
    for j, title in enumerate(titles):
        ax.annotate(title, (j * (w + GAP) + w / 2, -0.5), xytext=(0, 3),
                    textcoords="offset points", fontsize=LABEL_PT, va="bottom",
                    ha="left" if slant else "center", rotation=SLANT if slant else 0.0,
                    rotation_mode="anchor")
    names = label_names(record)
    for i in range(n):
        y0 = i * (h + GAP)
        if record.gallery_labels is not None:
            ax.annotate(fit_label(class_label(names, int(record.gallery_labels[i])),
                                  tile_px - 8),
                        (-0.5, y0 - 0.5), xytext=(2, -2), textcoords="offset points",
                        ha="left", va="top", color="white", fontsize=LABEL_PT,
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1,
                              "linewidth": 0})
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
    the most confusing class's maps (one colour scale per pair, negatives clipped),
    titled with the classes' names where the dataset has them, and the image's
    ``siou_confusion`` (the metric's per-image score: test images are scored in order),
    as one mosaic. None if no row has class maps."""
    rows = figure_rows(record, "confusion_maps")
    if not rows:
        return None
    imgs = record.gallery_images
    n = confusion_images(record)
    grey = np.repeat(imgs[:n].mean(-1, keepdims=True), 3, axis=-1)
    tiles = [[overlay(grey[j:j + 1], r.gallery["confusion_maps"][j:j + 1, k], 0.55)[0]
              for j in range(n) for k in range(2)] for r in rows]
    names = label_names(record)
    titles = []
    for r in rows:
        classes = r.gallery["confusion_classes"]
        row_titles = []
        for j in range(n):
            target, other = (class_label(names, int(c)) for c in classes[j])
            vs = f"vs {other}"
            if "siou_confusion" in r.per_image:
                vs += f" · sIoU {float(r.per_image['siou_confusion'].scores[j]):.2f}"
            row_titles += [f"target {target}", vs]
        titles.append(row_titles)
    fig, _ax, _vgap = labelled_mosaic(tiles, [r.row for r in rows], titles, 1.45)
    return fig


def confusion_images(record: RunRecord) -> int:
    """How many test images the class-confusion figure shows per row (0 without rows
    with class maps)."""
    rows = figure_rows(record, "confusion_maps")
    if not rows:
        return 0
    return min(CONFUSION_IMAGES, len(record.gallery_images),
               *(len(r.gallery["confusion_maps"]) for r in rows))


def figure_rows(record: RunRecord, key: str) -> list[MethodResult]:
    """The gallery rows with pictures ``key`` (class maps, the cascade, the class
    pairs), which a figure draws one row each."""
    return [r for r in record.gallery_rows if len(r.gallery.get(key, ()))]


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
    rows = figure_rows(record, "mprt_cascade")
    if not rows or not len(record.gallery_images):
        return None
    img = record.gallery_images[0]
    grey = np.repeat(img.mean(-1, keepdims=True), 3, axis=-1)[None]
    maps = [[*r.gallery["mprt_cascade"][0], *r.gallery.get("permuted_pair", [[]])[0][1:]]
            for r in rows]
    tiles = [[img] + [overlay(grey, m[None], 0.6)[0] for m in row] for row in maps]
    titles = []
    for i, r in enumerate(rows):
        groups = list(record.method_meta.get(r.row, {}).get("parameter_groups", []))
        row_titles = ["image", "trained"] + [f"+ {g}".replace("backbone.", "")
                                             for g in groups]
        if len(r.gallery.get("permuted_pair", ())):
            row_titles.append("labels permuted")
        titles.append(row_titles[:len(tiles[i])])
    fig, _ax, _vgap = labelled_mosaic(tiles, [r.row for r in rows], titles, 1.3)
    return fig


#: test images per row in the target-vs-other-class figure
CLASS_PAIR_IMAGES = 3


def class_pair_figure(record: RunRecord) -> plt.Figure | None:
    """Per row and first test images: the map of the ground-truth class beside the map
    of the other class ``class_sensitivity`` drew for the image (each |map| over its
    maximum), titled with the classes (by name where the dataset has them) and the
    image's SSIM. None without the pairs."""
    rows = figure_rows(record, "class_pair_maps")
    if not rows or not len(record.gallery_images):
        return None
    imgs = record.gallery_images
    n = class_pair_images(record)
    grey = np.repeat(imgs[:n].mean(-1, keepdims=True), 3, axis=-1)
    tiles = [[overlay(grey[j:j + 1], r.gallery["class_pair_maps"][j:j + 1, k], 0.6)[0]
              for j in range(n) for k in range(2)] for r in rows]
    names = label_names(record)
    titles = []
    for r in rows:
        classes = r.gallery["class_pair_classes"]
        scores = r.per_image.get("class_sensitivity")
        row_titles = []
        for j in range(n):
            own, other = (class_label(names, int(c)) for c in classes[j])
            vs = f"other {other}"
            if scores is not None and j < len(scores.scores):
                vs += f" · SSIM {float(scores.scores[j]):.2f}"
            row_titles += [f"class {own}", vs]
        titles.append(row_titles)
    fig, _ax, _vgap = labelled_mosaic(tiles, [r.row for r in rows], titles, 1.3)
    return fig


def class_pair_images(record: RunRecord) -> int:
    """How many test images the target-vs-other-class figure shows per row (0 without
    the pairs)."""
    rows = figure_rows(record, "class_pair_maps")
    if not rows:
        return 0
    return min(CLASS_PAIR_IMAGES, len(record.gallery_images),
               *(len(r.gallery["class_pair_maps"]) for r in rows))


#: ROAD's panels: curve -> title
ROAD_PANELS = {"road_morf": "ROAD, most relevant first (lower is better)",
               "road_lerf": "ROAD, least relevant first (higher is better)"}


def road_figure(record: RunRecord) -> plt.Figure | None:
    """Mean probability of the predicted class against the share of pixels removed and
    imputed, most and least relevant first, one line per row (legend below: the
    column's value; the random row dotted). None without ROAD curves."""
    curves = mean_curves(record)
    if not any(k in c for c in curves.values() for k in ROAD_PANELS):
        return None
    values = {r.method: r.estimates for r in record.analysis.rows}
    styles = line_styles(record)
    fig, axes = panels_figure(len(ROAD_PANELS), len(curves))
    for ax, (metric, title) in zip(axes, ROAD_PANELS.items(), strict=True):
        for row, by_metric in curves.items():
            c = by_metric.get(metric)
            if c is None or not len(c):
                continue
            e = values.get(row, {}).get(metric)
            ax.plot(road_fractions(len(c)), c, marker=".", linewidth=1.4,
                    label=f"{row} ({e.value if e is not None else math.nan:.3f})",
                    **styles.get(row, {}))
        probability_axes(ax, title, "share of pixels removed (noisy linear imputation)",
                         "probability of the predicted class")
    return fig


def roar_figure(record: RunRecord) -> plt.Figure | None:
    """The retrained model's test top-1 against t, ROAR and KAR, one line per row
    (legend below: the column's value; the random row dotted). None without ROAR /
    KAR."""
    frame = roar_frame(record)
    if not len(frame):
        return None
    values = {r.method: r.estimates for r in record.analysis.rows}
    styles = line_styles(record)
    fig, axes = panels_figure(len(ROAR_PANELS), frame["method"].nunique())
    for ax, (metric, (mode, title, xlabel)) in zip(axes, ROAR_PANELS.items(), strict=True):
        for row, part in frame[frame["mode"] == mode].groupby("method", sort=False):
            e = values.get(str(row), {}).get(metric)
            ax.plot(part["t"], part["top1"], marker=".", linewidth=1.4,
                    label=f"{row} ({e.value if e is not None else math.nan:.3f})",
                    **styles.get(str(row), {}))
        probability_axes(ax, title, xlabel, "test top-1 of the retrained model")
    return fig


def road_fractions(n: int) -> np.ndarray:
    """The removed shares of an ``n``-point ROAD curve: 1/(n+1) ... n/(n+1) (10 % ...
    90 % for the default 9)."""
    return np.arange(1, n + 1) / (n + 1)


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    # fast zlib level: the gallery PNGs are large, and level 6 takes seconds for ~10 % less
    fig.savefig(buf, format="png", dpi=PNG_DPI, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")

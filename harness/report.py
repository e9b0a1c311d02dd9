"""Leaderboards from the results store.

    python -m harness.report --out DIR                      # the latest finished run
    python -m harness.report --run 12 --out DIR              # one run
    python -m harness.report --latest-per-method --out DIR   # each row from its newest run
    python -m harness.report --dataset cub200-2011 --since 2026-11-01 --out DIR
    python -m harness.report --compare 12 15 --out DIR       # two runs side by side
    python -m harness.report --list                          # the stored runs

A selection with filters (``--dataset``, ``--preset``, ``--since``, ``--until``) or
``--latest-per-method`` takes each (method, explainer) row from the newest finished run
that has it. The runs a leaderboard draws from must share dataset, preset and backbone
(one protocol); the reports are those a run writes (``leaderboard.csv``, ``.html``, ...),
computed from the stored per-image scores.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import metrics  # noqa: F401  (registers metrics)
from harness import cli
from harness.analysis import analyse
from harness.errors import UserError, clip, message, shown, shown_path
from harness.evaluate import MethodResult
from harness.paper_values import PaperValue
from harness.safeio import atomic_path, output_clash, probe_writable, write_text
from harness.stats import paired_difference
from harness.store import RowInfo, RunInfo, Store, default_path
from harness.sweep import CRSweep, SweepPoint
from metrics.base import METRICS
from reports.leaderboard import OUTPUTS, RunRecord, write_all


def protocol_of(run: RunInfo) -> tuple[str, ...]:
    """What rows must share to sit in one leaderboard: dataset, preset, backbone, the
    test split itself (its options and files) and the evaluation precision."""
    return (run.dataset, run.preset, run.backbone, str(run.meta.get("test_split_id", "")),
            str(run.meta.get("eval_precision", "")))


def _describe(p: tuple[str, ...]) -> str:
    return "/".join(p[:3]) + (f" (test split {p[3][:8]}, {p[4]})" if p[3] else "")


def select(store: Store, *, run_ids: Sequence[int] = (), dataset: str | None = None,
           preset: str | None = None, since: str | None = None, until: str | None = None,
           latest_per_method: bool = False) -> tuple[list[RunInfo], list[RowInfo]]:
    """The runs and rows of a selection (see the module docstring)."""
    if run_ids:
        runs = store.runs(run_ids=list(run_ids), status=None)
        missing = sorted(set(run_ids) - {r.id for r in runs})
        if missing:
            raise UserError(f"--run {missing[0]}: no such run in {shown_path(store.path)} "
                            "(--list shows the stored runs)")
    else:
        runs = store.runs(dataset=dataset, preset=preset, since=since, until=until)
        if not runs:
            raise UserError(f"no finished run in {shown_path(store.path)} matches the selection")
        if not (latest_per_method or dataset or preset or since or until):
            runs = runs[-1:]  # the latest finished run
        elif not (dataset or preset):  # the newest run's protocol
            current = protocol_of(runs[-1])
            others = {protocol_of(r) for r in runs} - {current}
            if others:
                print(f"note: {len(others)} other protocol(s) in the store left out; this "
                      f"is {_describe(current)} (choose with --dataset / --preset)",
                      file=sys.stderr)
            runs = [r for r in runs if protocol_of(r) == current]
    protocols = sorted({protocol_of(r) for r in runs})
    if len(protocols) > 1:
        raise UserError(f"the selection spans {len(protocols)} protocols ("
                        + "; ".join(_describe(p) for p in protocols)
                        + "): narrow it with --dataset, --preset or --run")
    newest: dict[str, int] = {}  # row -> the newest run holding it
    all_rows = store.rows([r.id for r in runs])
    for row in all_rows:
        newest[row.row] = max(newest.get(row.row, row.run_id), row.run_id)
    rows = [r for r in all_rows if r.run_id == newest[r.row]]
    if not rows:
        raise UserError("the selected runs hold no rows")
    used = {r.run_id for r in rows}
    return [r for r in runs if r.id in used], rows


def build_record(store: Store, runs: list[RunInfo], rows: list[RowInfo], *,
                 reference: str | None = None) -> RunRecord:
    """The :class:`RunRecord` of stored ``rows`` (from ``runs``), analysed afresh
    (against ``reference``, by default the one the newest run used)."""
    by_id = {r.id: r for r in runs}
    latest = max(runs, key=lambda r: r.id)
    if reference is None:
        reference = latest.meta.get("reference")
    results: list[MethodResult] = [store.result(r.id) for r in rows]
    method_meta: dict[str, dict[str, Any]] = {}
    for r in rows:
        mm = by_id[r.run_id].method_meta.get(r.row)
        if mm is not None and r.row not in method_meta:
            method_meta[r.row] = dict(mm, run=r.run_id)
    reference_rows = {n for n, m in method_meta.items() if m.get("reference")}
    cfg = latest.config
    seeds = sorted({r.seed for r in results})
    analysis = analyse(results, reference=reference, reference_rows=reference_rows,
                       n_resamples=int(cfg.get("eval", {}).get("bootstrap", 1000)),
                       seed=seeds[0])
    meta = dict(latest.meta, seeds=seeds)
    if len(runs) > 1:
        meta["runs"] = sorted(by_id)
    extras = store.extras(latest.id)
    images = extras.get("gallery_images", np.zeros((0, 1, 1, 3)))
    same_images = {r.id for r in runs
                   if np.array_equal(store.extras(r.id).get("gallery_images", images), images)}
    first = [res for res, row in zip(results, rows, strict=True)
             if res.seed == seeds[0] and row.run_id in same_images and res.gallery]
    boxes = {k[len("box_"):]: v for k, v in extras.items() if k.startswith("box_")}
    sweep = None
    if latest.cr_sweep:
        sw = latest.cr_sweep
        sweep = CRSweep([SweepPoint(**p) for p in sw["points"]], SweepPoint(**sw["vanilla"]),
                        SweepPoint(**sw["parent"]))
    return RunRecord(results=results, analysis=analysis, gallery_rows=first, meta=meta,
                     method_meta=method_meta, config=cfg, gallery_images=images,
                     gallery_boxes=boxes, gallery_labels=extras.get("gallery_labels"),
                     cr_sweep=sweep,
                     paper_values=tuple(PaperValue(**p) for p in latest.paper_values))


def compare_frame(store: Store, a: RunInfo, b: RunInfo, *, n_resamples: int = 1000
                  ) -> pd.DataFrame:
    """Each (row, metric) both runs scored: A's value, B's, and B - A paired on the
    images both scored (seeds paired in ascending order)."""
    rows_a: dict[str, list[RowInfo]] = {}
    for r in store.rows([a.id]):
        rows_a.setdefault(r.row, []).append(r)
    rows_b: dict[str, list[RowInfo]] = {}
    for r in store.rows([b.id]):
        rows_b.setdefault(r.row, []).append(r)
    out = []
    for name in [n for n in rows_a if n in rows_b]:
        ra = [store.result(r.id) for r in sorted(rows_a[name], key=lambda r: r.seed)]
        rb = [store.result(r.id) for r in sorted(rows_b[name], key=lambda r: r.seed)]
        k = min(len(ra), len(rb))
        for e in METRICS:
            m = e.name
            if not all(m in r.per_image for r in ra[:k] + rb[:k]):
                continue
            per_class = m in ra[0].per_class
            cmp = paired_difference([r.per_image[m] for r in rb[:k]],
                                    [r.per_image[m] for r in ra[:k]], per_class, n_resamples)
            out.append({"row": name, "metric": m,
                        "a": float(np.mean([r.values[m] for r in ra[:k]])),
                        "b": float(np.mean([r.values[m] for r in rb[:k]])),
                        "diff": cmp.diff, "diff_lo": cmp.lo, "diff_hi": cmp.hi, "p": cmp.p,
                        "n_images": cmp.n_images, "n_seeds": cmp.n_seeds,
                        "higher_is_better": e.obj.higher_is_better})
    return pd.DataFrame.from_records(out, columns=[
        "row", "metric", "a", "b", "diff", "diff_lo", "diff_hi", "p", "n_images", "n_seeds",
        "higher_is_better"])


#: the files :func:`write_compare` writes
COMPARE_OUTPUTS = ("compare.csv", "compare.html")


def write_compare(store: Store, a_id: int, b_id: int, out: Path) -> dict[str, Path]:
    """``compare.csv`` and ``compare.html`` for runs ``a_id`` and ``b_id``."""
    found = {r.id: r for r in store.runs(run_ids=[a_id, b_id], status=None)}
    for rid in (a_id, b_id):
        if rid not in found:
            raise UserError(f"--compare {rid}: no such run in {shown_path(store.path)}")
    a, b = found[a_id], found[b_id]
    split_a, split_b = (r.meta.get("test_split_id") for r in (a, b))
    if a.dataset != b.dataset or split_a != split_b:
        raise UserError(f"runs {a_id} and {b_id} scored different test images ({a.dataset}"
                        f" vs {b.dataset}, or other split options): a paired comparison "
                        "needs the same test split")
    frame = compare_frame(store, a, b, n_resamples=int(
        b.config.get("eval", {}).get("bootstrap", 1000)))
    if frame.empty:
        raise UserError(f"runs {a_id} and {b_id} share no scored (method, explainer) row")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / COMPARE_OUTPUTS[0], "html": out / COMPARE_OUTPUTS[1]}
    with atomic_path(paths["csv"]) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_text(paths["html"], compare_html(frame, a, b))
    return paths


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def compare_html(frame: pd.DataFrame, a: RunInfo, b: RunInfo) -> str:
    """A self-contained page: one table per metric, rows side by side, the paired
    difference with its interval, marked where it is detectable (p < 0.05)."""
    import jinja2

    def describe(r: RunInfo) -> str:
        return (f"run {r.id}: {r.dataset} / {r.preset} / {r.backbone}, {r.device}, "
                f"{r.meta.get('precision', '')}, git {r.git_rev}, started {r.started}, "
                f"{r.status}")

    tables = []
    for metric, g in frame.groupby("metric", sort=False):
        hib = bool(g["higher_is_better"].iloc[0])
        rows = []
        for _, r in g.iterrows():
            sig = not math.isnan(r["p"]) and r["p"] < 0.05 and r["diff"] != 0
            better = (r["diff"] > 0) == hib
            rows.append({"row": r["row"], "a": _fmt(r["a"]), "b": _fmt(r["b"]),
                         "diff": f"{r['diff']:+.3f}" if not math.isnan(r["diff"]) else "–",
                         "ci": f"[{_fmt(r['diff_lo'])}, {_fmt(r['diff_hi'])}]",
                         "p": "–" if math.isnan(r["p"]) else f"{r['p']:.3g}",
                         "n": int(r["n_images"]),
                         "cls": ("better" if better else "worse") if sig else ""})
        tables.append({"metric": metric, "arrow": "higher" if hib else "lower",
                       "desc": METRICS.get(str(metric)).description, "rows": rows})
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=True)
    return env.get_template("compare.html.j2").render(a=describe(a), b=describe(b),
                                                      tables=tables)


def list_runs(store: Store) -> None:
    runs = store.runs(status=None)
    if not runs:
        print(f"{shown_path(store.path)}: no runs")
        return
    print(f"{'id':>4}  {'started':<19}  {'status':<11} {'rows':>4}  protocol")
    for r in runs:
        print(f"{r.id:>4}  {r.started:<19}  {r.status:<11} {r.n_rows:>4}  "
              f"{r.dataset} / {r.preset} / {r.backbone} on {r.device}, git {r.git_rev}")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (also what the documentation's command-line page is
    generated from)."""
    p = cli.Parser(prog="python -m harness.report",
                   description="Leaderboards from the results store.")
    p.add_argument("--db", default=str(default_path()),
                   help="the results database (default runs/attnbench.sqlite, or "
                        "$ATTNBENCH_DB)")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--list", action="store_true", help="list the stored runs and exit")
    p.add_argument("--run", type=run_id, action="append", default=[], metavar="ID",
                   help="a run id (repeatable; default: the latest finished run)")
    p.add_argument("--latest-per-method", action="store_true",
                   help="each (method, explainer) from the newest finished run that has it")
    p.add_argument("--dataset", default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--since", default=None, metavar="DATE",
                   help="runs started on or after DATE (YYYY-MM-DD or ISO time)")
    p.add_argument("--until", default=None, metavar="DATE",
                   help="runs started on or before DATE")
    p.add_argument("--reference", default=None, metavar="ROW",
                   help="the row every other is compared with (default: baseline on "
                        "accuracy columns, gradcam on explanation columns)")
    p.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="a plugin registering the runs' own metrics (as harness.run's "
                        "--include; repeatable)")
    p.add_argument("--compare", type=run_id, nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                   help="write compare.csv / compare.html: B - A on the images both scored")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run_id(text: str) -> int:
    """A run id from the command line: an integer in [1, 2**63 - 1] (SQLite's ids)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a run id is a positive integer, got "
                                         f"{shown(text)}") from None
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"a run id is an integer in [1, 2**63 - 1], got "
                                         f"{clip(text)}")
    return value


#: SQLite's largest integer
MAX_ID = 2**63 - 1


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit 0 on success, 2 on a bad option or an unusable database
    (one line), 130 / 143 when interrupted (Ctrl-C / SIGTERM)."""
    with cli.terminate_as_interrupt():
        try:
            return _main(parse_args(argv))
        except cli.ArgumentError as err:
            print(f"error: {clip(err, 240)}", file=sys.stderr)
            return 2
        except UserError as err:
            print(f"error: {message(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as stop:
            print(f"{cli.interrupted_line(stop)}: each report file is the old one or the new "
                  "one, whole; rerun to write them all", file=sys.stderr)
            return cli.exit_status(stop)


def _main(args: argparse.Namespace) -> int:
    from harness import plugins

    plugins.load(args.include)
    with Store(args.db, readonly=True) as store:
        if args.list:
            list_runs(store)
            return 0
        if args.out is None:
            raise UserError("--out is required: the directory the reports go to")
        out = probe_writable(args.out, "--out")
        clash = output_clash(store.path, out, [*OUTPUTS.values(), *COMPARE_OUTPUTS])
        if clash:
            raise UserError(f"--db {shown_path(store.path)} is one of the reports' files "
                            f"(--out {shown_path(out)} writes {clash} there): give --out "
                            "another folder")
        if args.compare:
            paths = write_compare(store, args.compare[0], args.compare[1], out)
            print(f"wrote {paths['csv']} and {paths['html']}")
            return 0
        runs, rows = select(store, run_ids=args.run, dataset=args.dataset,
                            preset=args.preset, since=args.since, until=args.until,
                            latest_per_method=args.latest_per_method)
        if args.reference is not None and args.reference not in {r.row for r in rows}:
            raise UserError(f"--reference {shown(args.reference)} is not a row of the "
                            f"selection (rows: {', '.join(sorted({r.row for r in rows}))})")
        stored = {m for r in rows for m in store.result(r.id).values}
        unknown = sorted(stored - set(METRICS.names()))
        if unknown:
            print(f"note: column(s) {', '.join(unknown)} of the stored rows are not registered "
                  "metrics (a plugin's? give its --include): left out", file=sys.stderr)
        record = build_record(store, runs, rows, reference=args.reference)
        paths = write_all(record, out)
        print(f"wrote {paths['csv']} and {paths['html']} from run(s) "
              f"{', '.join(str(r.id) for r in runs)} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

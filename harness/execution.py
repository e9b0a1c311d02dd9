"""Execution: a :class:`~harness.planning.Plan` trained, evaluated, recorded and reported.

The steps, each its own function: :func:`execute` opens the store and writes the
reports; :class:`Session` holds one run — :meth:`Session.start` (splits, checks, the
run's record), :meth:`Session.run_seed` (the seed's hooks, then its rows: the one loop
over (method, explainer) with the de-duplication rule), :meth:`Session.prepare_row`
(the trained model, or why there is no row), :meth:`Session.evaluate_row` (the
evaluation, data randomisation and ROAR), :meth:`Session.record_row` (the store and the
run's per-row facts) and :meth:`Session.finish` (run extras, gallery, analysis).
Paper-specific steps are hooks (:mod:`harness.hooks`) owned by their method or metric.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness import data, distributed, evalcache, paper_values, roar, runfolder, train
from harness import store as store_mod
from harness.errors import UserError, message
from harness.evaluate import MethodResult, row_id
from harness.hooks import RUN_EXTRAS, SEED_CONTEXTS, RunContext, SeedContext, merge_facts
from harness.planning import Plan, announce, check_models, drop_unsupported, open_store
from harness.progress import duration
from methods.base import METHODS
from methods.explainers import EXPLAINERS, NotApplicable, native_equivalent
from methods.explainers import build as build_explainer
from metrics.base import METRICS

#: the columns a row's console line shows (short name, metric): single-label data, and
#: multi-label data (their rows have no top-1 or causal columns)
_CONSOLE = (("top1", "top1"), ("ins", "insertion_auc"), ("del", "deletion_auc"))
_CONSOLE_MULTI = (("label acc", "label_acc"), ("mAP", "mAP"), ("class energy", "class_energy_pg"))


@dataclass
class Result:
    """A finished run: its id in the store, the evaluated rows (one per (method,
    explainer) and seed), the report record and the files written."""

    run_id: int | None
    rows: list[MethodResult]
    record: Any
    out: Path
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def frame(self) -> pd.DataFrame:
        """The leaderboard as ``leaderboard.csv`` holds it: one row per (method,
        explainer) and seed, values with their intervals."""
        from reports.leaderboard import to_frame

        return to_frame(self.record)


@dataclass
class Row:
    """One (method, explainer) row of one seed, ready to evaluate."""

    name: str
    explainer: str
    seed: int
    trained: train.Trained
    weights: str
    shadow: train.Trained | None = None
    #: the model's own columns here (None: in its native row; a model from elsewhere
    #: has none, its first row holds them)
    model_columns: bool | None = None


def execute(plan: Plan) -> Result:
    """Train (or load), evaluate and record every row of ``plan`` into its store, then
    write the reports; returns the run. Under torchrun the other ranks than 0 train and
    score with rank 0 and return a result without a record."""
    from harness.analysis import STABLE_TAU
    from reports.leaderboard import write_all

    try:
        with open_store(plan.db) as store:
            session = Session.start(plan, store)
            record = session.run()
    except BaseException:
        if plan.own_folder and plan.world.main:  # nothing written: no empty folder left
            runfolder.drop_if_empty(plan.out)
        raise
    if store is None:
        return Result(None, session.results, None, plan.out)
    if len(plan.seeds) > 1:  # a result, printed also without progress output
        print("ranking stability (mean Kendall tau between the seeds' rankings):")
        for metric, tau in record.analysis.stability.items():
            flag = "" if tau >= STABLE_TAU else "  (not stable)"
            print(f"  {metric:<22} {tau:+.3f}{flag}")
    paths = write_all(record, plan.out)
    tell_outputs(plan, paths, session.run_id, time.perf_counter() - session.t_start)
    return Result(session.run_id, session.results, record, plan.out, paths)


def tell_outputs(plan: Plan, paths: dict[str, Path], run_id: int, seconds: float) -> None:
    """Where the run's outputs are (printed also without progress output), and, for a
    run folder of its own, ``runs/latest`` pointed at it."""
    rest = len(paths) - 2  # the leaderboards' companions: curves, comparisons, config, ...
    print(f"wrote {paths['html'].name}, {paths['csv'].name} and {rest} more file"
          f"{'s' if rest != 1 else ''} to {plan.out} (run {run_id} in {plan.db}) in "
          f"{duration(seconds)}")
    if plan.own_folder:
        problem = runfolder.point_latest(plan.out)
        if problem is None:
            print(f"{plan.out.parent / runfolder.LATEST} now points to {plan.out.name}")
        else:
            print(problem, file=sys.stderr)


def register_models(plan: Plan, info: data.DatasetInfo) -> None:
    """Load every ``--model`` (checked against the dataset) and register it as a method
    that trains nothing, under its name, keyed by its weights (what another run of the
    same process registered under that source is replaced)."""
    from harness import codedigest, external
    from harness.registry import registering

    for spec in plan.models:
        source = f"--model {spec.spec}"
        METHODS.remove_source(source)
        net = external.load(spec, plan.cfg.backbone, info, plan.cfg.backbone_kwargs)
        digest = evalcache.weights_digest(external.External(net, info))
        factory = external.factory(spec, net)
        with registering(source):
            METHODS.add(spec.name, factory, train={"epochs": 0}, weights=digest,
                        code=codedigest.digest(external.External, external.load),
                        description=f"a model trained elsewhere ({spec.spec})",
                        external=True)


def git_rev() -> str:
    """The checkout's short commit, or ``unknown``."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def protocol_line(plan: Plan, multi_label: bool = False) -> str:
    """What the run's numbers mean, one line for the report's header (``multi_label``:
    the test split's images hold several labels)."""
    cfg, world = plan.cfg, plan.world
    scored = ("multi-label (sigmoid + binary cross-entropy per label; label c predicted "
              "when its logit > 0; every class present explained and scored against the "
              "boxes of its own objects" if multi_label else
              "rise (insertion: blur 11/5 substrate; deletion: zero substrate; predicted "
              "class; softmax score; one row of pixels per step")
    line = (f"{scored}; maps min-max normalised per "
            f"image for localisation; training in {cfg.precision}, evaluation forward passes "
            f"in {plan.eval_precision}, explanations in fp32; {world.size} process"
            f"{'es' if world.size > 1 else ''}"
            f"{f' ({world.backend})' if world.size > 1 else ''})")
    if "data" in plan.sanity:
        line += ("; data randomisation: every method trained again, same schedule and "
                 f"seed, on the training labels permuted with seed {cfg.eval.lens_seed}")
    if plan.roar:
        line += (f"; ROAR / KAR: {roar.RETRAINED} trained again on the images with the top "
                 "t of each row's map (ground-truth class) removed or kept alone, imputed as "
                 f"ROAD's (noise {cfg.eval.road_noise:g}), t = "
                 + ", ".join(f"{100 * t:g} %" for t in plan.roar))
    return line


def run_meta(plan: Plan, test_split: data.Split) -> dict[str, Any]:
    """The run's record before its rows: protocol, options, versions."""
    from harness.train import file_digest

    cfg, world = plan.cfg, plan.world
    return {
        "dataset": cfg.dataset, "preset": cfg.preset, "backbone": cfg.backbone,
        "seeds": list(plan.seeds), "device": str(plan.device), "precision": cfg.precision,
        "eval_precision": plan.eval_precision, "explainers": list(plan.explainers),
        "world_size": world.size, "backend": world.backend, "sync_bn": world.sync_bn,
        "reference": plan.request.reference, "sanity": list(plan.sanity),
        **({"label_permutation_seed": cfg.eval.lens_seed} if "data" in plan.sanity else {}),
        **({"roar": {"fractions": list(plan.roar), "retrained": roar.RETRAINED,
                     "noise": cfg.eval.road_noise, "seed": cfg.eval.lens_seed}}
           if plan.roar else {}),
        "test_split_id": evalcache.split_id(test_split, cfg.dataset_kwargs),
        "num_classes": test_split.info.num_classes,
        "label_names": list(test_split.info.label_names
                            or data.DATASETS.entry(cfg.dataset).meta.get("label_names") or ()),
        "protocol": protocol_line(plan, test_split.info.multi_label),
        "data_dir": plan.request.data_dir, "workers": cfg.workers or 0,
        "pretrained": cfg.pretrained,
        "pretrained_sha256": file_digest(cfg.pretrained) if cfg.pretrained else None,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "git_rev": git_rev(), "torch": str(torch.__version__),
        "python": platform.python_version()}


class Session:
    """One run of a plan: its splits, store, trained models and rows so far."""

    def __init__(self, plan: Plan, store: store_mod.Store | None,
                 splits: tuple[data.Split, data.Split], methods: list[str],
                 meta: dict[str, Any], t_start: float) -> None:
        self.plan, self.store = plan, store
        self.train_split, self.test_split = splits
        self.methods, self.meta, self.t_start = methods, meta, t_start
        self.run_id = 0
        self.say: Callable[..., None] = print if plan.progress else (lambda *a, **k: None)
        self.memo: dict[str, train.Trained] = {}
        self.results: list[MethodResult] = []
        self.method_meta: dict[str, dict[str, Any]] = {}
        self.told: set[tuple[str, str]] = set()
        self.reported: set[tuple[str, int]] = set()  # (model, seed) with a row line said
        self.digests: dict[str, str] = {}  # checkpoint key -> weights digest
        self.n_read = self.n_parts = 0
        self.read = plan.cache is not None
        # the data-randomisation test's training split: labels permuted once
        self.permuted = (data.permuted_labels(self.train_split, plan.cfg.eval.lens_seed)
                         if "data" in plan.sanity else None)

    @classmethod
    def start(cls, plan: Plan, store: store_mod.Store | None) -> Session:
        """Build the splits, check every method on them, and open the run's record
        (rank 0 holds the store; the other ranks pass None)."""
        from harness.planning import split_builder

        t_start = time.perf_counter()
        build = split_builder(plan)
        with distributed.main_first():  # rank 0 fills a dataset cache before the others
            train_split, test_split = build("train"), build("test")
        skipped: list[str] = []
        methods = drop_unsupported(plan.methods, test_split.info, explicit=plan.explicit,
                                   say=skipped.append, models=len(plan.models))
        announce(plan, methods)
        for line in skipped:  # shown always
            print(line)
        register_models(plan, test_split.info)
        if "cr_sweep" in plan.extras and not test_split.info.has_boxes:
            raise UserError(f"--cr-sweep needs bounding boxes; dataset "
                            f"{test_split.info.name!r} has none")
        meta = run_meta(plan, test_split)
        check_models(methods, plan.cfg, train_split)
        session = cls(plan, store, (train_split, test_split), methods, meta, t_start)
        if store is not None:
            session.run_id = store.begin_run(meta=meta, config=plan.cfg.to_dict(),
                                             argv=sys.argv[1:])
        return session

    def run(self) -> Any:
        """Every seed's rows, then :meth:`finish`; the store marks a run that stops
        early (interrupted or failed). Returns the report record (None off rank 0)."""
        try:
            for seed in self.plan.seeds:
                self.run_seed(seed)
            return self.finish()
        except KeyboardInterrupt:
            self.mark("interrupted")
            raise
        except BaseException as err:
            self.mark("failed", quiet=isinstance(err, store_mod.StoreError))
            raise

    def obtain(self, name: str, cfg: Any, split: data.Split | None = None) -> train.Trained:
        """Method ``name`` trained under ``cfg`` (read from the cache when there)."""
        return train.obtain(name, cfg, split or self.train_split, self.plan.device,
                            self.plan.cache, progress=self.plan.progress, _memo=self.memo)

    def weights(self, trained: train.Trained) -> str:
        """The weights digest of a trained model (fixed during a run)."""
        if trained.key not in self.digests:
            self.digests[trained.key] = evalcache.weights_digest(trained.method)
        return self.digests[trained.key]

    def source(self, name: str, cfg: Any) -> str:
        """Where :meth:`obtain` would take ``name`` from (:func:`harness.train.source`)."""
        return train.source(name, cfg, self.train_split, self.plan.device, self.plan.cache,
                            self.memo)

    def obtain_early(self, name: str, cfg: Any, hook: str) -> train.Trained:
        """``name`` for seed hook ``hook``, before the rows: its training (if it trains
        here) said under a line of its own."""
        if self.source(name, cfg) == "train":
            self.say(f"{hook} needs {name} before the rows (seed {cfg.seed}): training it "
                     "first", flush=True)
        return self.obtain(name, cfg)

    def seed_contexts(self, cfg: Any) -> dict[str, Any]:
        """The declared seed hooks' values for this seed (their facts into the record)."""
        values = {}
        for entry in SEED_CONTEXTS:
            ctx = SeedContext(self.plan, tuple(self.methods), cfg, self.train_split,
                              self.test_split,
                              functools.partial(self.obtain_early, cfg=cfg, hook=entry.name),
                              self.weights, self.store, self.meta["test_split_id"], self.read)
            got = entry.obj(ctx)
            if got is not None:
                values[entry.name] = got.value
                merge_facts(self.meta, got.facts)
        return values

    def run_seed(self, seed: int) -> None:
        """The rows of one seed, in :meth:`Plan.rows` order. A row whose weights and
        explanation another row of this seed already has (cam and gradcam load
        baseline's weights) is one row; an explainer that does not fit a model is no
        row; both are said once."""
        cfg = dataclasses.replace(self.plan.cfg, seed=seed)
        context = self.seed_contexts(cfg)
        made: dict[tuple[str, str], str] = {}
        rows = self.plan.rows(self.methods)
        started: list[str] = []  # the methods and models whose first row has begun
        for i, (name, explainer) in enumerate(rows):
            self.header(name, explainer, cfg, started,
                        i + len(rows) * self.plan.seeds.index(seed), len(rows))
            row = self.prepare_row(name, explainer, cfg, made)
            if row is None:
                continue
            t_eval = time.perf_counter()
            res, keys, n_hit = self.evaluate_row(row, cfg, context)
            self.record_row(row, res, keys, n_hit, time.perf_counter() - t_eval)

    def prepare_row(self, name: str, explainer: str, cfg: Any,
                    made: dict[tuple[str, str], str]) -> Row | None:
        """The row's trained model, or None (said once) when the same model explained
        the same way is a row already or the explainer does not fit it."""
        trained = self.obtain(name, cfg)
        weights = self.weights(trained)
        kind = (native_equivalent(trained.method) or f"native:{name}"
                if explainer == "native" else explainer)
        if (weights, kind) in made:
            self.note(name, explainer, f"the same model and explanation as {made[weights, kind]}")
            return None
        if explainer != "native":
            try:
                build_explainer(explainer, trained.method)
            except NotApplicable as why:
                self.note(name, explainer, str(why))
                return None
        first = not any(w == weights for w, _k in made)
        made[weights, kind] = row_id(name, explainer)
        shadow = None
        if self.permuted is not None:  # --sanity data: trained again, or cached
            shadow = self.obtain(name, cfg, self.permuted)
        external = bool(METHODS.entry(name).meta.get("external"))
        return Row(name, explainer, cfg.seed, trained, weights, shadow,
                   model_columns=first if external else None)

    def note(self, name: str, explainer: str, why: str) -> None:
        if (name, explainer) not in self.told:
            self.say(f"  no {name}+{explainer} row: {why}")
            self.told.add((name, explainer))

    def header(self, name: str, explainer: str, cfg: Any, started: list[str], done: int,
               per_seed: int) -> None:
        """The line a row's output starts under (its training's epoch lines, its scores):
        ``method N of M: NAME`` for a method's first row of the seed, with how its model
        is obtained (``cached``, ``trained above``, ``on PARENT's weights``; nothing when
        it trains now), ``model N of K: NAME`` for a ``--model``'s, ``row NAME+EXPLAINER``
        for the others; then the time so far and an ETA from the rows done."""
        if not self.plan.progress:
            return
        total = per_seed * len(self.plan.seeds)
        elapsed = time.perf_counter() - self.t_start
        timing = f"elapsed {duration(elapsed)}" + (
            f", ETA {duration(elapsed / done * (total - done))}" if done else "")
        models = [m.name for m in self.plan.models]
        if name in started:
            self.say(f"row {row_id(name, explainer)} (seed {cfg.seed}), {timing}", flush=True)
            return
        started.append(name)
        if name in models:
            what, n, of, how = "model", models.index(name) + 1, len(models), "loaded"
        else:
            what, n, of = "method", self.methods.index(name) + 1, len(self.methods)
            source = self.source(name, cfg)
            how = {"cache": "cached", "run": "trained above",
                   "parent": f"on {METHODS.entry(name).meta.get('init_from')}'s weights"
                   }.get(source, "")
        self.say(f"{what} {n} of {of}: {name} (seed {cfg.seed}){', ' if how else ''}{how}, "
                 f"{timing}", flush=True)

    def evaluate_row(self, row: Row, cfg: Any, context: dict[str, Any]
                     ) -> tuple[MethodResult, dict[str, str], int]:
        """The row's scores, each part read from the store when it holds it: the
        metrics, data randomisation against the shadow model, ROAR / KAR."""
        plan, trained = self.plan, row.trained
        spec = evalcache.RowSpec(
            trained.method, row.name, row.explainer, row.seed, trained.key, row.weights,
            permuted=None if row.shadow is None else row.shadow.method,
            permuted_weights="" if row.shadow is None else self.weights(row.shadow),
            model_columns=row.model_columns)
        res, keys, n_hit = evalcache.evaluate_cached(
            self.store, spec, self.test_split, trained.cfg.eval, plan.device,
            split_key=self.meta["test_split_id"], read=self.read,
            comb_subset=context.get("comb_subset"), precision=plan.eval_precision,
            progress=plan.progress)
        if plan.roar:
            ev = trained.cfg.eval
            protocol = roar.Protocol(plan.roar, ev.road_noise, ev.lens_seed, ev.batch_size,
                                     plan.eval_precision)
            ctx = roar.Context(cfg, self.train_split, self.test_split, plan.device, plan.cache,
                               self.store, self.read, self.meta["test_split_id"],
                               plan.progress, self.memo, self.say)
            res, rkeys, r_hit = roar.roar_row(res, trained.method, row.explainer, row.weights,
                                              protocol, ctx)
            keys, n_hit = {**keys, **rkeys}, n_hit + r_hit
        return res, keys, n_hit

    def row_meta(self, row: Row, res: MethodResult) -> dict[str, Any]:
        """The row's description in the run's record (the first seed's writes it)."""
        meta = METHODS.entry(row.name).meta
        if row.explainer == "native":
            own = {"paper": meta.get("paper", ""), "description": meta.get("description", ""),
                   "explainer": meta.get("explainer", "native"),
                   "reference": bool(meta.get("reference", False))}
        else:
            xm = EXPLAINERS.entry(row.explainer).meta
            own = {"paper": xm.get("paper", ""),
                   "description": f"{xm.get('description', row.explainer)}, applied to the "
                                  f"trained {row.name}",
                   "explainer": row.explainer, "reference": bool(xm.get("reference", False))}
        return self.method_meta.setdefault(res.row, {
            "method": row.name, **own, "init_from": meta.get("init_from"),
            "train": row.trained.cfg.to_dict()["train"],
            "parameter_groups": [g for g, _ in row.trained.method.parameter_groups()],
            **({"roar_fractions": {mode: list(roar.axis(mode, self.plan.roar))
                                   for mode in roar.MODES}} if self.plan.roar else {}),
            "seeds": {}})

    def record_row(self, row: Row, res: MethodResult, keys: dict[str, str], n_hit: int,
                   eval_seconds: float) -> None:
        """Store the row and say what it scored and how it was obtained."""
        trained, shadow = row.trained, row.shadow
        self.n_read += n_hit
        self.n_parts += len(keys)
        self.row_meta(row, res)["seeds"][row.seed] = {
            "key": trained.key, "cached": trained.cached,
            "train_seconds": round(trained.train_seconds, 2), "facts": trained.facts,
            "history": trained.history, "eval_cached": n_hit == len(keys),
            **({"permuted": {"key": shadow.key, "cached": shadow.cached,
                             "train_seconds": round(shadow.train_seconds, 2),
                             "history": shadow.history}} if shadow else {}),
            **({"causal_passes": res.causal_passes} if res.causal_passes else {})}
        if self.store is not None:
            self.store.add_row(self.run_id, res, checkpoint_key=trained.key, eval_keys=keys,
                               method_meta=self.method_meta)
        self.results.append(res)
        v = res.values
        shown = _CONSOLE_MULTI if any(k in v for _, k in _CONSOLE_MULTI) else _CONSOLE
        cols = "  ".join(f"{short} {v.get(k, float('nan')):.3f}" for short, k in shown)
        self.say(f"  {res.row:<16} seed {row.seed}  {cols}  "
                 f"({self.how_obtained(row, len(keys), n_hit, eval_seconds)})")

    def how_obtained(self, row: Row, parts: int, n_hit: int, eval_seconds: float) -> str:
        """How a row's numbers were obtained, for its console line: the model's training
        (in the model's first row of the seed; later rows have the same model as
        above), the permuted-label model's, then the evaluation's time and how many of
        its ``parts`` were read from the store (``n_hit``)."""
        if (row.name, row.seed) in self.reported:
            how = "the same model as above"
        else:
            self.reported.add((row.name, row.seed))
            how = training_text(row.name, row.trained)
            if row.shadow is not None:
                how += f", permuted labels: {training_text(row.name, row.shadow)}"
        if parts and n_hit == parts:
            return f"{how}, evaluation cached"
        return f"{how}, evaluation {duration(eval_seconds)}" + (
            f", {n_hit} of {parts} parts cached" if n_hit else "")

    def finish(self) -> Any:
        """After every row: the rows' run-level facts, the run extras, the gallery's
        images, the paper values; the run marked done with its estimates. Returns the
        report record (None off rank 0)."""
        from harness.analysis import default_references
        from harness.report import build_record

        if not self.results:
            raise UserError("no (method, explainer) row to evaluate: every requested "
                            "explainer is the methods' own or does not fit them")
        self.summarise_rows()
        extras = self.run_extras()
        if self.store is None:
            return None
        for missing in sorted(set(default_references(
                self.results, self.plan.request.reference).values())):
            if missing not in self.method_meta:
                self.say(f"  no paired comparisons against {missing}: it is not among the rows")
        cfg = self.plan.cfg
        pv = paper_values.for_run(cfg.preset, cfg.dataset, cfg.backbone, cfg.preset_dataset,
                                  cfg.preset_backbone)
        self.store.finish_run(self.run_id, status="running", meta=self.final_meta(),
                              method_meta=self.method_meta, extras=self.gallery(),
                              paper_values=[dataclasses.asdict(p) for p in pv],
                              cr_sweep=extras.get("cr_sweep"))
        (run,) = self.store.runs(run_ids=[self.run_id], status=None)
        record = build_record(self.store, [run], self.store.rows([self.run_id]),
                              reference=self.plan.request.reference)
        self.store.finish_run(self.run_id, status="done", estimates=[
            (row.method, metric, e.value, e.lo, e.hi, e.seed_sd)
            for row in record.analysis.rows for metric, e in row.estimates.items()])
        return record

    def summarise_rows(self) -> None:
        """Each row's run-level view of its seeds; how much the store answered."""
        for mm in self.method_meta.values():
            runs = list(mm["seeds"].values())
            mm.update(key=",".join(r["key"] for r in runs),
                      cached=all(r["cached"] for r in runs),
                      train_seconds=round(sum(r["train_seconds"] for r in runs), 2),
                      facts=runs[0]["facts"])
        if self.n_parts:
            self.say(f"evaluation: {self.n_read} of {self.n_parts} parts read from the store, "
                     f"{self.n_parts - self.n_read} computed")

    def run_extras(self) -> dict[str, Any]:
        """The extras the plan asks for (:data:`harness.hooks.RUN_EXTRAS`), by name."""
        ctx = RunContext(self.plan, self.train_split, self.test_split, self.memo, self.say,
                         self.plan.device, self.plan.cache)
        return {name: RUN_EXTRAS.get(name)(ctx, arg) for name, arg in self.plan.extras.items()}

    def gallery(self) -> dict[str, np.ndarray]:
        """The first test images (denormalised), labels and boxes the reports draw."""
        split = self.test_split
        samples = [split.dataset[i] for i in range(min(self.plan.cfg.eval.gallery_n,
                                                       len(split)))]
        if not samples:
            return {}
        images = torch.stack([s["image"] for s in samples])
        out = {"gallery_images": data.denormalize(images, split.info).permute(0, 2, 3, 1)
               .numpy(), "gallery_labels": np.array([s["label"] for s in samples])}
        for b in ("bbox", *split.info.extra_boxes):
            if b in samples[0]:
                out[f"box_{b}"] = np.stack([s[b].numpy() for s in samples])
        return out

    def final_meta(self) -> dict[str, Any]:
        """The run's record after its rows: sizes, the causal passes, the wall time."""
        from reports.leaderboard import PASSES_MARK

        meta = dict(self.meta)
        passes = passes_by_kind(self.results)
        if passes:  # how the causal metrics' forward passes ran, on the protocol line too
            meta.update(causal_passes=passes,
                        protocol=f"{meta['protocol']}{PASSES_MARK}{describe_passes(passes)}")
        meta.setdefault("comb_reference", None)
        meta.setdefault("n_comb", None)
        meta.update(n_test=self.results[0].n_test, n_causal=self.results[0].n_causal,
                    no_boxes="" if self.test_split.info.has_boxes else ", ".join(
                        e.name for e in METRICS if e.obj.needs_boxes))
        if any("energy_pg" in r.per_image for r in self.results):
            # what energy_pg a map spread evenly over each image scores: the reports
            # mark the rows below it
            meta["uniform_energy_pg"] = evalcache.uniform_energy_cached(
                self.store, self.test_split, split_key=self.meta["test_split_id"],
                read=self.read, batch_size=self.plan.cfg.eval.batch_size)
        meta["wall_seconds"] = round(time.perf_counter() - self.t_start, 1)
        return meta

    def mark(self, status: str, *, quiet: bool = False) -> None:
        """Record why the run stopped, without hiding the error that stopped it
        (``quiet``: that error is the store's own, already one line naming it)."""
        if self.store is None or not self.run_id:
            return
        try:  # after an interrupt, briefly: a container runtime kills the process soon
            self.store.set_status(self.run_id, status,
                                  wait=5.0 if status == "interrupted" else 120.0)
        except Exception as err:  # the store may be what failed: say so, keep the cause
            if not quiet:
                print(f"warning: could not mark run {self.run_id} {status} in "
                      f"{self.store.path}: "
                      f"{message(err) if isinstance(err, UserError) else err}",
                      file=sys.stderr)


def training_text(name: str, trained: train.Trained) -> str:
    """How a row's model was obtained, for its console line: ``training 5.2 s``,
    ``training cached``, ``on baseline's weights`` (a method that trains nothing) or
    ``loaded`` (a model trained elsewhere)."""
    meta = METHODS.entry(name).meta
    if meta.get("external"):
        return "loaded"
    if meta.get("init_from") and trained.cfg.train.epochs <= 0:
        return f"on {meta['init_from']}'s weights"
    return "training " + ("cached" if trained.cached else duration(trained.train_seconds))


def passes_by_kind(results: list[MethodResult]) -> dict[str, dict[str, Any]]:
    """The causal metrics' forward passes of this run's rows, per model kind, engine and
    stream count: the images scored at each forward batch, summed over the rows, and
    the batch that scored most of them (rows read from the evaluation cache ran none)."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        p = r.causal_passes
        if not p:
            continue
        label = f"{p['model_kind']}, {p['engine']}, {p['streams']} stream" \
                f"{'s' if p['streams'] != 1 else ''}"
        entry = out.setdefault(label, {"model_kind": p["model_kind"], "engine": p["engine"],
                                       "streams": p["streams"], "images_per_batch": {}})
        for size, n in p["images_per_batch"].items():
            entry["images_per_batch"][size] = entry["images_per_batch"].get(size, 0) + n
    for entry in out.values():
        used = entry["images_per_batch"]
        entry["images_per_batch"] = dict(sorted(used.items()))
        entry["forward_batch"] = max(used, key=lambda s: (used[s], s))
    return out


def describe_passes(passes: dict[str, dict[str, Any]]) -> str:
    """One phrase per kind: ``Name (0.08M parameters, fp32), torch, 2 streams: batch 32
    (91 % of the images; also 16, 64)``."""
    parts = []
    for label, e in passes.items():
        used = e["images_per_batch"]
        share = 100 * used[e["forward_batch"]] / sum(used.values())
        others = [str(s) for s in used if s != e["forward_batch"]]
        parts.append(f"{label}: batch {e['forward_batch']} ({share:.0f} % of the images"
                     + (f"; also {', '.join(others)}" if others else "") + ")")
    return "; ".join(parts)

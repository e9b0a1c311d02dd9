"""Command line: train (or load) every requested method, evaluate, write leaderboards.

    python -m harness.run --methods all
    python -m harness.run --methods all --seeds 3
    python -m harness.run --methods abn,cam --preset smoke --out runs/smoke
    python -m harness.run --methods msabn-cr --cr-sweep 0,0.2,0.4
    python -m harness.run --list
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import inspect
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from harness import cli

if __name__ == "__main__":  # SIGTERM while the libraries load is Ctrl-C too
    cli.install_sigterm()

try:  # Ctrl-C or SIGTERM while the libraries load (seconds): one line, not a traceback
    import numpy as np
    import torch

    import metrics  # noqa: F401  (registers metrics)
    from harness import (
        backbones,
        data,
        distributed,
        evalcache,
        paper_values,
        plugins,
        roar,
        train,
    )
    from harness import config as config_mod
    from harness import device as dev
    from harness import store as store_mod
    from harness.errors import UserError, clip, message, shown, shown_path
    from harness.evaluate import MethodResult, row_id
    from harness.progress import duration
    from harness.registry import FAILED, OWN
    from harness.safeio import is_database, need_dir, need_file, output_clash, probe_writable
    from methods.base import METHODS
    from methods.explainers import EXPLAINERS, NotApplicable, native_equivalent
    from methods.explainers import build as build_explainer
    from metrics.base import METRICS
except KeyboardInterrupt as stop:  # pragma: no cover - timing-dependent, tested in a subprocess
    print(f"{cli.interrupted_line(stop)} while starting", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # not sys.exit: the interpreter's shutdown, with imports left half done, once ended
    # the process by SIGINT (status -2) after this line was printed; os._exit returns
    # 130 (143 for SIGTERM) whatever they left, and nothing is open or written yet
    os._exit(cli.exit_status(stop))

DEFAULT_CACHE = Path(os.environ.get("ATTNBENCH_CACHE", ".attnbench-cache"))
#: the entry-point group of installed plugins (:mod:`harness.plugins`)
PLUGIN_GROUP = plugins.GROUP


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.Parser(prog="python -m harness.run",
                   description="Train and compare visual-explanation methods.")
    p.add_argument("--methods", default="all",
                   help="comma-separated method ids, or 'all' (default)")
    p.add_argument("--explainers", default=None, metavar="NAMES",
                   help="comma-separated explainers applied to every trained model that "
                        "they fit, e.g. native,gradcam,cam,att-ch,att-px,random (default: "
                        "native, each method's own, and one reference row of the random "
                        f"explainer on the {REFERENCE_MODEL!r} model, the floor of every "
                        "column; '--explainers native' leaves it out)")
    p.add_argument("--list", action="store_true",
                   help="list every registry (a plugin's entries marked with their "
                        "source) and exit")
    p.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="a plugin: a Python file, a folder of them or an importable module "
                        "name, imported before any name is resolved; what it registers "
                        "(methods, explainers, metrics, datasets, backbones, presets) can "
                        "be asked for like the project's own (repeatable; installed "
                        f"packages declaring the entry-point group {PLUGIN_GROUP!r} are "
                        "loaded too)")
    p.add_argument("--dataset", default=None, help="dataset id (default: the preset's)")
    p.add_argument("--backbone", default=None, metavar="NAME",
                   help="backbone id (default: the preset's; the same as --set "
                        "backbone=NAME)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help=f"where a dataset read from disk was extracted (default "
                        f"${data.DATA_ENV}); the folder holding the archive's folder, or the "
                        "dataset's own folder")
    p.add_argument("--check-data", action="store_true",
                   help="scan the dataset (open every image, check every box), print a "
                        "summary and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the preset, print the methods in training order with "
                        "their schedules, the dataset sizes and a wall-time estimate from a "
                        "few timed steps, and exit without training")
    p.add_argument("--pretrained", default=None, metavar="FILE",
                   help="a timm / torchvision state dict on disk initialising the backbone "
                        "(its hash is part of the checkpoint keys)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image-decoding worker processes (default: the preset's; 0 for "
                        "in-memory datasets, else up to 8)")
    p.add_argument("--preset", default="default",
                   help=f"one of {', '.join(config_mod.PRESETS)} (default: default)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a preset-shaped YAML file (it may 'extends: PRESET'); checked "
                        "field by field")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   dest="sets", help="override one field, e.g. train.epochs=10 or "
                                     "methods.abn-amb.options.sigma=0.5 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="train and evaluate every method once per seed: comma-separated "
                        "seeds (0,1,2) or a count N (seeds 0..N-1); the data stay fixed")
    p.add_argument("--reference", default=None, metavar="METHOD",
                   help="the method every row is compared with, paired on images and seeds "
                        "(default: baseline on accuracy columns, gradcam on explanation "
                        "columns)")
    p.add_argument("--out", default="runs/latest",
                   help="output directory (default runs/latest)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu or cuda[:N] (default auto; under torchrun each rank "
                        "takes cuda:LOCAL_RANK)")
    p.add_argument("--compile", action="store_true",
                   help="score the insertion / deletion images through torch.compile of "
                        "the scoring model (eval.compile; same AUCs within float rounding; "
                        "compiling takes a while per model and needs a C++ compiler on "
                        "CPU)")
    p.add_argument("--engine", default=None, choices=dev.ENGINES,
                   help="what runs the perturbed images' forward passes: auto (the "
                        "default: onnxruntime on a CPU in fp32 where installed, else torch), "
                        "torch, or onnxruntime (CPU, fp32, the onnx extra; eval.engine)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun, train with batch norm statistics over the global "
                        "batch (torch.nn.SyncBatchNorm; CUDA only)")
    p.add_argument("--precision", default="auto", choices=dev.PRECISIONS,
                   help="auto (bfloat16 autocast where the device has native bf16, else "
                        "fp32; the default), fp32 or bf16")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                   help="checkpoint cache (default .attnbench-cache, or $ATTNBENCH_CACHE)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write checkpoints, and recompute every evaluation")
    p.add_argument("--db", default=str(store_mod.default_path()), metavar="PATH",
                   help="the results database every run appends to (default "
                        f"{store_mod.DEFAULT_DB}, or ${store_mod.DB_ENV})")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of an unexpected error (default: one line "
                        "and a log file in --out)")
    p.add_argument("--sanity", default=None, metavar="CHECKS",
                   help="opt-in sanity checks that train again: 'data' trains every method "
                        "a second time on the training labels permuted once (eval.lens_seed) "
                        "and scores data_rand_spearman / data_rand_ssim against it "
                        "(Adebayo et al. 2018, Sec. 3.2; doubles the training)")
    p.add_argument("--roar", nargs="?", const="auto", default=None, metavar="FRACTIONS",
                   help="remove and retrain / keep and retrain (Hooker et al. 2019): for "
                        "every row, train the baseline again from scratch on images whose "
                        "top-t %% pixels by the row's maps are removed (ROAR) or kept alone "
                        "(KAR) and imputed as ROAD's; roar_auc, kar_auc and roar.csv; "
                        "comma-separated percents t (bare flag: 10,30,50,70,90); 2 x t "
                        "trainings per row")
    p.add_argument("--cr-sweep", nargs="?", const="auto", default=None, metavar="LAMBDAS",
                   help="also fine-tune msabn-cr for each lambda_out and plot top-1 against "
                        "the annotated share: comma-separated values, 'paper' "
                        "(0,0.1,...,0.7) or 'auto' (the default: the values annotating "
                        "5-100 %% of the training images)")
    return p.parse_args(argv)


#: seeds are numpy/torch generator seeds
MAX_SEED = 2**32
#: seeds one run trains and evaluates (each trains every method again)
MAX_SEEDS = 1000


def resolve_seeds(seed: int | None, seeds: str | None) -> list[int]:
    """The training seeds from ``--seed`` / ``--seeds`` (default: seed 0 alone)."""
    if seed is not None and seeds is not None:
        raise UserError("give --seed or --seeds, not both")
    if seeds is None:
        out = [0 if seed is None else seed]
    else:
        parts = [p.strip() for p in seeds.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"--seeds expects comma-separated integers or a count, got "
                            f"{shown(seeds)}") from None
        if not values:
            raise UserError("--seeds is empty: give seeds (0,1,2) or a count (3)")
        if len(values) == 1 and "," not in seeds:
            if not 1 <= values[0] <= MAX_SEEDS:
                raise UserError(f"--seeds {clip(seeds)}: a count of seeds must be in [1, "
                                f"{MAX_SEEDS}]")
            values = list(range(values[0]))
        out = list(dict.fromkeys(values))
        if len(out) > MAX_SEEDS:
            raise UserError(f"--seeds: {len(out)} seeds, at most {MAX_SEEDS} in one run")
    bad = [v for v in out if not 0 <= v < MAX_SEED]
    if bad:
        raise UserError(f"seed {clip(bad[0])} is out of range: seeds are integers in "
                        "[0, 2**32)")
    return out


#: the opt-in sanity checks of ``--sanity``
SANITY_CHECKS = ("data",)


def resolve_sanity(spec: str | None) -> list[str]:
    """``--sanity``'s checks (comma-separated, each of :data:`SANITY_CHECKS`).

    Raises:
        UserError: an empty or unknown check."""
    if spec is None:
        return []
    checks = [c.strip() for c in spec.split(",")]
    bad = [c for c in checks if c not in SANITY_CHECKS]
    if bad or not checks:
        raise UserError(f"--sanity {shown(spec)}: unknown check {shown(bad[0] if bad else '')}"
                        f" (choose from {', '.join(SANITY_CHECKS)})")
    return sorted(set(checks), key=checks.index)


def resolve_methods(spec: str, for_methods: Sequence[str] = ()) -> list[str]:
    """Method ids from ``--methods`` (``all`` = every registered method, or the preset's
    ``for_methods`` when it names them)."""
    if spec.strip() == "all":
        return [m for m in METHODS.names() if not for_methods or m in for_methods]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--methods is empty: give method ids or 'all'")
    if "all" in names:
        raise UserError(f"--methods {shown(spec)}: 'all' stands alone (every method); to pick "
                        "methods, list them without it")
    for n in names:
        METHODS.entry(n)  # raises with close matches
    return list(dict.fromkeys(names))


def resolve_explainers(spec: str) -> list[str]:
    """Explainer ids from ``--explainers``."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--explainers is empty: give explainer ids, e.g. native,gradcam")
    for n in names:
        EXPLAINERS.entry(n)  # raises with close matches
    return list(dict.fromkeys(names))


#: the model the default run's random reference row explains (the plain backbone)
REFERENCE_MODEL = "baseline"


def reference_rows(args: argparse.Namespace, names: list[str]) -> list[tuple[str, str]]:
    """The (method, explainer) rows added when ``--explainers`` is not given: the
    ``random`` explainer on :data:`REFERENCE_MODEL` (the first method when it is not
    run), the floor every explanation column is read against."""
    if args.explainers is not None or not names:
        return []
    return [(REFERENCE_MODEL if REFERENCE_MODEL in names else names[0], "random")]


def lineage(names: list[str]) -> set[str]:
    """The methods in ``names`` and every ``init_from`` ancestor they are trained from."""
    out: set[str] = set()
    for n in names:
        while n and n not in out:
            out.add(n)
            n = METHODS.entry(n).meta.get("init_from") or ""
    return out


def drop_unsupported(names: list[str], info: data.DatasetInfo, *, explicit: bool,
                     say: Any = print) -> list[str]:
    """Check, before any training, that the dataset has what each method needs: an
    explicitly requested method that cannot run is an error; ``all`` skips it."""
    keep = []
    for n in names:
        if METHODS.entry(n).meta.get("needs_boxes") and not info.has_boxes:
            if explicit:
                raise UserError(f"method {n!r} needs bounding boxes; dataset "
                                f"{info.name!r} has none")
            say(f"  skipping {n}: it needs bounding boxes and {info.name} has none")
            continue
        keep.append(n)
    if not keep:
        raise UserError(f"none of the requested methods can run on {info.name!r}")
    return keep


def _from(source: str) -> str:
    """`` [from SOURCE]`` for a plugin's entry, nothing for the project's own."""
    return "" if source == OWN else f"  [from {source}]"


def print_registries() -> None:
    print("methods:")
    for e in METHODS:
        parent = f" (from {e.meta['init_from']})" if e.meta.get("init_from") else ""
        print(f"  {e.name:<14}{parent:<18} {e.meta.get('description', '')}{_from(e.source)}")
    print("metrics:")
    for me in METRICS:
        arrow = "higher" if me.obj.higher_is_better else "lower"
        print(f"  {me.name:<18} {arrow:>6} is better  {me.obj.description}"
              f"{_from(me.source)}")
    print("datasets:")
    for d in sorted(data.DATASETS, key=lambda e: not e.meta.get("embedded")):
        where = "embedded (the default)" if d.meta.get("embedded") else "read from --data-dir"
        boxes = "boxes" if d.meta.get("has_boxes") else ("boxes optional"
                                                         if d.meta.get("has_boxes") is None
                                                         else "no boxes")
        print(f"  {d.name:<18} {where}, {boxes}{_from(d.source)}")
    print("explainers:")
    for x in EXPLAINERS:
        print(f"  {x.name:<14} {x.meta.get('description', '')}{_from(x.source)}")
    print("backbones:")
    for b in backbones.BACKBONES:
        desc = b.meta.get("description") or b.meta.get("split", "")
        print(f"  {b.name:<22} {b.meta.get('family', '')}: {desc}{_from(b.source)}")
    print("presets:")
    for name, spec in config_mod.PRESETS.items():
        what = spec.get("dataset", config_mod.RunConfig.dataset)
        bb = spec.get("backbone", config_mod.RunConfig.backbone)
        extra = " (needs --pretrained)" if spec.get("needs_pretrained") else ""
        print(f"  {name:<22} {what}, {bb}{extra}"
              f"{_from(config_mod.PRESET_SOURCES.get(name, OWN))}")
    for source, why in FAILED.items():
        print(f"not loaded: plugin {source} ({why})")


def check_method_settings(cfg: config_mod.RunConfig, config_file: str | None) -> None:
    """The per-method settings name registered methods and options they take, with
    values of the types their factories annotate; a method that trains nothing (a
    post-hoc explainer of its trained parent, registered with 0 epochs) has no
    schedule to set. The dataset's and backbone's options are typed the same way."""
    where = f"--config {shown_path(config_file)}" if config_file else f"preset {cfg.preset!r}"
    for m, mv in cfg.methods.items():
        if m not in METHODS:
            try:
                METHODS.entry(m)
            except UserError as err:
                at = f"methods.{m}: " if len(m) <= 40 else ""  # the error quotes it too
                raise UserError(f"{where} / --set: {at}{err}") from None
        if mv.get("train") and METHODS.entry(m).meta.get("train", {}).get("epochs") == 0:
            parent = METHODS.entry(m).meta.get("init_from")
            raise UserError(f"{where} / --set: methods.{m}.train: {m} trains nothing (it "
                            f"explains the trained {parent}); its schedule cannot be set")
        params = inspect.signature(METHODS.get(m)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for opt in mv.get("options", {}):
            if not takes_any and opt not in params:
                known = [n for n in params if n not in ("backbone", "info")]
                raise UserError(f"{where} / --set: methods.{m}.options.{clip(opt)}: {m} has "
                                f"no option {shown(opt)} (options: {', '.join(known) or 'none'})")
        config_mod.check_kwargs(METHODS.get(m), mv.get("options", {}), f"methods.{m}.options",
                                f"{where} / --set")
    config_mod.check_kwargs(data.DATASETS.get(cfg.dataset), cfg.dataset_kwargs,
                            "dataset_kwargs", f"{where} / --set")
    config_mod.check_kwargs(backbones.BACKBONES.get(cfg.backbone), cfg.backbone_kwargs,
                            "backbone_kwargs", f"{where} / --set")


def check_models(names: list[str], cfg: config_mod.RunConfig, split: data.Split) -> None:
    """Build every method to be trained (and its parents) once, untrained, so that a
    method or backbone option its factory refuses, or ``--pretrained`` weights that do
    not fit, are one line before any run record is written. The random state is left as
    it was (training seeds itself, but nothing here may move a number)."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        for name in sorted(lineage(names)):
            train.build_method(name, train.method_config(name, cfg), split,
                               **train.method_options(name, cfg))


def portable_options(cfg: config_mod.RunConfig) -> config_mod.RunConfig:
    """On another dataset than the preset's, keep only the carried-over options the
    dataset takes (a photo preset's crops mean nothing to CIFAR), saying which not."""
    preset = cfg.preset
    if cfg.dataset == cfg.preset_dataset:
        return cfg
    params = inspect.signature(data.DATASETS.get(cfg.dataset)).parameters
    kept = {k: v for k, v in cfg.dataset_kwargs.items() if k in params}
    dropped = sorted(set(cfg.dataset_kwargs) - set(kept))
    if dropped:
        print(f"note: {cfg.dataset} takes no {', '.join(dropped)}: preset {preset!r}'s "
              "values for them are not used", file=sys.stderr)
    return dataclasses.replace(cfg, dataset_kwargs=kept)


def resolve_workers(requested: int | None, cfg: config_mod.RunConfig) -> int:
    """Decoding processes: ``--workers``, else the preset's, else 0 for in-memory
    datasets and min(8, CPUs) for datasets decoded from files."""
    n = requested if requested is not None else cfg.workers
    if n is None:
        in_memory = data.DATASETS.entry(cfg.dataset).meta.get("in_memory", False)
        n = 0 if in_memory else min(8, os.cpu_count() or 1)
    if not 0 <= n <= config_mod.MAX_WORKERS:
        raise UserError(f"--workers must be an integer in [0, {config_mod.MAX_WORKERS}], "
                        f"got {clip(n)}")
    return n


def dry_run(args: argparse.Namespace, names: list[str], cfg: config_mod.RunConfig,
            build: Callable[[str], data.Split], device: torch.device, n_seeds: int) -> Path:
    """``--dry-run``: the plan and its time estimate, nothing trained or written."""
    from harness import dryrun

    info, sizes, official = dryrun.dataset_sizes(cfg, build)
    names = drop_unsupported(names, info, explicit=args.methods.strip() != "all")
    timed = names if not args.roar_fractions or roar.RETRAINED in names \
        else [*names, roar.RETRAINED]  # what --roar trains again is timed too
    plans = dryrun.plan(timed, cfg, info, sizes[0], sizes[1], device)
    rows = len(names) * len(resolve_explainers(args.explainers or "native")) \
        + len(reference_rows(args, names))
    dryrun.report(plans, cfg, info, sizes, official, device, n_seeds,
                  sanity=args.sanity_checks,
                  roar=None if not args.roar_fractions else dryrun.RoarPlan(
                      args.roar_fractions, rows, dryrun.imputation_seconds(
                          info, args.roar_fractions, device)))
    return Path(args.out)


def split_builder(args: argparse.Namespace, cfg: config_mod.RunConfig, cache: Path | None,
                  workers: int, kwargs: dict[str, Any]) -> Callable[[str], data.Split]:
    """``split -> Split`` of the run's dataset with these data options."""
    def build(split: str) -> data.Split:
        return data.build(cfg.dataset, split, cache_dir=cache, data_dir=args.data_dir,
                          num_workers=workers, **kwargs)

    return build


def check_data(args: argparse.Namespace, cfg: config_mod.RunConfig) -> Path:
    """``--check-data``: scan both splits, print the summary; problems raise."""
    from harness.data.check import scan

    workers = resolve_workers(args.workers, cfg)
    cache = None if args.no_cache else probe_writable(args.cache_dir, "--cache-dir")

    # every image is checked, whatever subset the preset would train on
    kwargs = {k: v for k, v in cfg.dataset_kwargs.items() if k not in ("n_train", "n_test")}

    build = split_builder(args, cfg, cache, workers, kwargs)
    summaries = scan(build, workers, progress=not args.no_progress)
    print(f"{cfg.dataset} ({', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'defaults'})")
    problems = [p for s in summaries for p in s.problems]
    for s in summaries:
        if s.images:
            print("\n".join(s.lines()))
    print(f"  problems: {len(problems) or 'none'}")
    for p in problems[:20]:
        print(f"    {p}")
    if len(problems) > 20:
        print(f"    ... and {len(problems) - 20} more")
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {cfg.dataset}; the first: "
                        f"{problems[0]}")
    return Path(args.out)


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args: argparse.Namespace) -> Path:
    """Check every option and path, then plan (``--dry-run``) or train, evaluate and
    report (see :func:`train_and_report`); returns the output folder."""
    from harness.sweep import parse_lambdas

    seeds = resolve_seeds(args.seed, args.seeds)
    sets = [*([f"backbone={args.backbone}"] if args.backbone is not None else []), *args.sets]
    cfg = portable_options(config_mod.resolve(args.preset, seed=seeds[0],
                                              dataset=args.dataset, config_file=args.config,
                                              sets=sets))
    check_method_settings(cfg, args.config)
    if args.data_dir is not None:
        args.data_dir = str(need_dir(args.data_dir, "--data-dir"))
    if args.compile:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, compile=True))
    if args.engine is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, engine=args.engine))
    dev.check_engine(cfg.eval.engine)  # before any work
    names = resolve_methods(args.methods, cfg.for_methods)
    explainers = sorted(resolve_explainers(args.explainers or "native"),
                        key=lambda e: e != "native")
    other = [n for n in names if cfg.for_methods and n not in cfg.for_methods]
    if other:  # asked for by name: run, but not silently under another paper's protocol
        print(f"note: preset {cfg.preset!r} follows the protocol of "
              f"{', '.join(cfg.for_methods)}; {', '.join(other)} will train under its "
              "schedule", file=sys.stderr)
    if args.reference is not None:
        METHODS.entry(args.reference)  # raises with close matches
        if args.reference not in names:
            raise UserError(f"--reference {shown(args.reference)} is not among the methods "
                            "of this run")
    sweep_on = args.cr_sweep is not None
    lambdas = parse_lambdas(args.cr_sweep) if sweep_on else None
    args.sanity_checks = resolve_sanity(args.sanity)
    args.roar_fractions = None if args.roar is None else roar.parse_fractions(args.roar)
    if args.check_data:
        return check_data(args, cfg)
    if args.pretrained is not None:  # a readable state dict of finite tensors, before any work
        weights = str(need_file(args.pretrained, "--pretrained", "state dict file"))
        backbones.read_state_dict(weights)
        cfg = dataclasses.replace(cfg, pretrained=weights)
    elif cfg.needs_pretrained:
        raise UserError(f"preset {cfg.preset!r} starts from ImageNet weights: give "
                        f"--pretrained FILE (a local timm / torchvision {cfg.backbone} "
                        "state dict)")
    workers = resolve_workers(args.workers, cfg)
    cfg = dataclasses.replace(cfg, workers=workers)
    world = distributed.init(args.device, sync_bn=args.sync_bn)
    if args.sync_bn and world.size == 1:
        print("note: --sync-bn has no effect in one process (start the run with torchrun)",
              file=sys.stderr)
    device = dev.select(distributed.device(args.device))
    cfg = dataclasses.replace(cfg, precision=dev.resolve_precision(args.precision, device))
    eval_precision = dev.resolve_precision(cfg.eval.precision, device)
    if not args.dry_run:  # where results and checkpoints go: writable, before any work
        args.out = probe_writable(args.out, "--out")
        check_db_path(args.db, args.out)
    cache = None if args.no_cache or args.dry_run else probe_writable(args.cache_dir,
                                                                      "--cache-dir")
    if args.dry_run:
        return plan_run(args, cfg, names, seeds, device, eval_precision, world, cache)
    with open_store(args.db) as store:
        return train_and_report(args, cfg, names, explainers, seeds, lambdas, device,
                                eval_precision, world, cache, store)


@contextlib.contextmanager
def open_store(db: str | Path) -> Iterator[store_mod.Store | None]:
    """The results store, opened (and refused) now, not after the training: rank 0
    holds it, the other ranks get None; a refusal is raised on every rank (none waits
    for a rank that has stopped)."""
    opened: list[store_mod.Store] = []
    distributed.share(lambda: opened.append(store_mod.Store(db)))
    try:
        yield opened[0] if opened else None
    finally:
        for st in opened:
            st.close()


def plan_run(args: argparse.Namespace, cfg: config_mod.RunConfig, names: list[str],
             seeds: list[int], device: torch.device, eval_precision: str,
             world: distributed.World, cache: Path | None) -> Path:
    """``--dry-run``: the banner, then the plan and its time estimate."""
    announce(args, cfg, names, seeds, device, eval_precision, world)
    build = split_builder(args, cfg, cache, cfg.workers or 0, cfg.dataset_kwargs)
    return dry_run(args, names, cfg, build, device, len(seeds))


def announce(args: argparse.Namespace, cfg: config_mod.RunConfig, names: list[str],
             seeds: list[int], device: torch.device, eval_precision: str,
             world: distributed.World) -> None:
    """The run's first line (with progress output on rank 0)."""
    if args.no_progress or not world.main:
        return
    seeds_txt = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"
    print(f"attnbench: {len(names)} methods on {cfg.dataset} ({cfg.preset}), "
          f"backbone {cfg.backbone}, device {device}, training in {cfg.precision}, "
          f"evaluation in {eval_precision}, {seeds_txt}")


def check_db_path(db: str | Path, out: Path) -> Path:
    """``--db`` is not one of the run's outputs (which would replace it), and its folder
    takes files; returns it.

    Raises:
        UserError: an empty path, an output's path, an unwritable folder.
    """
    from reports.leaderboard import OUTPUTS

    if not str(db).strip():
        raise UserError("--db is empty: give the results database's path")
    path = Path(db).expanduser()
    clash = output_clash(path, out, [*OUTPUTS.values(), ERROR_LOG])
    if clash:
        raise UserError(f"--db {shown_path(path)} is one of the run's outputs (--out "
                        f"{shown_path(out)} writes {clash} there): give the results "
                        "database another path")
    probe_writable(path.parent, "--db's folder")
    return path


def train_and_report(args: argparse.Namespace, cfg: config_mod.RunConfig, names: list[str],
                     explainers: list[str], seeds: list[int], lambdas: list[float] | None,
                     device: torch.device, eval_precision: str, world: distributed.World,
                     cache: Path | None, store: store_mod.Store | None) -> Path:
    """Build the splits, train and evaluate every row into ``store`` (rank 0; the other
    ranks pass None), write the reports."""
    from harness.analysis import STABLE_TAU
    from reports.leaderboard import write_all

    workers = cfg.workers or 0
    sweep_on = args.cr_sweep is not None
    t_start = time.perf_counter()
    say = print if not args.no_progress and world.main else (lambda *a, **k: None)
    announce(args, cfg, names, seeds, device, eval_precision, world)
    build = split_builder(args, cfg, cache, workers, cfg.dataset_kwargs)
    with distributed.main_first():  # rank 0 fills a dataset cache before the others read it
        train_split, test_split = build("train"), build("test")
    names = drop_unsupported(names, test_split.info, explicit=args.methods.strip() != "all",
                             say=print)  # a result: shown without progress output too
    if sweep_on and not test_split.info.has_boxes:
        raise UserError(f"--cr-sweep needs bounding boxes; dataset {test_split.info.name!r} "
                        "has none")
    meta_run: dict[str, Any] = {
        "dataset": cfg.dataset, "preset": cfg.preset, "backbone": cfg.backbone,
        "seeds": seeds, "device": str(device), "precision": cfg.precision,
        "eval_precision": eval_precision, "explainers": explainers,
        "world_size": world.size, "backend": world.backend, "sync_bn": world.sync_bn,
        "reference": args.reference,
        "sanity": args.sanity_checks,
        **({"label_permutation_seed": cfg.eval.lens_seed}
           if "data" in args.sanity_checks else {}),
        **({"roar": {"fractions": list(args.roar_fractions), "retrained": roar.RETRAINED,
                     "noise": cfg.eval.road_noise, "seed": cfg.eval.lens_seed}}
           if args.roar_fractions else {}),
        "test_split_id": evalcache.split_id(test_split, cfg.dataset_kwargs),
        "protocol": "rise (insertion: blur 11/5 substrate; deletion: zero substrate; "
                    "predicted class; softmax score; one row of pixels per step; "
                    "maps min-max normalised per image for localisation; "
                    f"training in {cfg.precision}, evaluation forward passes in "
                    f"{eval_precision}, explanations in fp32; {world.size} process"
                    f"{'es' if world.size > 1 else ''}"
                    f"{f' ({world.backend})' if world.size > 1 else ''})"
                    + ("; data randomisation: every method trained again, same schedule "
                       f"and seed, on the training labels permuted with seed "
                       f"{cfg.eval.lens_seed}" if "data" in args.sanity_checks else "")
                    + (f"; ROAR / KAR: {roar.RETRAINED} trained again on the images with "
                       "the top t of each row's map (ground-truth class) removed or kept "
                       "alone, imputed as ROAD's (noise "
                       f"{cfg.eval.road_noise:g}), t = "
                       + ", ".join(f"{100 * t:g} %" for t in args.roar_fractions)
                       if args.roar_fractions else ""),
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "workers": workers, "pretrained": cfg.pretrained,
        "pretrained_sha256": train.file_digest(cfg.pretrained) if cfg.pretrained else None,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "git_rev": git_rev(), "torch": str(torch.__version__),
        "python": platform.python_version()}
    check_models(names, cfg, train_split)
    if store is None:  # rank 0 holds the store and writes the reports
        evaluate_all(args, cfg, names, explainers, seeds, lambdas, train_split, test_split,
                     device, cache, None, 0, meta_run, eval_precision, t_start, say)
        return Path(args.out)
    run_id = store.begin_run(meta=meta_run, config=cfg.to_dict(), argv=sys.argv[1:])
    try:
        record = evaluate_all(args, cfg, names, explainers, seeds, lambdas, train_split,
                              test_split, device, cache, store, run_id, meta_run,
                              eval_precision, t_start, say)
    except KeyboardInterrupt:
        mark(store, run_id, "interrupted")
        raise
    except BaseException as err:
        mark(store, run_id, "failed", quiet=isinstance(err, store_mod.StoreError))
        raise
    if len(seeds) > 1:  # a result, printed also without progress output
        print("ranking stability (mean Kendall tau between the seeds' rankings):")
        for metric, tau in record.analysis.stability.items():
            flag = "" if tau >= STABLE_TAU else "  (not stable)"
            print(f"  {metric:<22} {tau:+.3f}{flag}")
    paths = write_all(record, args.out)
    say(f"wrote {paths['csv']} and {paths['html']} (run {run_id} in {args.db}) in "
        f"{time.perf_counter() - t_start:.0f}s")
    return Path(args.out)


def evaluate_all(args: argparse.Namespace, cfg: config_mod.RunConfig, names: list[str],
                 explainers: list[str], seeds: list[int], lambdas: list[float] | None,
                 train_split: data.Split, test_split: data.Split, device: torch.device,
                 cache: Path | None, store: store_mod.Store | None, run_id: int,
                 meta_run: dict[str, Any], eval_precision: str, t_start: float,
                 say: Callable[..., None]) -> Any:
    """Train (or load) and evaluate every (method, explainer, seed) into run ``run_id``
    of ``store``; returns the run's report record, read back from the store. Under
    torchrun the other ranks than 0 pass no store: they train and score with rank 0
    and return None."""
    from harness.analysis import default_references
    from harness.report import build_record
    from harness.sweep import run_cr_sweep

    progress = not args.no_progress and distributed.current().main
    memo: dict[str, train.Trained] = {}
    results: list[MethodResult] = []
    method_meta: dict[str, dict[str, Any]] = {}
    n_comb: dict[int, int] = {}
    split_key = meta_run["test_split_id"]
    read = cache is not None
    n_read = n_parts = 0
    told: set[tuple[str, str]] = set()
    digests: dict[str, str] = {}  # checkpoint key -> weights digest (fixed during a run)

    def digest_of(trained: train.Trained) -> str:
        if trained.key not in digests:
            digests[trained.key] = evalcache.weights_digest(trained.method)
        return digests[trained.key]

    def note(name: str, explainer: str, why: str) -> None:
        if (name, explainer) not in told:
            say(f"  no {name}+{explainer} row: {why}")
            told.add((name, explainer))

    # the data-randomisation test's training split: labels permuted once
    permuted_split = (data.permuted_labels(train_split, cfg.eval.lens_seed)
                      if "data" in args.sanity_checks else None)
    for seed in seeds:
        scfg = dataclasses.replace(cfg, seed=seed)
        comb_subset = None
        if scfg.comb_reference in lineage(names):  # the comb insertion protocol's images
            ref = train.obtain(scfg.comb_reference, scfg, train_split, device, cache,
                               progress=progress, _memo=memo)
            comb_subset = evalcache.misclassified_cached(
                store, ref.method, test_split, device, split_key=split_key, read=read,
                weights=digest_of(ref),
                batch_size=scfg.eval.batch_size, precision=eval_precision)
            n_comb[seed] = int(comb_subset.sum())
        # (weights, explainer) pairs already in a row: a model explained the same way
        # twice (cam and gradcam load baseline's weights) is one row
        made: dict[tuple[str, str], str] = {}
        plan = [(n, e) for e in explainers for n in names]  # the methods' own rows first
        plan += reference_rows(args, names)
        for i, (name, explainer) in enumerate(plan):
            t0 = time.perf_counter()
            trained = train.obtain(name, scfg, train_split, device, cache, progress=progress,
                                   _memo=memo)
            digest = digest_of(trained)
            kind = (native_equivalent(trained.method) or f"native:{name}"
                    if explainer == "native" else explainer)
            if (digest, kind) in made:
                note(name, explainer, f"the same model and explanation as {made[digest, kind]}")
                continue
            if explainer != "native":
                try:
                    build_explainer(explainer, trained.method)
                except NotApplicable as why:
                    note(name, explainer, str(why))
                    continue
            made[digest, kind] = row_id(name, explainer)
            done = i + len(plan) * seeds.index(seed)
            total = len(plan) * len(seeds)
            elapsed = t0 - t_start
            eta = (f", ETA {duration(elapsed / done * (total - done))}" if done else "")
            what = (("method", "") if explainers == ["native"] and len(plan) == len(names)
                    else ("row", "at most "))
            say(f"{what[0]} {done + 1} of {what[1]}{total}: {row_id(name, explainer)} (seed "
                f"{seed}), elapsed {duration(elapsed)}{eta}", flush=True)
            shadow = None
            if permuted_split is not None:  # --sanity data: trained again, or cached
                shadow = train.obtain(name, scfg, permuted_split, device, cache,
                                      progress=progress, _memo=memo)
            res, keys, n_hit = evalcache.evaluate_cached(
                store, trained.method, name, test_split, trained.cfg.eval, device,
                checkpoint=trained.key, split_key=split_key, read=read, explainer=explainer,
                seed=seed, comb_subset=comb_subset, precision=eval_precision,
                progress=progress, weights=digest,
                permuted=None if shadow is None else shadow.method,
                permuted_weights="" if shadow is None else digest_of(shadow))
            if args.roar_fractions:
                res, rkeys, r_hit = roar.roar_row(
                    res, trained.method, explainer, cfg=scfg, train_split=train_split,
                    test_split=test_split, protocol=roar.Protocol(
                        args.roar_fractions, trained.cfg.eval.road_noise,
                        trained.cfg.eval.lens_seed, trained.cfg.eval.batch_size,
                        eval_precision),
                    device=device, cache=cache, store=store, read=read, weights=digest,
                    split_key=split_key, progress=progress, memo=memo, say=say)
                keys = {**keys, **rkeys}
                n_hit += r_hit
            n_read += n_hit
            n_parts += len(keys)
            meta = METHODS.entry(name).meta
            if explainer == "native":
                row_meta = {"paper": meta.get("paper", ""),
                            "description": meta.get("description", ""),
                            "explainer": meta.get("explainer", "native"),
                            "reference": bool(meta.get("reference", False))}
            else:
                xm = EXPLAINERS.entry(explainer).meta
                row_meta = {"paper": xm.get("paper", ""),
                            "description": f"{xm.get('description', explainer)}, applied "
                                           f"to the trained {name}",
                            "explainer": explainer,
                            "reference": bool(xm.get("reference", False))}
            mm = method_meta.setdefault(res.row, {
                "method": name, **row_meta, "init_from": meta.get("init_from"),
                "train": trained.cfg.to_dict()["train"],
                "parameter_groups": [g for g, _ in trained.method.parameter_groups()],
                **({"roar_fractions": {mode: list(roar.axis(mode, args.roar_fractions))
                                       for mode in roar.MODES}}
                   if args.roar_fractions else {}),
                "seeds": {}})
            mm["seeds"][seed] = {"key": trained.key, "cached": trained.cached,
                                 "train_seconds": round(trained.train_seconds, 2),
                                 "facts": trained.facts, "history": trained.history,
                                 "eval_cached": n_hit == len(keys),
                                 **({"permuted": {
                                     "key": shadow.key, "cached": shadow.cached,
                                     "train_seconds": round(shadow.train_seconds, 2),
                                     "history": shadow.history}} if shadow else {}),
                                 **({"causal_passes": res.causal_passes}
                                    if res.causal_passes else {})}
            if store is not None:
                store.add_row(run_id, res, checkpoint_key=trained.key, eval_keys=keys,
                              method_meta=method_meta)
            results.append(res)
            how = "cached" if trained.cached else f"trained {trained.train_seconds:.0f}s"
            if shadow is not None:
                how += (", on permuted labels " + ("cached" if shadow.cached
                                                   else f"trained {shadow.train_seconds:.0f}s"))
            if n_hit:
                how += ", evaluation cached" if n_hit == len(keys) else (
                    f", {n_hit} of {len(keys)} evaluation parts cached")
            say(f"  {res.row:<16} seed {seed}  "
                f"top1 {res.values.get('top1', float('nan')):.3f}  "
                f"ins {res.values.get('insertion_auc', float('nan')):.3f}  "
                f"del {res.values.get('deletion_auc', float('nan')):.3f}  "
                f"({how}, {time.perf_counter() - t0:.0f}s)")
    if not results:
        raise UserError("no (method, explainer) row to evaluate: every requested "
                        "explainer is the methods' own or does not fit them")
    for mm in method_meta.values():  # the run-level view of each row's seeds
        runs = list(mm["seeds"].values())
        mm.update(key=",".join(r["key"] for r in runs), cached=all(r["cached"] for r in runs),
                  train_seconds=round(sum(r["train_seconds"] for r in runs), 2),
                  facts=runs[0]["facts"])
    if n_parts:
        say(f"evaluation: {n_read} of {n_parts} parts read from the store, "
            f"{n_parts - n_read} computed")
    sweep = None
    if args.cr_sweep is not None:
        say("copy-replace sweep over lambda_out = "
            + (", ".join(f"{v:g}" for v in lambdas) if lambdas else "auto"))
        sweep = run_cr_sweep(lambdas, cfg, train_split, test_split, device, cache,
                             progress=progress, memo=memo, say=say)
    if store is None:
        return None
    for missing in sorted(set(default_references(results, args.reference).values())):
        if missing not in method_meta:
            say(f"  no paired comparisons against {missing}: it is not among the rows")
    n_gal = min(cfg.eval.gallery_n, len(test_split))
    samples = [test_split.dataset[i] for i in range(n_gal)]
    extras: dict[str, np.ndarray] = {}
    if samples:
        images = torch.stack([s["image"] for s in samples])
        extras = {"gallery_images": data.denormalize(images, test_split.info)
                  .permute(0, 2, 3, 1).numpy(),
                  "gallery_labels": np.array([s["label"] for s in samples])}
    for b in ("bbox", *test_split.info.extra_boxes):
        if samples and b in samples[0]:
            extras[f"box_{b}"] = np.stack([s[b].numpy() for s in samples])
    passes = passes_by_kind(results)
    if passes:  # how the causal metrics' forward passes ran, on the protocol line too
        meta_run = dict(meta_run, causal_passes=passes,
                        protocol=f"{meta_run['protocol']}; causal forward passes: "
                                 f"{describe_passes(passes)}")
    meta_run = dict(meta_run, n_test=results[0].n_test, n_causal=results[0].n_causal,
                    comb_reference=cfg.comb_reference if n_comb else None,
                    n_comb=n_comb or None,
                    no_boxes="" if test_split.info.has_boxes else ", ".join(
                        e.name for e in METRICS if e.obj.needs_boxes),
                    wall_seconds=round(time.perf_counter() - t_start, 1))
    pv = paper_values.for_run(cfg.preset, cfg.dataset, cfg.backbone, cfg.preset_dataset,
                              cfg.preset_backbone)
    store.finish_run(run_id, status="running", meta=meta_run, method_meta=method_meta,
                     extras=extras, paper_values=[dataclasses.asdict(p) for p in pv],
                     cr_sweep=None if sweep is None else dataclasses.asdict(sweep))
    (run,) = store.runs(run_ids=[run_id], status=None)
    record = build_record(store, [run], store.rows([run_id]), reference=args.reference)
    store.finish_run(run_id, status="done", estimates=[
        (row.method, metric, e.value, e.lo, e.hi, e.seed_sd)
        for row in record.analysis.rows for metric, e in row.estimates.items()])
    return record


def passes_by_kind(results: Sequence[MethodResult]) -> dict[str, dict[str, Any]]:
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


def mark(store: store_mod.Store, run_id: int, status: str, *, quiet: bool = False) -> None:
    """Record why a run stopped, without hiding the error that stopped it (``quiet``:
    that error is the store's own, already one line naming it)."""
    try:  # after an interrupt, briefly: a container runtime kills the process soon
        store.set_status(run_id, status, wait=5.0 if status == "interrupted" else 120.0)
    except Exception as err:  # the store may be what failed: say so, keep the cause
        if not quiet:
            print(f"warning: could not mark run {run_id} {status} in {store.path}: "
                  f"{message(err) if isinstance(err, UserError) else err}", file=sys.stderr)


#: the log an unexpected error's traceback goes to (in --out)
ERROR_LOG = "attnbench-error.log"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit 0 on success, 2 on bad input or data (one line, also for a
    bad option value), 1 on an unexpected error (one line; the traceback in ``--out``'s
    error log, or printed with ``--debug``), 130 when interrupted (Ctrl-C), 143 when
    terminated (SIGTERM)."""
    with cli.terminate_as_interrupt():
        try:
            args = parse_args(argv)
        except cli.ArgumentError as err:
            print(f"error: {clip(err, 240)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as stop:
            print(cli.interrupted_line(stop), file=sys.stderr)
            return cli.exit_status(stop)
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        plugins.load(args.include)
        evalcache.warm()  # the code of every registered name, hashed before it runs
        if args.list:
            print_registries()
            return 0
        run(args)
        distributed.finish()
    except UserError as err:
        print(f"error: {message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        training = not (args.list or args.dry_run or args.check_data)
        print(cli.interrupted_line(stop) + (": finished checkpoints are kept; rerun to "
                                            "resume" if training else ""), file=sys.stderr)
        return cli.exit_status(stop)
    except Exception as err:  # anything else: one line, the traceback kept
        if args.debug:
            traceback.print_exc()
        else:
            where = write_error_log(args.out)
            what = clip(f"{type(err).__name__}: {err}".splitlines()[0], 240)
            print(f"error: {what} (full traceback in {where}; --debug prints it)",
                  file=sys.stderr)
        return 1
    return 0


def write_error_log(out: str | Path) -> Path:
    """The current exception's traceback in ``out`` (or the temporary directory when
    ``out`` cannot take it); returns the log's path."""
    text = f"{_dt.datetime.now().isoformat(timespec='seconds')} attnbench {' '.join(sys.argv)}\n"
    text += traceback.format_exc()
    for folder in (Path(str(out) or ".").expanduser(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / ERROR_LOG
            if is_database(path):  # never over a store given as --db OUT/attnbench-error.log
                continue
            path.write_text(text, encoding="utf-8", errors="replace")
            return path.resolve()
        except Exception:  # the log is best effort: try the next folder
            continue
    return Path("(nowhere: no writable directory)")


if __name__ == "__main__":
    sys.exit(main())

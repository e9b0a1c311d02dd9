"""Command line: train (or load) every requested method, evaluate, write leaderboards.

    python -m harness.run --methods all                 # into runs/DATE-PRESET-DATASET/
    python -m harness.run --methods all --seeds 3
    python -m harness.run --methods abn,cam --preset smoke --out runs/smoke
    python -m harness.run --methods msabn-cr --cr-sweep 0,0.2,0.4
    python -m harness.run --include examples/new_method.py --methods baseline,gate
    python -m harness.run --list

A thin layer over the Python API (:mod:`harness.api`): the options become a
:class:`~harness.planning.Request`, checked into a plan, then executed (or listed,
scanned, estimated).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from harness import cli

if __name__ == "__main__":  # SIGTERM while the libraries load is Ctrl-C too
    cli.install_sigterm()

try:  # Ctrl-C or SIGTERM while the libraries load (seconds): one line, not a traceback
    import metrics  # noqa: F401  (registers metrics)
    from harness import backbones, data, distributed, evalcache, plugins, runfolder
    from harness import config as config_mod
    from harness import device as dev
    from harness import store as store_mod
    from harness.errors import UserError, clip, message
    from harness.execution import execute
    from harness.planning import (  # noqa: F401  (the names tests and tools import from here)
        DEFAULT_CACHE,
        ERROR_LOG,
        REFERENCE_MODEL,
        Request,
        check_data,
        drop_unsupported,
        dry_run,
        lineage,
        make_plan,
        portable_options,
        resolve_methods,
        resolve_seeds,
    )
    from harness.registry import FAILED, OWN
    from harness.safeio import is_database
    from methods.base import METHODS
    from methods.explainers import EXPLAINERS
    from metrics.base import METRICS
except KeyboardInterrupt as stop:  # pragma: no cover - timing-dependent, tested in a subprocess
    print(f"{cli.interrupted_line(stop)} while starting", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # not sys.exit: the interpreter's shutdown, with imports left half done, once ended
    # the process by SIGINT (status -2) after this line was printed; os._exit returns
    # 130 (143 for SIGTERM) whatever they left, and nothing is open or written yet
    os._exit(cli.exit_status(stop))

#: the entry-point group of installed plugins (:mod:`harness.plugins`)
PLUGIN_GROUP = plugins.GROUP


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (also what the documentation's command-line page is
    generated from)."""
    p = cli.Parser(prog="python -m harness.run",
                   description="Train and compare visual-explanation methods.")
    p.add_argument("--methods", default=None,
                   help="comma-separated method ids, or 'all' (the default, unless --model "
                        "is given)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]SPEC",
                   dest="models",
                   help="a model trained elsewhere, evaluated by the explainers without "
                        "training: a TorchScript or torch.export file, a state dict of "
                        "--backbone, or module:function / file.py:function returning an "
                        "nn.Module (repeatable; its rows beside the methods')")
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
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, used as given (default: a new folder of the "
                        "run's own, runs/DATE-PRESET-DATASET, with -2, -3, ... when taken; "
                        "runs/latest then links to the newest finished one)")
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
                        "and a log file in the output folder)")
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
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
        where = ("read from --data-dir" if not d.meta.get("embedded") else
                 "embedded (the default)" if d.name == config_mod.RunConfig.dataset
                 else "embedded")
        boxes = "boxes" if d.meta.get("has_boxes") else ("boxes optional"
                                                         if d.meta.get("has_boxes") is None
                                                         else "no boxes")
        labels = ", multi-label" if d.meta.get("multi_label") else ""
        print(f"  {d.name:<18} {where}, {boxes}{labels}{_from(d.source)}")
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


def request(args: argparse.Namespace) -> Request:
    """The command line's options as the API's :class:`Request`."""
    return Request(
        methods=args.methods, explainers=args.explainers, models=tuple(args.models),
        dataset=args.dataset,
        backbone=args.backbone, data_dir=args.data_dir, preset=args.preset,
        config=args.config, sets=tuple(args.sets), seed=args.seed, seeds=args.seeds,
        reference=args.reference, pretrained=args.pretrained, workers=args.workers,
        out=args.out, db=args.db, cache_dir=args.cache_dir, no_cache=args.no_cache,
        device=args.device, precision=args.precision, engine=args.engine,
        compile=args.compile, sync_bn=args.sync_bn, sanity=args.sanity, roar=args.roar,
        cr_sweep=args.cr_sweep, progress=not args.no_progress)


def run(args: argparse.Namespace) -> Path:
    """Check every option and path, then scan the data (``--check-data``), plan
    (``--dry-run``) or train, evaluate and report; returns the output folder."""
    req = request(args)
    if args.check_data:
        return check_data(req)
    plan = make_plan(req, dry_run=args.dry_run)
    if args.dry_run:  # nothing written: a dry run's folder is only named
        return dry_run(plan)
    args.out = str(plan.out)  # where the error log goes: the run's folder
    execute(plan)
    return plan.out


#: the log an unexpected error's traceback goes to (in --out)
ERROR_LOG = "attnbench-error.log"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit 0 on success, 2 on bad input or data (one line, also for a
    bad option value), 1 on an unexpected error (one line; the traceback in the output folder's
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
            where = write_error_log(runfolder.RUNS if args.out is None else args.out)
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

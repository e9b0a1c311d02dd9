"""Planning: what a user asks for (a :class:`Request`, the command line's options or
:func:`harness.plan`'s arguments) checked up front and resolved into a :class:`Plan`.

Everything that can be wrong with a request is found here, before any training or any
run record: names (with close matches), settings and their types, files, the engine,
the output folder and the store's path. Nothing is trained or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import backbones, data, distributed, external, roar, runfolder, train
from harness import config as config_mod
from harness import device as dev
from harness import store as store_mod
from harness.errors import UserError, clip, shown, shown_path
from harness.external import ModelSpec
from harness.safeio import need_dir, need_file, output_clash, probe_writable
from methods.base import METHODS
from methods.explainers import EXPLAINERS

#: the checkpoint cache when none is given
DEFAULT_CACHE = Path(os.environ.get("ATTNBENCH_CACHE", ".attnbench-cache"))
#: the log an unexpected error's traceback goes to (in the output folder)
ERROR_LOG = "attnbench-error.log"
#: seeds are numpy/torch generator seeds
MAX_SEED = 2**32
#: seeds one run trains and evaluates (each trains every method again)
MAX_SEEDS = 1000
#: the opt-in sanity checks of ``--sanity``
SANITY_CHECKS = ("data",)
#: the model the default run's random reference row explains (the plain backbone)
REFERENCE_MODEL = "baseline"

Names = str | Sequence[str]


@dataclass(frozen=True)
class Request:
    """What a run is asked to do, as given (the command line's options; lists may be
    comma-separated strings). :func:`make_plan` checks and resolves it."""

    #: method ids or ``all``; None: ``all``, or none when ``models`` are given
    methods: Names | None = None
    explainers: Names | None = None
    #: models trained elsewhere (``--model``: ``[NAME=]FILE`` or ``module:function``)
    models: Sequence[str] = ()
    dataset: str | None = None
    backbone: str | None = None
    data_dir: str | None = None
    preset: str = "default"
    config: str | None = None
    sets: Sequence[str] = ()
    seed: int | None = None
    seeds: int | Sequence[int] | str | None = None
    reference: str | None = None
    pretrained: str | None = None
    workers: int | None = None
    #: the output folder; None: a new folder of the run's own under ``runs/``
    #: (:mod:`harness.runfolder`), ``runs/latest`` pointed at it once the run is done
    out: str | Path | None = None
    db: str | Path = field(default_factory=lambda: str(store_mod.default_path()))
    cache_dir: str | Path = str(DEFAULT_CACHE)
    no_cache: bool = False
    device: str = "auto"
    precision: str = "auto"
    engine: str | None = None
    compile: bool = False
    sync_bn: bool = False
    sanity: Names | None = None
    roar: str | Sequence[float] | None = None
    cr_sweep: str | Sequence[float] | None = None
    progress: bool = True


@dataclass(frozen=True)
class Plan:
    """A checked request: the resolved configuration, the methods in order, the rows'
    explainers, the seeds, the opt-in checks and where everything goes."""

    request: Request
    cfg: config_mod.RunConfig
    methods: tuple[str, ...]
    explainers: tuple[str, ...]
    #: the ``--model`` rows' names and sources (loaded when the run starts)
    models: tuple[ModelSpec, ...]
    seeds: tuple[int, ...]
    sanity: tuple[str, ...]
    roar: tuple[float, ...] | None
    #: run-level extras by name (:data:`harness.hooks.RUN_EXTRAS`) and their argument
    extras: dict[str, Any]
    device: torch.device
    eval_precision: str
    world: distributed.World
    cache: Path | None
    out: Path
    db: Path
    #: the methods were named (not ``all``): one that cannot run is an error
    explicit: bool
    #: ``out`` is the run's own new folder under ``runs/`` (no ``--out`` given): removed
    #: when the run stops before writing anything, ``runs/latest`` pointed at it after
    own_folder: bool = False

    @property
    def progress(self) -> bool:
        """Progress output: asked for, and this is the main process."""
        return self.request.progress and self.world.main

    def rows(self, methods: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """One seed's (method, explainer) rows of ``methods`` (default: the plan's) in
        order: every method's own rows first, then each other explainer's, then the
        models' (every explainer but ``native``; ``gradcam`` when none were asked for),
        then the random reference row when no explainers were asked for (rows that turn
        out to be the same model explained the same way are dropped when run)."""
        names = list(self.methods if methods is None else methods)
        given = self.request.explainers is not None
        models = [m.name for m in self.models]
        model_explainers = [e for e in self.explainers if e != "native"] if given \
            else ["gradcam"]
        return ([(n, e) for e in self.explainers for n in names]
                + [(m, e) for e in model_explainers for m in models]
                + reference_rows(given, names or models))


def _csv(value: Names | Sequence[float] | int | bool | None, flag: str = "auto"
         ) -> str | None:
    """A list as the command line's comma-separated string (None and strings as they
    are; True: a bare flag's ``flag``)."""
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return flag
    if isinstance(value, int):
        return str(value)
    return ",".join(str(v) for v in value)


def _given(value: str | None, default: str) -> str:
    return default if value is None else value


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


def reference_rows(explainers_given: bool, names: Sequence[str]) -> list[tuple[str, str]]:
    """The (method, explainer) rows added when no explainers are given: the ``random``
    explainer on :data:`REFERENCE_MODEL` (the first method when it is not run), the
    floor every explanation column is read against."""
    if explainers_given or not names:
        return []
    return [(REFERENCE_MODEL if REFERENCE_MODEL in names else names[0], "random")]


def lineage(names: Sequence[str]) -> set[str]:
    """The methods in ``names`` and every ``init_from`` ancestor they are trained from."""
    out: set[str] = set()
    for n in names:
        while n and n not in out:
            out.add(n)
            n = METHODS.entry(n).meta.get("init_from") or ""
    return out


def drop_unsupported(names: Sequence[str], info: data.DatasetInfo, *, explicit: bool,
                     say: Callable[..., None] = print, models: int = 0) -> list[str]:
    """Check, before any training, that the dataset has what each method needs: an
    explicitly requested method that cannot run is an error; ``all`` skips it. A
    multi-label dataset is refused unless a method takes multi-label targets (its
    registry entry says ``multi_label``): the others would train on ``label`` alone."""
    if info.multi_label:
        able = [n for n in names if METHODS.entry(n).meta.get("multi_label")]
        unable = [n for n in names if n not in able]
        if models:
            raise UserError(f"multi-label dataset {info.name!r}: --model models are "
                            "scored on single labels only")
        if unable and explicit:
            supported = ", ".join(e.name for e in METHODS if e.meta.get("multi_label"))
            raise UserError(f"method {unable[0]!r} does not take multi-label targets, which "
                            f"dataset {info.name!r} has; methods that do: {supported}")
        for n in unable:
            say(f"  skipping {n}: it does not take the multi-label targets of {info.name}")
        names = able
    keep = []
    for n in names:
        if METHODS.entry(n).meta.get("multi_task") and not info.multi_label and not explicit:
            say(f"  skipping {n}: a multi-task method, run with --methods all on multi-label "
                f"data only (name it to run it on {info.name})")
            continue
        if METHODS.entry(n).meta.get("needs_boxes") and not info.has_boxes:
            if explicit:
                raise UserError(f"method {n!r} needs bounding boxes; dataset "
                                f"{info.name!r} has none")
            say(f"  skipping {n}: it needs bounding boxes and {info.name} has none")
            continue
        keep.append(n)
    if not keep and not models:
        raise UserError(f"none of the requested methods can run on {info.name!r}")
    return keep


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
        _check_options(m, mv.get("options", {}), where)
    config_mod.check_kwargs(data.DATASETS.get(cfg.dataset), cfg.dataset_kwargs,
                            "dataset_kwargs", f"{where} / --set")
    config_mod.check_kwargs(backbones.BACKBONES.get(cfg.backbone), cfg.backbone_kwargs,
                            "backbone_kwargs", f"{where} / --set")


def _check_options(method: str, options: dict[str, Any], where: str) -> None:
    params = inspect.signature(METHODS.get(method)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for opt in options:
        if not takes_any and opt not in params:
            known = [n for n in params if n not in ("backbone", "info")]
            raise UserError(f"{where} / --set: methods.{method}.options.{clip(opt)}: "
                            f"{method} has no option {shown(opt)} (options: "
                            f"{', '.join(known) or 'none'})")
    config_mod.check_kwargs(METHODS.get(method), options, f"methods.{method}.options",
                            f"{where} / --set")


def check_models(names: Sequence[str], cfg: config_mod.RunConfig, split: data.Split) -> None:
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


def resolve_config(req: Request, seeds: Sequence[int], *, weights: bool = True
                   ) -> config_mod.RunConfig:
    """The run's configuration: the preset (or ``--config``), ``--backbone``,
    ``--set``, ``--dataset``, ``--compile`` / ``--engine``, ``--pretrained`` (unless
    ``weights`` is False: nothing is built), ``--workers``; each setting checked
    against what it configures."""
    sets = [*([f"backbone={req.backbone}"] if req.backbone is not None else []), *req.sets]
    cfg = portable_options(config_mod.resolve(req.preset, seed=seeds[0], dataset=req.dataset,
                                              config_file=req.config, sets=sets))
    check_method_settings(cfg, req.config)
    ev = cfg.eval
    if req.compile:
        ev = dataclasses.replace(ev, compile=True)
    if req.engine is not None:
        ev = dataclasses.replace(ev, engine=req.engine)
    dev.check_engine(ev.engine)  # before any work
    cfg = dataclasses.replace(cfg, eval=ev)
    if not weights:
        pass
    elif req.pretrained is not None:  # a readable state dict of finite tensors, before any work
        path = str(need_file(req.pretrained, "--pretrained", "state dict file"))
        backbones.read_state_dict(path)
        cfg = dataclasses.replace(cfg, pretrained=path)
    elif cfg.needs_pretrained:
        raise UserError(f"preset {cfg.preset!r} starts from ImageNet weights: give "
                        f"--pretrained FILE (a local timm / torchvision {cfg.backbone} "
                        "state dict)")
    return dataclasses.replace(cfg, workers=resolve_workers(req.workers, cfg))


def resolve_models(req: Request) -> list[ModelSpec]:
    """``--model``'s specs: names unique and none a registered method's.

    Raises:
        UserError: an empty spec, a name taken."""
    specs = [external.parse(m) for m in req.models]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise UserError(f"--model: two models are named {s.name!r}; name them "
                            "(--model NAME=FILE)")
        if s.name in METHODS and METHODS.entry(s.name).source != f"--model {s.spec}":
            raise UserError(f"--model {shown(s.spec)}: {s.name!r} is a registered method's "
                            "name; name the model (--model NAME=FILE)")
        seen.add(s.name)
    return specs


def resolve_rows(req: Request, cfg: config_mod.RunConfig) -> tuple[list[str], list[str]]:
    """The methods (in order) and the explainers (``native`` first) of the rows."""
    spec = _csv(req.methods)
    names = [] if spec is None and req.models else resolve_methods(
        _given(spec, "all"), cfg.for_methods)
    explainers = sorted(resolve_explainers(_given(_csv(req.explainers), "native")),
                        key=lambda e: e != "native")
    other = [n for n in names if cfg.for_methods and n not in cfg.for_methods]
    if other:  # asked for by name: run, but not silently under another paper's protocol
        print(f"note: preset {cfg.preset!r} follows the protocol of "
              f"{', '.join(cfg.for_methods)}; {', '.join(other)} will train under its "
              "schedule", file=sys.stderr)
    if req.reference is not None:
        METHODS.entry(req.reference)  # raises with close matches
        if req.reference not in names:
            raise UserError(f"--reference {shown(req.reference)} is not among the methods "
                            "of this run")
    return names, explainers


def make_plan(req: Request, *, dry_run: bool = False) -> Plan:
    """Check ``req`` and resolve it into a :class:`Plan` (``dry_run``: nothing will be
    written, so the output folder, the store and the cache are not probed).

    Raises:
        UserError: the first thing wrong, in one line naming the option or file.
    """
    from harness.sweep import parse_lambdas

    seeds = resolve_seeds(req.seed, _csv(req.seeds))
    cfg = resolve_config(req, seeds)
    data_dir = None if req.data_dir is None else str(need_dir(req.data_dir, "--data-dir"))
    names, explainers = resolve_rows(req, cfg)
    models = resolve_models(req)
    extras: dict[str, Any] = {}
    if req.cr_sweep is not None:
        extras["cr_sweep"] = parse_lambdas(_given(_csv(req.cr_sweep), "auto"))
    sanity = resolve_sanity(_csv(req.sanity))
    fractions = None if req.roar is None else roar.parse_fractions(
        _given(_csv(req.roar), "auto"))
    world = distributed.init(req.device, sync_bn=req.sync_bn)
    if req.sync_bn and world.size == 1:
        print("note: --sync-bn has no effect in one process (start the run with torchrun)",
              file=sys.stderr)
    device = dev.select(distributed.device(req.device))
    cfg = dataclasses.replace(cfg, precision=dev.resolve_precision(req.precision, device))
    # where checkpoints and results go: writable, before any work (a new run folder last)
    cache = None if req.no_cache or dry_run else probe_writable(req.cache_dir, "--cache-dir")
    out, db = resolve_out(req, cfg, dry_run=dry_run)
    return Plan(dataclasses.replace(req, data_dir=data_dir), cfg, tuple(names),
                tuple(explainers), tuple(models), tuple(seeds),
                tuple(sanity), fractions, extras, device,
                dev.resolve_precision(cfg.eval.precision, device), world, cache, out, db,
                explicit=_given(_csv(req.methods), "all").strip() != "all",
                own_folder=req.out is None)


def resolve_out(req: Request, cfg: config_mod.RunConfig, *, dry_run: bool
                ) -> tuple[Path, Path]:
    """The output folder and the store's path. ``--out`` is used as given; without it
    the run gets a new folder of its own, ``runs/<date>-<preset>-<dataset>`` (``-2``,
    ``-3``, ... when taken), created now (by rank 0 under torchrun) so that no other run
    takes it; a dry run only names it.

    Raises:
        UserError: a folder that cannot be written, a store among the outputs.
    """
    if req.out is not None:
        if dry_run:
            return Path(req.out), Path(req.db)
        out = probe_writable(req.out, "--out")
        return out, check_db_path(req.db, out)
    name = runfolder.folder_name(cfg.preset, cfg.dataset)
    if dry_run:
        return runfolder.RUNS / name, Path(req.db)
    root = probe_writable(runfolder.RUNS, "--out's default folder")
    out = distributed.share(lambda: runfolder.reserve(root, name))
    try:
        return out, check_db_path(req.db, out)
    except UserError:
        if distributed.current().main:
            runfolder.drop_if_empty(out)
        raise


def split_builder(plan: Plan, dataset_kwargs: dict[str, Any] | None = None,
                  workers: int | None = None) -> Callable[[str], data.Split]:
    """``split -> Split`` of the plan's dataset (with these data options)."""
    cfg = plan.cfg
    kwargs = cfg.dataset_kwargs if dataset_kwargs is None else dataset_kwargs

    def build(split: str) -> data.Split:
        return data.build(cfg.dataset, split, cache_dir=plan.cache,
                          data_dir=plan.request.data_dir,
                          num_workers=cfg.workers or 0 if workers is None else workers,
                          **kwargs)

    return build


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


def announce(plan: Plan, methods: Sequence[str]) -> None:
    """The run's first line (with progress output on rank 0): ``methods``, those of the
    plan that run on its dataset, counted."""
    if not plan.progress:
        return
    cfg, seeds = plan.cfg, plan.seeds
    seeds_txt = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"
    models = f" and {len(plan.models)} model{'s' if len(plan.models) > 1 else ''}" \
        if plan.models else ""
    n = len(methods)
    print(f"attnbench: {n} method{'s' if n != 1 else ''}{models} on {cfg.dataset} ({cfg.preset}), "
          f"backbone {cfg.backbone}, device {plan.device}, training in {cfg.precision}, "
          f"evaluation in {plan.eval_precision}, {seeds_txt}")


def dry_run(plan: Plan) -> Path:
    """``--dry-run``: the banner, the methods in training order with their schedules,
    the dataset sizes and a time estimate; nothing trained or written."""
    from harness import dryrun

    cfg = plan.cfg
    info, sizes, official = dryrun.dataset_sizes(cfg, split_builder(plan))
    skipped: list[str] = []
    names = drop_unsupported(plan.methods, info, explicit=plan.explicit, say=skipped.append)
    announce(plan, names)
    for line in skipped:
        print(line)
    fractions = plan.roar
    timed = names if not fractions or roar.RETRAINED in names else [*names, roar.RETRAINED]
    plans = dryrun.plan(timed, cfg, info, sizes[0], sizes[1], plan.device)
    rows = len(plan.rows(names))
    dryrun.report(plans, cfg, info, sizes, official, plan.device, len(plan.seeds),
                  sanity=list(plan.sanity),
                  roar=None if not fractions else dryrun.RoarPlan(
                      fractions, rows, dryrun.imputation_seconds(info, fractions,
                                                                 plan.device)))
    return plan.out


def check_data(req: Request) -> Path:
    """``--check-data``: scan both splits of the request's dataset (every image,
    whatever subset the preset trains on), print the summary; problems raise."""
    from harness.data.check import scan

    seeds = resolve_seeds(req.seed, _csv(req.seeds))
    cfg = resolve_config(req, seeds, weights=False)
    data_dir = None if req.data_dir is None else str(need_dir(req.data_dir, "--data-dir"))
    cache = None if req.no_cache else probe_writable(req.cache_dir, "--cache-dir")
    kwargs = {k: v for k, v in cfg.dataset_kwargs.items() if k not in ("n_train", "n_test")}
    workers = cfg.workers or 0

    def build(split: str) -> data.Split:
        return data.build(cfg.dataset, split, cache_dir=cache, data_dir=data_dir,
                          num_workers=workers, **kwargs)

    summaries = scan(build, workers, progress=req.progress)
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
    return runfolder.RUNS if req.out is None else Path(req.out)

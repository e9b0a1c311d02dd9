"""The one generic trainer and the checkpoint cache.

``obtain(name, cfg, ...)`` returns a trained method: from the cache when a checkpoint
with the same key exists, else by training it (after obtaining its ``init_from``
parent). The key hashes (method, method options, resolved config, seed, dataset and
the parent's key). Checkpoints are written atomically; a per-epoch resume file means an
interrupted training continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import backbones, codedigest, data, distributed
from harness import device as dev
from harness import progress as progress_mod
from harness.config import RunConfig, config_hash, with_train_overrides
from harness.data import Split
from harness.errors import UserError, shown_path
from harness.safeio import atomic_path, key_lock
from methods.base import METHODS, Method

#: bump when the checkpoint files' format changes (a change of code is in every key by
#: itself: :func:`code_digest`)
CACHE_VERSION = 6


@dataclass
class Trained:
    """A trained method and how it was obtained."""

    method: Method
    key: str
    cfg: RunConfig
    cached: bool
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def method_config(name: str, cfg: RunConfig) -> RunConfig:
    """``cfg`` with the method's schedule: the preset's, then the method's registered
    defaults, then the preset's per-method overrides."""
    cfg = with_train_overrides(cfg, METHODS.entry(name).meta.get("train", {}))
    return with_train_overrides(cfg, _tuples(cfg.methods.get(name, {}).get("train", {})))


def method_options(name: str, cfg: RunConfig) -> dict[str, Any]:
    """Constructor options of ``name`` set by the preset (the rest keep their defaults)."""
    return dict(cfg.methods.get(name, {}).get("options", {}))


def resolved_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the method factory's defaults, so that changing a
    default changes the cache key (``**options`` factories show none)."""
    out: dict[str, Any] = {}
    for p in inspect.signature(METHODS.get(name)).parameters.values():
        if p.default is not inspect.Parameter.empty and p.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            out[p.name] = p.default
    return {**out, **options}


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def build_method(name: str, cfg: RunConfig, split: Split, **options: Any) -> Method:
    """Instantiate method ``name`` on a fresh backbone (seeded by ``cfg.seed``)."""
    entry = METHODS.entry(name)
    if entry.meta.get("needs_boxes") and not split.info.has_boxes:
        raise UserError(f"method {name!r} needs bounding boxes; dataset "
                        f"{split.info.name!r} has none")
    torch.manual_seed(cfg.seed)
    bb = backbones.build(cfg.backbone, split.info.num_classes, pretrained=cfg.pretrained,
                         **cfg.backbone_kwargs)
    method = entry.obj(bb, split.info, **options)
    method.label_loss = cfg.train.label_loss
    return method


def code_digest(name: str, cfg: RunConfig) -> str:
    """The code a checkpoint of ``name`` is trained by: the method's registered factory
    (its class and the own classes it derives from), the backbone's builder, the
    dataset's, and the training loop, each with the own code it names
    (:func:`harness.codedigest.digest`; a plugin's as the project's)."""
    return codedigest.digest(METHODS.get(name), backbones.BACKBONES.get(cfg.backbone),
                             data.DATASETS.get(cfg.dataset), fit)


def cache_key(name: str, cfg: RunConfig, options: dict[str, Any], *,
              data_id: str | None = None) -> str:
    """Checkpoint key of ``name`` (recursively includes its ``init_from`` parents).

    Args:
        data_id: the training split's fingerprint for datasets read from disk
            (:attr:`harness.data.Split.fingerprint`): which files, labels and boxes.
    """
    entry = METHODS.entry(name)
    if entry.meta.get("weights"):  # a model trained elsewhere: its weights are its key
        return config_hash({"external": entry.meta["weights"], "code": entry.meta["code"],
                            "version": CACHE_VERSION})
    parent = entry.meta.get("init_from")
    mcfg = method_config(name, cfg)
    dmeta = data.DATASETS.entry(mcfg.dataset).meta
    train_kwargs = {k: v for k, v in mcfg.dataset_kwargs.items()
                    if k not in dmeta.get("test_only", ())}
    payload = {"method": name, "options": resolved_options(name, options),
               "version": CACHE_VERSION, "code": code_digest(name, mcfg),
               "dataset": mcfg.dataset, "dataset_version": dmeta.get("version"),
               "dataset_kwargs": train_kwargs,
               "backbone": mcfg.backbone, "backbone_kwargs": mcfg.backbone_kwargs,
               "train": dataclasses.asdict(mcfg.train), "seed": mcfg.seed,
               "precision": mcfg.precision,
               "parent": cache_key(parent, cfg, method_options(parent, cfg), data_id=data_id)
               if parent else None}
    if data_id is not None:  # absent for generated data: their keys stay as they were
        payload["data"] = data_id
    if mcfg.pretrained is not None:  # the weights, wherever the file lives
        payload["pretrained"] = file_digest(mcfg.pretrained)
    return config_hash(payload)


def obtain(name: str, cfg: RunConfig, train_split: Split, device: torch.device,
           cache_dir: Path | None, *, progress: bool = True,
           options: dict[str, Any] | None = None,
           _memo: dict[str, Trained] | None = None) -> Trained:
    """A trained ``name``: loaded from ``cache_dir`` if present, else trained there.

    Args:
        cache_dir: where checkpoints live; None disables caching.
        options: method constructor options (part of the cache key).
    """
    options = method_options(name, cfg) if options is None else dict(options)
    cfg, key = _keyed(name, cfg, train_split, device, options)
    memo = _memo if _memo is not None else {}
    if key in memo:
        return memo[key]
    mcfg = method_config(name, cfg)
    model = build_method(name, mcfg, train_split, **options)
    path = cache_dir / f"{name}-{key}.pt" if cache_dir else None
    if path is None or mcfg.train.epochs <= 0:  # nothing to share with another run
        result = _train(name, model, key, mcfg, cfg, train_split, device, cache_dir, path,
                        progress, memo)
    else:
        # one run trains a key; another sharing the cache waits for it, then loads it
        # (under torchrun rank 0 holds the lock and reads for every rank)
        lock = (key_lock(path, say=lambda m: print(m, file=sys.stderr))
                if distributed.current().main else contextlib.nullcontext())
        with lock:
            cached = _load_checkpoint(path, model, key, mcfg, device)
            result = cached or _train(name, model, key, mcfg, cfg, train_split, device,
                                      cache_dir, path, progress, memo)
    memo[key] = result
    return result


def _keyed(name: str, cfg: RunConfig, train_split: Split, device: torch.device,
           options: dict[str, Any]) -> tuple[RunConfig, str]:
    """``cfg`` with the precision resolved for ``device``, and the checkpoint key."""
    cfg = dataclasses.replace(cfg, precision=dev.resolve_precision(cfg.precision, device))
    return cfg, cache_key(name, cfg, options, data_id=train_split.fingerprint)


def source(name: str, cfg: RunConfig, train_split: Split, device: torch.device,
           cache_dir: Path | None, memo: dict[str, Trained]) -> str:
    """Where :func:`obtain` would take ``name`` from, nothing built or read: ``run``
    (trained before in this run: in ``memo``), ``parent`` (it trains nothing: its
    ``init_from`` parent's weights), ``cache`` (its checkpoint is in ``cache_dir``, or
    was read from there before in this run) or ``train``."""
    if METHODS.entry(name).meta.get("init_from") and method_config(name, cfg).train.epochs <= 0:
        return "parent"
    _, key = _keyed(name, cfg, train_split, device, method_options(name, cfg))
    if key in memo:
        return "cache" if memo[key].cached else "run"
    if cache_dir is not None and (cache_dir / f"{name}-{key}.pt").exists():
        return "cache"
    return "train"


def _load_checkpoint(path: Path, model: Method, key: str, mcfg: RunConfig,
                     device: torch.device) -> Trained | None:
    """The cached checkpoint, or None when absent or unreadable (one warning line).
    Under torchrun rank 0 reads it and every rank loads what rank 0 read."""
    def read() -> dict[str, Any] | str | None:
        try:
            return _load(path) if path.exists() else None
        except Exception as err:  # a torn or foreign file fails in many ways
            return type(err).__name__

    blob = distributed.share(read)
    if blob is None:
        return None
    try:
        if isinstance(blob, str):
            raise RuntimeError(blob)
        model.load_state_dict(blob["state_dict"])
        result = Trained(model, key, mcfg, True, float(blob["train_seconds"]),
                         list(blob["history"]), dict(blob.get("facts", {})))
    except Exception as err:  # a torn or foreign file fails in many ways: all mean rebuild
        print(f"warning: unreadable checkpoint {path} ({type(err).__name__}); "
              "training again", file=sys.stderr)
        return None
    dev.prepare(model, device).eval()
    return result


def _train(name: str, model: Method, key: str, mcfg: RunConfig, cfg: RunConfig,
           train_split: Split, device: torch.device, cache_dir: Path | None,
           path: Path | None, progress: bool, memo: dict[str, Trained]) -> Trained:
    """Train ``model`` (after obtaining its parent) and save its checkpoint."""
    parent = METHODS.entry(name).meta.get("init_from")
    if parent:
        p = obtain(parent, cfg, train_split, device, cache_dir, progress=progress, _memo=memo)
        model.load_parent({k: v.cpu() for k, v in p.method.state_dict().items()})
    dev.prepare(model, device)
    t0 = time.perf_counter()
    facts: dict[str, Any] = {}
    if mcfg.train.epochs > 0:
        model.eval()
        facts = model.on_fit_start(train_split, device)
    history = fit(model, mcfg, train_split, device, progress=progress,
                  resume=path.with_suffix(".partial") if path else None)
    seconds = time.perf_counter() - t0
    model.eval()
    if path is not None and mcfg.train.epochs > 0 and distributed.current().main:
        _atomic_save({"state_dict": model.state_dict(), "train_seconds": seconds,
                      "history": history, "facts": facts, "method": name,
                      "config": mcfg.to_dict()}, path)
        path.with_suffix(".partial").unlink(missing_ok=True)  # only once the result is safe
    # a method that trains nothing is exactly as cached as its parent
    cached = mcfg.train.epochs <= 0 and parent is not None and memo[cache_key(
        parent, cfg, method_options(parent, cfg), data_id=train_split.fingerprint)].cached
    return Trained(model, key, mcfg, cached, seconds, history, facts)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def file_digest(path: str) -> str:
    """SHA-256 (16 hex digits) of a regular file (never a device or a FIFO, which could
    be read forever), memoised per (path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        raise UserError(f"--pretrained {shown_path(path)}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"--pretrained {shown_path(path)}: not a regular file")
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def fit(model: Method, cfg: RunConfig, split: Split, device: torch.device, *,
        progress: bool = True, resume: Path | None = None) -> list[dict[str, float]]:
    """Train ``model`` on ``split`` with SGD + multi-step LR; returns per-epoch logs.

    The method's own ``training_step`` does the forward, loss and backward(s); this loop
    only feeds batches, steps the LR schedules and writes the resume file.

    Under torchrun (:mod:`harness.distributed`) each rank trains on its part of every
    global batch of ``train.batch_size`` images, the steps run through
    DistributedDataParallel (gradients averaged over the ranks), batch norm optionally
    synchronised (``--sync-bn``, CUDA), augmentation drawn from a per-rank seed, the
    epoch logs averaged over the ranks, and every rank ends with rank 0's state. Rank 0
    alone writes the resume file; a resumed training reads it on rank 0 for all.
    """
    tc = cfg.train
    if tc.epochs <= 0:
        return []
    milestones = epoch_milestones(tc.milestones, tc.epochs)
    world = distributed.current()
    restore_bn = (distributed.sync_batchnorm(model, device)
                  if world.size > 1 and world.sync_bn else None)

    def start() -> _TrainState:
        optimizers = model.configure_optimizers(tc)
        schedulers: list[Any] = (
            [torch.optim.lr_scheduler.CosineAnnealingLR(o, tc.epochs * steps_per_epoch)
             for o in optimizers] if tc.schedule == "cosine" else
            [torch.optim.lr_scheduler.MultiStepLR(o, milestones, tc.gamma) for o in optimizers])
        # Shuffling has its own generator; augmentation draws from the global RNG,
        # seeded here so that the result depends only on (config, seed), not on what ran
        # before.
        torch.manual_seed(cfg.seed + 1 + (world.rank << 32))
        return _TrainState(optimizers, schedulers, torch.Generator().manual_seed(cfg.seed))

    # full global batches per epoch (distributed.GlobalBatches drops the rest)
    steps_per_epoch = max(1, len(split.dataset) // tc.batch_size)  # type: ignore[arg-type]
    has_resume = distributed.share(lambda: resume is not None and resume.exists())
    initial = {k: v.clone() for k, v in model.state_dict().items()} if has_resume else {}
    state = start()
    if has_resume and resume is not None and not _resume(resume, model, state):
        # whatever the file restored in part is undone: a fresh start
        model.load_state_dict(initial)
        state = start()
    # the global batches of a shuffled pass (this rank's part of each under torchrun)
    batches = distributed.GlobalBatches(len(split.dataset), tc.batch_size, state.generator)  # type: ignore[arg-type]
    loader = data.loader(split, tc.batch_size, device, generator=state.generator,
                         persistent=False, batch_sampler=batches)
    if len(loader) == 0:
        raise UserError(f"training split has {len(split.dataset)} samples, fewer than "  # type: ignore[arg-type]
                        f"one batch of {tc.batch_size}")
    name = type(model).name or type(model).__name__
    with distributed.ddp_engine(model, device) as run:
        _epochs(model, cfg, split, device, run, loader, state, name=name, progress=progress,
                resume=resume)
    distributed.broadcast_state(model)
    if restore_bn is not None:
        restore_bn()
    return state.history


@dataclass
class _TrainState:
    """What a training carries from epoch to epoch, and its resume file holds."""

    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    #: the shuffling generator (augmentation draws from the global RNG)
    generator: torch.Generator
    #: the logs of the epochs done so far, one dict each
    history: list[dict[str, float]] = field(default_factory=list)
    #: the next epoch (0-based)
    epoch: int = 0

    def save(self, model: Method, path: Path) -> None:
        _atomic_save({"model": model.state_dict(),
                      "optimizers": [o.state_dict() for o in self.optimizers],
                      "schedulers": [s.state_dict() for s in self.schedulers],
                      "generator": self.generator.get_state(),
                      "torch_rng": torch.get_rng_state(),
                      "history": self.history, "epoch": self.epoch}, path)


def _epochs(model: Method, cfg: RunConfig, split: Split, device: torch.device,
            run: distributed.Engine[Any], loader: Any, state: _TrainState, *, name: str,
            progress: bool, resume: Path | None) -> None:
    """The epochs of :func:`fit` from ``state.epoch`` on, appending to ``state.history``
    (and writing the resume file after each but the last)."""
    tc = cfg.train
    world = distributed.current()
    reseed = getattr(split.dataset, "reseed", None)  # per-sample augmentation seeds
    for epoch in range(state.epoch, tc.epochs):
        model.train()
        sums: dict[str, float] = {}
        t_epoch = time.perf_counter()
        if reseed is not None:  # from the shuffling generator: restored on resume
            reseed(int(torch.randint(0, 2**62, (1,), generator=state.generator)))
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{tc.epochs}", leave=False,
                   disable=not (progress_mod.bars(progress) and world.main),
                   dynamic_ncols=True)
        for i, batch in enumerate(bar, 1):
            batch = dev.to_device(batch, device)
            if split.batch_transform is not None:
                batch = split.batch_transform(batch)
            with dev.autocast(device, cfg.precision):
                logs = model.training_step(batch, state.optimizers, run)
            for k, v in logs.items():
                if not math.isfinite(v):
                    raise UserError(f"{name}: training diverged ({k} = {v} in epoch "
                                    f"{epoch + 1}); lower the learning rate of the preset")
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / i:.3f}" for k, v in sums.items()})
            if tc.schedule == "cosine":  # annealed batch by batch
                for sch in state.schedulers:
                    sch.step()
        if tc.schedule != "cosine":
            for sch in state.schedulers:
                sch.step()
        sums = distributed.mean_over_ranks(sums)
        state.history.append({"epoch": epoch + 1,
                              **{k: v / len(loader) for k, v in sums.items()}})
        state.epoch = epoch + 1
        if progress_mod.lines(progress) and world.main:  # a log: one line per epoch
            logs_txt = ", ".join(f"{k} {v:.3f}" for k, v in state.history[-1].items()
                                 if k != "epoch")
            print(f"    {name} epoch {epoch + 1}/{tc.epochs}: {logs_txt} "
                  f"({progress_mod.duration(time.perf_counter() - t_epoch)})", flush=True)
        if resume is not None and epoch + 1 < tc.epochs:
            state.save(model, resume)


def _resume(path: Path, model: Method, state: _TrainState) -> bool:
    """Restore an interrupted training from its resume file into ``model`` and
    ``state``; False when the file is unreadable or does not fit (one warning line; the
    caller then undoes whatever was restored in part and starts over)."""
    try:
        saved = distributed.share(lambda: _load(path))
        model.load_state_dict(saved["model"])
        for o, s in zip(state.optimizers, saved["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(state.schedulers, saved["schedulers"], strict=True):
            sch.load_state_dict(s)
        state.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])  # augmentation draws from the global RNG
        state.history, state.epoch = list(saved["history"]), int(saved["epoch"])
        if distributed.current().rank:  # the file holds rank 0's augmentation stream
            torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + distributed.current().rank)
    except Exception as err:  # a torn or foreign file fails in many ways: all mean rebuild
        print(f"warning: unreadable resume file {path} ({type(err).__name__}); training "
              "from the start", file=sys.stderr)
        if distributed.current().main:
            path.unlink(missing_ok=True)
        return False
    return True


def epoch_milestones(fractions: tuple[float, ...], epochs: int) -> list[int]:
    """Epochs after which the LR drops: ``ceil(f * epochs)``, distinct.

    ABN's 50 % / 75 % of 300 epochs give 150 and 225; of 5 epochs, 3 and 4 (so that a
    short schedule keeps the full LR for at least half of it).
    """
    return sorted({max(1, math.ceil(f * epochs)) for f in fractions})


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint or resume file written by this module (tensors and plain types)."""
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def _atomic_save(obj: Any, path: Path) -> None:
    if not distributed.current().main:  # rank 0 writes for the run
        return
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)

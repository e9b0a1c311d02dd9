"""``--dry-run``: what a preset would do and roughly how long it would take, untrained.

The methods are listed in training order (a parent before the methods fine-tuned from
it) with their schedules; each method's training step and the evaluation's forward
pass are timed on a few synthetic batches of the preset's image size and batch size on
the chosen device, and scaled to the dataset's sizes. The estimate ignores data
loading and is rough (a few steps, no warm caches): it tells minutes from days.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness import data, train
from harness import device as dev
from harness.config import RunConfig
from harness.data import DatasetInfo, Split
from harness.data.core import DataDirMissing
from harness.progress import duration
from methods.base import METHODS

#: timed training steps per method, after one untimed step
TIMED_STEPS = 2


@dataclass
class Plan:
    """One method's schedule and its estimated cost."""

    name: str
    parent: str | None
    epochs: int
    batch_size: int
    lr: float
    milestones: list[int]
    step_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def training_order(names: list[str]) -> list[str]:
    """``names`` and their ``init_from`` ancestors, each ancestor before its children."""
    out: list[str] = []

    def visit(n: str) -> None:
        parent = METHODS.entry(n).meta.get("init_from")
        if parent:
            visit(parent)
        if n not in out:
            out.append(n)

    for n in names:
        visit(n)
    return out


def synthetic_split(info: DatasetInfo, n: int, seed: int = 0) -> Split:
    """``n`` random images of ``info``'s size with centred boxes, for timing only."""
    g = torch.Generator().manual_seed(seed)
    h, w = info.image_size
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, info.num_classes, (n,), generator=g)
    box = torch.tensor([w / 4, h / 4, 3 * w / 4, 3 * h / 4]).repeat(n, 1)
    boxes = {"bbox": box, **{b: box.clone() for b in info.extra_boxes}}
    ds = data.BoxedImages(images, labels, boxes, data.make_transform(info, train=False))
    return Split(ds, dataclasses.replace(info, has_boxes=True))


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeats


def plan(names: list[str], cfg: RunConfig, info: DatasetInfo, n_train: int, n_test: int,
         device: torch.device, *, timed: bool = True,
         say: Callable[[str], None] = print) -> list[Plan]:
    """Schedules and time estimates for ``names`` (in training order)."""
    plans = []
    ev = cfg.eval
    h, w = info.image_size
    causal_steps = h if ev.causal_step == 0 else math.ceil(h * w / ev.causal_step)
    for name in training_order(names):
        mcfg = train.method_config(name, cfg)
        tc = mcfg.train
        p = Plan(name, METHODS.entry(name).meta.get("init_from"), tc.epochs, tc.batch_size,
                 tc.lr, train.epoch_milestones(tc.milestones, tc.epochs) if tc.epochs else [])
        if timed:
            say(f"  timing {name} ...")
            _estimate(p, name, mcfg, info, n_train, n_test, causal_steps, device)
        plans.append(p)
    return plans


def _estimate(p: Plan, name: str, mcfg: RunConfig, info: DatasetInfo, n_train: int,
              n_test: int, causal_steps: int, device: torch.device) -> None:
    ev = mcfg.eval
    bs = mcfg.train.batch_size
    split = synthetic_split(info, max(2 * bs, ev.batch_size, 2))
    model = train.build_method(name, mcfg, split, **train.method_options(name, mcfg))
    dev.prepare(model, device)
    batch = dev.to_device(next(iter(data.loader(split, bs, device))), device)
    if mcfg.train.epochs > 0:
        model.eval()
        model.on_fit_start(split, device)
        optimizers = model.configure_optimizers(mcfg.train)
        model.train()

        def step() -> None:
            with dev.autocast(device, mcfg.precision):
                model.training_step(batch, optimizers)

        p.step_seconds = _timed(step, device, TIMED_STEPS)
        p.train_seconds = p.step_seconds * (n_train // bs) * mcfg.train.epochs
    model.eval()
    x = batch["image"]

    def forward() -> None:
        with torch.no_grad(), dev.autocast(device, ev.precision):
            model(x)

    per_image = _timed(forward, device, TIMED_STEPS) / len(x)
    # predictions + explanations (about 3 forward-equivalents an image), then the two
    # causal curves (one forward per step and image) on causal_n images
    p.eval_seconds = per_image * (3 * n_test + 2 * (causal_steps + 1)
                                  * min(ev.causal_n, n_test))


def report(plans: list[Plan], cfg: RunConfig, info: DatasetInfo, sizes: tuple[int, int],
           official: bool, device: torch.device, seeds: int,
           say: Callable[[str], None] = print) -> None:
    """Print the plan: the run, the dataset, one line per method, the total."""
    where = " (official sizes: the data were not found)" if official else ""
    say(f"dry run: preset {cfg.preset}, dataset {cfg.dataset}{where}: {sizes[0]} train / "
        f"{sizes[1]} test images, {info.num_classes} classes, {info.image_size[0]} px; "
        f"backbone {cfg.backbone}{' (pretrained)' if cfg.pretrained else ''}; device "
        f"{device}, training in {cfg.precision}; {seeds} seed(s)")
    say(f"  {'method':<18}{'from':<14}{'epochs':>7}{'batch':>7}{'lr':>9}  "
        f"{'LR steps at':<14}{'step':>9}{'training':>13}{'evaluation':>13}")
    total = 0.0
    for p in plans:
        steps = ",".join(map(str, p.milestones)) or "-"
        timed = p.step_seconds > 0 or p.eval_seconds > 0
        say(f"  {p.name:<18}{p.parent or '-':<14}{p.epochs:>7}{p.batch_size:>7}"
            f"{p.lr:>9g}  {steps:<14}"
            + (f"{p.step_seconds:>8.2f}s{duration(p.train_seconds):>13}"
               f"{duration(p.eval_seconds):>13}" if timed else ""))
        total += p.train_seconds + p.eval_seconds
    if any(p.step_seconds or p.eval_seconds for p in plans):
        say(f"  estimated wall time: {duration(total * seeds)} on {device} (from "
            f"{TIMED_STEPS} timed steps per method on synthetic batches; data loading "
            "not included)")


def dataset_sizes(cfg: RunConfig, build: Callable[[str], Split]
                  ) -> tuple[DatasetInfo, tuple[int, int], bool]:
    """The dataset's info and (train, test) sizes: built when the data are there, else
    the registry's official figures (``official`` True)."""
    try:
        tr, te = build("train"), build("test")
        return te.info, (len(tr), len(te)), False
    except DataDirMissing as err:  # only a missing folder: bad data stay errors
        meta = data.DATASETS.entry(cfg.dataset).meta
        if "official" not in meta:
            raise
        n_train, n_test = meta["official"]
        kw = cfg.dataset_kwargs
        n_train = min(n_train, kw.get("n_train") or n_train)
        n_test = min(n_test, kw.get("n_test") or n_test)
        size = int(kw.get("image_size", meta.get("image_size", 224)))
        info = DatasetInfo(name=cfg.dataset, num_classes=int(meta["num_classes"]),
                           image_size=(size, size), mean=(0.5, 0.5, 0.5),
                           std=(0.25, 0.25, 0.25), has_boxes=bool(meta.get("has_boxes")))
        print(f"  (data not found: {err}; using the official sizes)")
        return info, (n_train, n_test), True

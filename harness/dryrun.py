"""``--dry-run``: what a preset would do and roughly how long it would take, untrained.

The methods are listed in training order (a parent before the methods fine-tuned from
it) with their schedules; each method's training step and the evaluation's forward
pass are timed on synthetic batches on the chosen device and scaled to the preset's
batch, image size and dataset sizes. The estimate ignores data loading and is rough: it
tells minutes from days.

The steps are timed at a reduced scale, not the preset's: at the real one (ResNet-50 at
352 px, batch 16) a CPU takes seconds a step and gigabytes of activations, and timing
every method there made a dry run take minutes and 11-13 GB. Instead:

* images larger than :data:`TIMED_SIDE` px a side are scaled down to it (aspect kept);
* the timed batch starts at :data:`FIRST_BATCH` images and grows :data:`GROWTH`-fold,
  up to the real batch (at most :data:`MAX_TIMED_IMAGES`): the first two batches are
  always timed (the second only twice the first after a call of
  :data:`EXPENSIVE_SECONDS`), the next ones while a call takes less than
  :data:`TARGET_SECONDS`. A cheap model (the ``default`` preset's) is timed at its
  real scale, an expensive one on a few small images, so that the time, and the memory
  (both follow the work), stay small;
* at each batch the fastest of up to :data:`TIMED_STEPS` calls counts, after an
  untimed one (the first call at a shape selects kernels; a busy machine only ever adds
  time);
* scaling model: one call costs ``a + b * images * pixels`` seconds — a conv net's work
  is proportional to its input's pixels; ``a`` is what no image changes (the optimiser's
  update of every weight, Python and kernel dispatch: at 112 px and batch 2 it is most
  of a ResNet-50 step). The line goes through the smallest and the largest timed batch,
  ``a`` kept within [0, the smallest time] against timing noise (:func:`fit`). The
  evaluation's cost per test image is its largest timed batch's, scaled to the real
  size (the evaluation's own forward batches are at least as large).

What the model leaves out: the cost per image at the real scale is not quite the
timed one's (small feature maps use a CPU less well: an over-estimate; large feature
maps and large batches miss its caches: an under-estimate), and timing noise. Measured
on a 2-core CPU (bf16 training), estimated step against a step timed at the real scale:
ResNet-50 at 352 px, batch 16: 2.2-4.4 s (3.2 s); at 224 px: 1.4-1.6 s (1.4 s), ABN
1.3-3.2 s (2.1 s), ABN-COT / -COMB / -HK 3.8 / 5.3 / 1.2 s (4.2 / 5.0 / 1.4 s); MSABN at
352 px 32-36 s (50 s), with the puzzle module 65-74 s (98 s); CIFAR ResNet-110 at batch
256: 2.6 s (3.0 s), ABN on it 4.0-5.1 s (9.0 s). The forward passes came within 10 %.
Scaling in proportion to batch 2 alone (``a = 0``) would have said 10.5 s for ResNet-50
at 352 px. The ``default`` preset: 7 min 53 s - 8 min 42 s estimated, against a run of
10 min (training 7 min 4 s, same machine, busy) or 6 min 22 s (quiet). On a
busy machine every timed call is slower, and the estimate with it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness import data, fold, train
from harness import device as dev
from harness.config import RunConfig
from harness.data import DatasetInfo, Split
from harness.data.core import DataDirMissing, LabelledObjects
from harness.progress import duration
from methods.base import METHODS

#: timed calls per timed batch at most (the fastest counts), after one untimed call
TIMED_STEPS = 3
#: the longest image side steps are timed at: larger images are scaled down to it
TIMED_SIDE = 112
#: the first timed batch (two images: batch norm trains on more than one value)
FIRST_BATCH = 2
#: each next timed batch is this many times larger
GROWTH = 4
#: the largest timed batch
MAX_TIMED_IMAGES = 64
#: a larger batch is timed while a call on the last one took less than this (seconds)
TARGET_SECONDS = 0.2
#: after a first call this long (seconds), the second batch is only twice the first
EXPENSIVE_SECONDS = 0.5


@dataclass(frozen=True)
class Timing:
    """Seconds of one call at each timed batch, on images of ``size`` (h, w).

    Attributes:
        points: (images, seconds) pairs, ascending in images.
    """

    size: tuple[int, int]
    points: tuple[tuple[int, float], ...]

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(n for n, _ in self.points)

    def seconds(self, images: int, size: tuple[int, int]) -> float:
        """Estimated seconds of one call on ``images`` images of ``size``: ``a + b *
        images * pixels`` fitted through the timed points (:func:`fit`)."""
        pixels = self.size[0] * self.size[1]
        a, b = fit([(n * pixels, t) for n, t in self.points])
        return a + b * images * size[0] * size[1]


@dataclass
class Plan:
    """One method's schedule and its estimated cost."""

    name: str
    parent: str | None
    epochs: int
    batch_size: int
    lr: float
    milestones: list[int]
    #: one cosine annealing cycle instead of steps
    cosine: bool = False
    step_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    #: the evaluation's forward pass, seconds per test image
    forward_seconds: float = 0.0
    #: what the training step and the evaluation's forward pass were timed at
    train_timing: Timing | None = None
    eval_timing: Timing | None = None


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
    if info.multi_label:  # one centred object of class ``label`` an image
        objects = LabelledObjects(images, labels, box[:, None], labels[:, None],
                                  info.num_classes, data.make_transform(info, train=False))
        return Split(objects, dataclasses.replace(info, has_boxes=True, multi_object=True))
    boxes = {"bbox": box, **{b: box.clone() for b in info.extra_boxes}}
    ds = data.BoxedImages(images, labels, boxes, data.make_transform(info, train=False))
    return Split(ds, dataclasses.replace(info, has_boxes=True))


def timed_size(size: tuple[int, int]) -> tuple[int, int]:
    """The image size steps are timed at: ``size`` with its longer side scaled down to
    :data:`TIMED_SIDE` px when larger, each side a multiple of 16 (even, for the puzzle
    module's 2 x 2 tiles) of at least 16."""
    h, w = size
    if max(h, w) <= TIMED_SIDE:
        return h, w
    f = TIMED_SIDE / max(h, w)
    return max(16, round(h * f / 16) * 16), max(16, round(w * f / 16) * 16)


def ladder(seconds_at: Callable[[int], float], cap: int) -> list[tuple[int, float]]:
    """(images, seconds) of one call at growing batches: :data:`FIRST_BATCH`, then
    :data:`GROWTH` times more each, up to ``cap`` images (included). The first two are
    always timed (a line through two points, :func:`fit`), the next ones while the last
    call took less than :data:`TARGET_SECONDS`. After a first call of
    :data:`EXPENSIVE_SECONDS` or more the second batch is only twice the first (an
    expensive model: the time and the memory)."""
    points: list[tuple[int, float]] = []
    n = max(1, min(FIRST_BATCH, cap))
    while True:
        t = seconds_at(n)
        points.append((n, t))
        if n >= cap or (len(points) >= 2 and t >= TARGET_SECONDS):
            return points
        n = min(n * (2 if t >= EXPENSIVE_SECONDS else GROWTH), cap)


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(a, b)`` of ``seconds = a + b * work`` through the (work, seconds) ``points``
    of smallest and largest work; ``a`` (a fixed cost per call) kept within [0, the
    smallest time], the line then through the largest point. One point (or all of
    one work): ``a = 0``, proportional, an over-estimate when a fixed cost exists."""
    lo, hi = min(points), max(points)
    if hi[0] <= 0:
        return hi[1], 0.0
    a = 0.0
    if hi[0] > lo[0]:
        b = (hi[1] - lo[1]) / (hi[0] - lo[0])
        a = min(max(hi[1] - b * hi[0], 0.0), lo[1], hi[1])
    return a, (hi[1] - a) / hi[0]


def release_memory() -> None:
    """Hand the heap freed since back to the system (glibc's ``malloc_trim``, a few ms;
    elsewhere a no-op): else the process keeps each method's peak resident, and the
    methods of a dry run add up (measured: 1.9 GB after three ResNet-50 methods, 1.0 GB
    trimmed). The models hold no reference cycles: no garbage collection needed."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # no glibc
        pass


def _repeated(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """A collated batch of ``n`` samples: ``batch``'s, repeated as needed (indices
    included: per-sample tables of a method stay in range)."""
    def rows(v: torch.Tensor) -> torch.Tensor:
        return v.repeat(math.ceil(n / len(v)), *[1] * (v.dim() - 1))[:n]

    out = {k: rows(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out["image"] = dev.channels_last(out["image"])
    return out


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The fastest of up to ``repeats`` calls of ``fn`` after an untimed one, in
    seconds; the timed calls stop once they took :data:`TARGET_SECONDS` in all (one
    call, then, of an expensive step)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: kernel selection, allocations
    sync()
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        t = time.perf_counter() - t0
        best, spent = min(best, t), spent + t
        if spent >= TARGET_SECONDS:
            break
    return best


def plan(names: list[str], cfg: RunConfig, info: DatasetInfo, n_train: int, n_test: int,
         device: torch.device, *, timed: bool = True,
         say: Callable[[str], None] = print) -> list[Plan]:
    """Schedules and time estimates for ``names`` (in training order)."""
    plans = []
    ev = cfg.eval
    h, w = info.image_size
    causal_steps = h if ev.causal_step == 0 else math.ceil(h * w / ev.causal_step)
    forwards: dict[tuple[Any, ...], Timing] = {}
    for name in training_order(names):
        mcfg = train.method_config(name, cfg)
        tc = mcfg.train
        p = Plan(name, METHODS.entry(name).meta.get("init_from"), tc.epochs, tc.batch_size,
                 tc.lr, train.epoch_milestones(tc.milestones, tc.epochs)
                 if tc.epochs and tc.schedule == "step" else [],
                 cosine=tc.schedule == "cosine" and tc.epochs > 0)
        if timed:
            say(f"  timing {name} ...")
            _estimate(p, name, mcfg, info, n_train, n_test, causal_steps, device, forwards)
            release_memory()
        plans.append(p)
    return plans


def _estimate(p: Plan, name: str, mcfg: RunConfig, info: DatasetInfo, n_train: int,
              n_test: int, causal_steps: int, device: torch.device,
              forwards: dict[tuple[Any, ...], Timing]) -> None:
    """Time ``name``'s training step and forward pass at a reduced scale (module
    docstring) and fill in ``p``'s estimates for the real one.

    Args:
        forwards: forward-pass timings by network (the method class's ``forward`` and
            its parameters' shapes): methods that differ in training or explanation
            only (``cam`` and ``gradcam`` on the baseline, ``msabn-cr`` on ``msabn``)
            share one.
    """
    ev = mcfg.eval
    bs = mcfg.train.batch_size
    size = timed_size(info.image_size)
    train_cap = min(bs, MAX_TIMED_IMAGES)
    eval_cap = min(ev.batch_size, MAX_TIMED_IMAGES)
    # a few distinct images, repeated for larger batches: a method's on_fit_start
    # analyses every image of the split (msabn-cr: a forward pass each)
    split = synthetic_split(dataclasses.replace(info, image_size=size),
                            max(min(train_cap, FIRST_BATCH * GROWTH), FIRST_BATCH))
    model = train.build_method(name, mcfg, split, **train.method_options(name, mcfg))
    dev.prepare(model, device)
    batch = dev.to_device(next(iter(data.loader(split, len(split), device))), device)
    if mcfg.train.epochs > 0:
        model.eval()
        model.on_fit_start(split, device)
        optimizers = model.configure_optimizers(mcfg.train)
        model.train()

        def step_seconds(n: int) -> float:
            part = _repeated(batch, n)

            def step() -> None:
                with dev.autocast(device, mcfg.precision):
                    model.training_step(part, optimizers)

            return _timed(step, device, TIMED_STEPS)

        p.train_timing = Timing(size, tuple(ladder(step_seconds, train_cap)))
        p.step_seconds = p.train_timing.seconds(bs, info.image_size)
        p.train_seconds = p.step_seconds * (n_train // bs) * mcfg.train.epochs
        del optimizers, step_seconds  # their state and the gradients: not needed below
        model.zero_grad(set_to_none=True)
    model.eval()
    key = (type(model).forward, tuple(tuple(q.shape) for q in model.parameters()), size,
           ev.precision, eval_cap)
    if key not in forwards:
        scoring = fold.folded(model)  # what the evaluation's forward passes run

        def forward_seconds(n: int) -> float:
            x = _repeated(batch, n)["image"]

            def forward() -> None:
                with torch.no_grad(), dev.autocast(device, ev.precision):
                    scoring(x)

            return _timed(forward, device, TIMED_STEPS)

        forwards[key] = Timing(size, tuple(ladder(forward_seconds, eval_cap)))
    p.eval_timing = forwards[key]
    n = p.eval_timing.batches[-1]
    per_image = p.forward_seconds = p.eval_timing.seconds(n, info.image_size) / n
    if info.multi_label:  # no causal lens: an explanation (two) per present class
        p.eval_seconds = per_image * n_test * (
            5 + 2 * (MULTI_LABEL_EXPLAINED if info.has_boxes else 0))
        return
    p.eval_seconds = per_image * (5 * n_test + causal_forwards(
        causal_steps, len(model.parameter_groups()), ev.sensitivity_n)
        * min(ev.causal_n, n_test))


#: the classes a multi-label test image is explained for, as the estimate takes it
MULTI_LABEL_EXPLAINED = 3


#: ROAD's forward passes per image: MoRF and LeRF at 10, 20, ..., 90 %
ROAD_FORWARDS = 18


def causal_forwards(causal_steps: int, groups: int, sensitivity_n: int) -> int:
    """Forward-pass equivalents per image of the causal subset (an explanation counted
    as two: a forward and a backward pass): the two causal curves (one forward per step),
    the confidence change (two, shared by avg_drop and increase_conf), ROAD
    (:data:`ROAD_FORWARDS`), the randomisation test (2 G - 1 explanations for G
    parameter groups) and the robustness lenses (``sensitivity_n`` explanations). The
    rest of the split costs about 5 an image: the prediction, the explanations of the
    ground-truth class and of another class (class_sensitivity)."""
    return (2 * (causal_steps + 1) + 2 + ROAD_FORWARDS + 2 * (2 * groups - 1)
            + 2 * sensitivity_n)


@dataclass(frozen=True)
class RoarPlan:
    """``--roar``'s work: the fractions, the rows it runs on (at most), and the seconds
    to impute one image at every fraction of both modes."""

    fractions: tuple[float, ...]
    rows: int
    impute_seconds: float


#: images the imputation is timed on
IMPUTED_IMAGES = 4


def imputation_seconds(info: DatasetInfo, fractions: Sequence[float],
                       device: torch.device) -> float:
    """Seconds to impute one image at the real size at every fraction of ROAR and KAR
    (:func:`metrics.road.road_images`), timed on :data:`IMPUTED_IMAGES` smooth
    synthetic images with smooth maps (the fastest of two calls after one untimed)."""
    from metrics import road

    h, w = info.image_size
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.rand(IMPUTED_IMAGES, 4, 8, 8, generator=g), size=(h, w), mode="bilinear")
    x, maps = smooth[:, :3].to(device), smooth[:, 3:].to(device)
    fr = [*fractions, *(1 - t for t in fractions)]

    def call() -> None:
        road.road_images(x, maps, fr, ("morf",), 0.01, 0)

    return _timed(call, device, 2) / IMPUTED_IMAGES


def _px(size: tuple[int, int]) -> str:
    return f"{size[0]} px" if size[0] == size[1] else f"{size[0]}x{size[1]} px"


def _span(values: Sequence[int]) -> str:
    """``2-64`` (or ``16`` when all are equal)."""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def timing_note(plans: list[Plan], info: DatasetInfo) -> str:
    """What was timed and what it was scaled to, e.g. "training steps timed at batch
    2-8, 112 px and scaled to batch 16, 352 px; evaluation forwards timed at batch 2-32,
    112 px and scaled to 352 px"."""
    real = _px(info.image_size)
    parts = []
    trained = [(p, p.train_timing) for p in plans if p.train_timing is not None]
    if trained:
        sizes = ", ".join(sorted({_px(t.size) for _, t in trained}))
        text = (f"training steps timed at batch {_span([n for _, t in trained for n in t.batches])}"
                f", {sizes}")
        if all(t.batches[-1] == p.batch_size and t.size == info.image_size for p, t in trained):
            parts.append(f"{text} (the real scale)")
        else:
            parts.append(f"{text} and scaled to batch {_span([p.batch_size for p, _ in trained])}"
                         f", {real}")
    evaluated = [p.eval_timing for p in plans if p.eval_timing is not None]
    if evaluated:
        sizes = ", ".join(sorted({_px(t.size) for t in evaluated}))
        text = (f"evaluation forwards timed at batch "
                f"{_span([n for t in evaluated for n in t.batches])}, {sizes}")
        parts.append(text if all(t.size == info.image_size for t in evaluated)
                     else f"{text} and scaled to {real}")
    return "; ".join(parts)


def _side(size: tuple[int, int]) -> str:
    """``H`` px for a square input, ``W x H`` otherwise."""
    return str(size[0]) if size[0] == size[1] else f"{size[1]} x {size[0]}"


def report(plans: list[Plan], cfg: RunConfig, info: DatasetInfo, sizes: tuple[int, int],
           official: bool, device: torch.device, seeds: int,
           say: Callable[[str], None] = print, sanity: Sequence[str] = (),
           roar: RoarPlan | None = None) -> None:
    """Print the plan: the run, the dataset, one line per method, the opt-in checks
    that train again (``sanity``: ``--sanity``'s; ``roar``: ``--roar``'s), the total."""
    where = " (official sizes: the data were not found)" if official else ""
    say(f"dry run: preset {cfg.preset}, dataset {cfg.dataset}{where}: {sizes[0]} train / "
        f"{sizes[1]} test images, {info.num_classes} classes, {_side(info.image_size)} px; "
        f"backbone {cfg.backbone}{' (pretrained)' if cfg.pretrained else ''}; device "
        f"{device}, training in {cfg.precision}; {seeds} seed(s)")
    say(f"  {'method':<18}{'from':<14}{'epochs':>7}{'batch':>7}{'lr':>9}  "
        f"{'LR steps at':<14}{'step':>10}{'training':>13}{'evaluation':>13}")
    total = 0.0
    for p in plans:
        steps = "cosine" if p.cosine else ",".join(map(str, p.milestones)) or "-"
        timed = p.step_seconds > 0 or p.eval_seconds > 0
        say(f"  {p.name:<18}{p.parent or '-':<14}{p.epochs:>7}{p.batch_size:>7}"
            f"{p.lr:>9g}  {steps:<14}"
            + (f"{duration(p.step_seconds):>10}{duration(p.train_seconds):>13}"
               f"{duration(p.eval_seconds):>13}" if timed else ""))
        total += p.train_seconds + p.eval_seconds
    if "data" in sanity:  # every method trained again; an explanation per causal image
        n_causal = min(cfg.eval.causal_n, sizes[1])
        extra = sum(p.train_seconds + 2 * p.forward_seconds * n_causal for p in plans)
        say(f"  --sanity data: every method trained again on permuted labels, "
            f"{duration(extra)}")
        total += extra
    if roar is not None:  # per row: 2F trainings of the retrained model, the images
        from harness.roar import RETRAINED

        base = next(p for p in plans if p.name == RETRAINED)
        n_img = sum(sizes)
        per_row = (2 * len(roar.fractions) * base.train_seconds
                   + n_img * (roar.impute_seconds + 2 * 2 * base.forward_seconds))
        say(f"  --roar: {RETRAINED} trained {2 * len(roar.fractions)} times for each of at "
            f"most {roar.rows} rows, {n_img} images imputed at {2 * len(roar.fractions)} "
            f"fractions each: {duration(per_row * roar.rows)}")
        total += per_row * roar.rows
    if any(p.step_seconds or p.eval_seconds for p in plans):
        say(f"  estimated wall time: {duration(total * seeds)} on {device} (data loading "
            "not included)")
        say(f"  {timing_note(plans, info)} (synthetic images; a call taken to cost "
            "a + b x images x pixels, a and b fitted per method: it tells minutes from "
            "days)")


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
                           image_size=(size, int(kw.get("width") or size)),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                           has_boxes=bool(meta.get("has_boxes")),
                           multi_label=bool(meta.get("multi_label")))
        print(f"  (data not found: {err}; using the official sizes)")
        return info, (n_train, n_test), True

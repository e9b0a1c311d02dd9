"""The evaluation loop: one pass over the test split feeding every applicable metric.

Per batch the evaluator computes the prediction, the explanation of the ground-truth
class (localisation metrics) and, for the first ``causal_n`` test images, the
explanation of the predicted class (RISE protocol for insertion/deletion). Explanation
time is measured separately, side by side with a plain forward pass on the same batch.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from harness import device as dev
from harness import distributed, fold
from harness.config import EvalConfig
from harness.data import Split, loader
from harness.errors import UserError
from harness.progress import bars
from harness.stats import SeedScores
from methods.base import Method, Output
from methods.explainers import Explainer
from methods.explainers import build as build_explainer
from metrics import causal, lenses, randomisation, tuning
from metrics.base import METRICS, CurveMetric, EvalBatch, PerImageMetric
from metrics.confusion import target_pair
from metrics.localization import normalize
from metrics.standard import ROAD, CausalAUC
from metrics.tuning import BatchTuner


@dataclass
class MethodResult:
    """One evaluated (method, explainer) row under one training seed.

    Attributes:
        values: each metric's value on this seed (per-image aggregate) and the timing
            columns.
        per_image: each metric's per-image scores with classes and test-split ids (what
            intervals, seed aggregation and paired tests are computed from).
        per_class: metrics aggregated as the mean of per-class means.
        curves: mean insertion/deletion curve of each causal metric.
        gallery: maps of the first test images for the report.
        causal_passes: how the causal metrics' forward passes ran, when they ran here
            (empty when none did, e.g. all read from the evaluation cache): the model
            kind, the engine, the streams, the forward batch that scored most images
            (``forward_batch``) and the images scored at each size.
    """

    method: str
    seed: int
    values: dict[str, float]
    per_image: dict[str, SeedScores]
    per_class: set[str]
    curves: dict[str, np.ndarray]
    n_test: int
    n_causal: int
    gallery: dict[str, np.ndarray] = field(default_factory=dict)
    explainer: str = "native"
    causal_passes: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> str:
        """The leaderboard row's id: the method, or ``method+explainer`` for another
        explainer applied to the method's trained model."""
        return row_id(self.method, self.explainer)


def row_id(method: str, explainer: str = "native") -> str:
    """``method`` for its own explanation, ``method+explainer`` otherwise."""
    return method if explainer == "native" else f"{method}+{explainer}"


#: what a result holds besides the metrics: the timing columns and the gallery
TIMING, GALLERY = "timing", "gallery"


def finite(maps: torch.Tensor, what: str) -> torch.Tensor:
    """``maps`` with NaN / inf values set to 0 and one warning line: a method whose maps
    break in places is scored on the rest rather than ending the run (the metric
    functions refuse non-finite maps)."""
    ok = torch.isfinite(maps)
    if bool(ok.all()):
        return maps
    n = int((~ok.flatten(1).all(1)).sum())
    print(f"warning: {what}: {n} map(s) with NaN or inf values in this batch; those values "
          "are scored as 0", file=sys.stderr)
    return torch.where(ok, maps, torch.zeros_like(maps))


def applicable_metrics(split: Split, cfg: EvalConfig, only: set[str] | None = None, *,
                       permuted: bool = False) -> dict[str, PerImageMetric]:
    """Fresh accumulators for every registered metric the dataset supports (its boxes,
    single- or multi-label targets; those in ``only``, when given); the
    data-randomisation columns when ``permuted`` (a model trained on permuted labels is
    given)."""
    have = {"bbox"} if split.info.has_boxes else set()
    have |= set(split.info.extra_boxes)
    task = "multi" if split.info.multi_label else "single"
    out = {}
    for entry in METRICS:
        spec = entry.obj
        if spec.factory is not None and task in spec.tasks and set(spec.needs_boxes) <= have and (
                permuted or not spec.needs_permuted) and (
                only is None or spec.name in only):
            out[spec.name] = spec.factory(cfg)
    return out


def misclassified(method: Method, split: Split, device: torch.device,
                  batch_size: int = 250, precision: str = "fp32") -> torch.Tensor:
    """Bool ``[N]`` over the split's samples: where ``method``'s prediction is wrong."""
    method.eval()
    wrong = torch.zeros(len(split.dataset), dtype=torch.bool)  # type: ignore[arg-type]
    for batch in loader(split, batch_size, device):
        batch = dev.to_device(batch, device)
        with torch.no_grad(), dev.autocast(device, precision):  # as in evaluate()
            pred = method(batch["image"]).logits.argmax(1)
        wrong[batch["index"].cpu()] = (pred != batch["label"]).cpu()
    return wrong


@dataclass(frozen=True)
class RowSpec:
    """What one evaluated row is: a trained model under its name, the explainer, the
    training seed, and what keys it in the evaluation cache
    (:func:`harness.evalcache.evaluate_cached`)."""

    method: Method
    name: str
    explainer: str = "native"
    seed: int = 0
    #: the checkpoint's key and the weights' digest (computed when empty)
    checkpoint: str = ""
    weights: str = ""
    #: the method trained on permuted labels (``--sanity data``) and its digest
    permuted: Method | None = None
    permuted_weights: str = ""
    #: the model's own columns (accuracy, attention mechanism) in this row; None: in
    #: its ``native`` row (a model trained elsewhere has none: its first row)
    model_columns: bool | None = None


def evaluate(row: RowSpec, split: Split, cfg: EvalConfig, device: torch.device, *,
             precision: str = "fp32", comb_subset: torch.Tensor | None = None,
             only: set[str] | None = None, parts: tuple[str, ...] = (TIMING, GALLERY),
             shard: bool = True, progress: bool = True) -> MethodResult:
    """Score ``row.method``, explained by ``row.explainer`` (a registered explainer,
    :mod:`methods.explainers`, applied to the trained model; ``native`` is the
    method's own), on the test ``split`` with every applicable metric.

    Args:
        row: the trained model, its name, explainer and training seed, and with
            ``--sanity data`` the same method trained on permuted labels
            (``row.permuted``, :func:`harness.data.permuted_labels`), explained alike:
            the data-randomisation columns are scored against it. Its keys
            (``checkpoint``, ``weights``) are :func:`harness.evalcache.evaluate_cached`'s.
        precision: the forward passes' arithmetic (:func:`harness.device.autocast`);
            explanations are computed in float32.
        comb_subset: bool ``[N]`` over the test samples, the ``comb`` insertion
            protocol's images (those the reference method misclassifies).
        only: compute these metrics alone (None: every applicable one); the
            evaluation cache asks for what it does not hold.
        parts: which of the timing columns and the gallery to produce.
        shard: under torchrun, score each rank's share of the test images
            (:func:`harness.distributed.shard`) and gather the per-image scores back in
            image order, so that every number, interval and paired test is a single
            process's; the gallery and the timing are rank 0's (the others return
            neither). False: this process scores everything it is asked for.

    The causal metrics score the test images with index below ``causal_n`` (in a single
    process: the first ``causal_n`` of the split). The steps: :class:`Evaluation`
    (the scoring model, its engine and the metrics), a pass over the test batches
    (:meth:`Evaluation.score`, :meth:`Evaluation.add_gallery`), then
    :meth:`Evaluation.result`.
    """
    method, explainer = row.method, row.explainer
    world = distributed.current()
    job = Evaluation(method, explainer, split, cfg, device, precision,
                     sharded=shard and world.size > 1, only=only, permuted=row.permuted,
                     label=row_id(row.name, explainer))
    n_split = len(split.dataset)  # type: ignore[arg-type]
    batches = loader(split, cfg.batch_size, device, dataset=Subset(
        split.dataset, distributed.shard(n_split)) if job.sharded else None)
    gallery_n = job.cfg.gallery_n if GALLERY in parts and not job.sharded else 0
    last = max(gallery_n, job.images_needed(n_split))
    for batch in tqdm(batches, desc=f"{job.label} eval", leave=False,
                      disable=not (bars(progress) and world.main), dynamic_ncols=True):
        # images come in index order, a rank's share too: the rest are not needed
        if int(batch["index"][0]) >= last:
            break
        batch = dev.to_device(batch, device)
        sal, logits = job.score(batch, comb_subset)
        need = gallery_n - job.gallery_size()
        if need > 0:
            job.add_gallery(batch["image"][:need], batch["label"][:need], sal[:need],
                            logits[:need], batch["index"][:need])
    values, per_image, curves = job.collect()
    if TIMING in parts and world.main:
        values.update(time_explanation(method, job.ex.explain, batches, device,
                                       cfg.timing_batches))
    gallery = job.gallery
    if job.sharded and GALLERY in parts and world.main:  # the first test images, unsharded
        first = evaluate(row, split, cfg, device, precision=precision, only=set(),
                         parts=(GALLERY,), shard=False, progress=progress).gallery
        gallery = {k: [torch.from_numpy(v)] for k, v in first.items()}
    return MethodResult(row.name, row.seed, values, per_image,
                        {k for k, m in job.metrics.items() if m.per_class}, curves,
                        n_test=n_split, n_causal=min(n_split, cfg.causal_n),
                        gallery={k: torch.cat(v).numpy() if v else np.zeros((0, 1, 1))
                                 for k, v in gallery.items()}
                        if GALLERY in parts and (world.main or not job.sharded) else {},
                        explainer=explainer, causal_passes=job.passes())


class Evaluation:
    """One evaluation's machinery: the explainer, the scoring copy of the model (batch
    norm folded into the convolutions: same outputs, fewer kernels; explanations and
    class maps use the method itself), the engine and forward-batch tuner of the
    metrics that score perturbed images, the metrics' accumulators and the gallery."""

    def __init__(self, method: Method, explainer: str, split: Split, cfg: EvalConfig,
                 device: torch.device, precision: str, *, sharded: bool,
                 only: set[str] | None, permuted: Method | None, label: str) -> None:
        method.eval()
        self.method, self.split, self.device, self.precision = method, split, device, precision
        self.sharded, self.label = sharded, label
        self.ex: Explainer = build_explainer(explainer, method)
        self.scoring = fold.folded(method)
        self.kind = model_kind(method, precision)
        self.box_names = [b for b in ("bbox", *split.info.extra_boxes)
                          if split.info.has_boxes or b != "bbox"]
        if split.info.multi_object:  # every object, for the metrics that use several
            self.box_names.append("objects")
        self.cfg = self.engine_config(cfg)
        self.metrics = {k: m.to(device) for k, m in applicable_metrics(
            split, self.cfg, only, permuted=permuted is not None).items()}
        self.causal_logits: Callable[[torch.Tensor], torch.Tensor] = self.logits_of
        self.tuner: BatchTuner | None = None
        # a forward batch and an engine for the metrics that score perturbed images
        if any(isinstance(m, (CausalAUC, ROAD)) for m in self.metrics.values()):
            self.tuner = forward_tuner(self.cfg, self.sample, key=(
                self.kind, self.cfg.engine, self.cfg.compile, self.cfg.streams))
            self.causal_logits = causal_engine(self.scoring, self.cfg, device, precision,
                                               split.info.image_size, default=self.logits_of,
                                               batch=self.tuner.current)
        self.used_before = self.tuner.usage() if self.tuner is not None else {}
        self.explanations = RandomisedExplainers.explain_fn(self.ex, f"{label} explanations")
        self.randomised = (RandomisedExplainers(method, explainer, self.cfg.lens_seed, label)
                           if method.parameter_groups() else None)
        self.permuted_explain = None if permuted is None else RandomisedExplainers.explain_fn(
            build_explainer(explainer, permuted.eval()),
            f"{label} trained on permuted labels")
        self.gallery: dict[str, list[torch.Tensor]] = {"saliency": []}

    @property
    def sample(self) -> torch.Tensor:
        return torch.zeros(3, *self.split.info.image_size, device=self.device)

    def forward(self, z: torch.Tensor) -> Output:
        with dev.autocast(self.device, self.precision):
            return self.scoring(dev.channels_last(z))  # type: ignore[no-any-return]

    def logits_of(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward(z).logits

    def engine_config(self, cfg: EvalConfig) -> EvalConfig:
        """``cfg`` with the forward batch (compiled: one shape, chosen up front; timed on
        rank 0 and shared when sharded), the stream count and the engine resolved."""
        if cfg.forward_batch <= 0 and cfg.compile:
            def timed() -> int:
                return tuning.choose_batch(self.logits_of, self.sample, key=(self.kind,))

            cfg = dataclasses.replace(cfg, forward_batch=distributed.share(timed)
                                      if self.sharded else timed())
        return dataclasses.replace(
            cfg, streams=causal_streams(cfg, self.device, self.sample),
            engine=dev.resolve_engine(cfg.engine, self.device, self.precision, cfg.compile))

    def images_needed(self, n_split: int) -> int:
        """How many of the first test images the metrics score (those scoring the first
        ``causal_n`` alone need no more)."""
        if not self.metrics:
            return 0
        if all("causal_n" in METRICS.get(k).options for k in self.metrics):
            return self.cfg.causal_n
        return n_split

    def class_maps(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor | None:
        """The explainer's class maps in float32, checked finite."""
        assert self.ex.class_maps is not None
        with torch.no_grad():  # in float32, as the explanations
            maps = self.ex.class_maps(z, classes)
        return None if maps is None else finite(maps.float(), f"{self.label} class maps")

    def score(self, batch: dict[str, Any], comb_subset: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update every metric with one batch; returns (explanations, logits)."""
        x, y = batch["image"], batch["label"]
        with torch.no_grad():
            out = self.forward(x)
            logits = out.logits.float()
            sal = self.explanations(x, y)
            with dev.autocast(self.device, self.precision):  # as the logits compared to
                fixed = (self.scoring.fixed_attention_logits(out, batch["bbox"],
                                                             tuple(x.shape[-2:]))
                         if "bbox" in self.box_names else None)
        ev = EvalBatch(images=x, labels=y, logits=logits, saliency=sal,
                       boxes={b: batch[b] for b in self.box_names if b in batch},
                       model=self.causal_logits, forward_batch=self.tuner,
                       pointing_tolerance=self.split.info.pointing_tolerance,
                       fixed_logits=None if fixed is None else fixed.float(),
                       comb_mask=None if comb_subset is None
                       else comb_subset.to(self.device)[batch["index"]],
                       class_maps=ClassMapMemo(self.class_maps, x)
                       if self.ex.class_maps is not None else None,
                       indices=batch["index"], original_sizes=batch.get("orig_size"),
                       explain=self.explanations, randomised=self.randomised,
                       permuted=self.permuted_explain, input_std=tuple(self.split.info.std),
                       targets=batch.get("labels"), object_labels=batch.get("object_labels"))
        if not self.split.info.multi_label:  # no causal metric scores multi-label data
            self.add_causal(ev, batch["index"], sal, logits)
        for m in self.metrics.values():
            m.update(ev)
        return sal, logits

    def add_causal(self, ev: EvalBatch, index: torch.Tensor, sal: torch.Tensor,
                   logits: torch.Tensor) -> None:
        """The causal subset (the batch's images with index below ``causal_n``, a
        prefix), explained for the predicted class."""
        n_c = int((index < self.cfg.causal_n).sum())
        if not n_c:
            return
        x, y = ev.images, ev.labels
        pred = logits[:n_c].argmax(1)
        sal_c = sal[:n_c].clone()
        wrong = pred != y[:n_c]
        if wrong.any():
            sal_c[wrong] = self.explanations(x[:n_c][wrong], pred[wrong])
        ev.causal_images, ev.causal_saliency, ev.causal_classes = x[:n_c], sal_c, pred

    def gallery_size(self) -> int:
        return sum(len(s) for s in self.gallery["saliency"])

    def add_gallery(self, x: torch.Tensor, y: torch.Tensor, sal: torch.Tensor,
                    logits: torch.Tensor, index: torch.Tensor) -> None:
        """The report's pictures of these images: the maps, the class pair, the class
        maps' confusion, the cascade and the permuted model's map of the first."""
        g = self.gallery
        g["saliency"].append(normalize(sal).cpu())
        if logits.shape[1] >= 2:  # class_sensitivity's pair, as the metric draws it
            other = lenses.other_classes(y, logits.shape[1], index, self.cfg.lens_seed)
            pair = torch.stack([sal[:, 0], self.explanations(x, other)[:, 0]], 1)
            g.setdefault("class_pair_maps", []).append(
                lenses.by_max(pair.abs().flatten(0, 1)).view_as(pair).cpu())
            g.setdefault("class_pair_classes", []).append(torch.stack([y, other], 1).cpu())
        if self.ex.class_maps is not None:
            for k, v in confusion_gallery(self.class_maps, x, logits, y).items():
                g.setdefault(k, []).append(v)
        if "mprt_cascade" not in g and self.randomised is not None:  # the first image
            g["mprt_cascade"] = [cascade_gallery(sal[:1], self.randomised(), x[:1], y[:1])]
        if self.permuted_explain is not None and "permuted_pair" not in g:
            pair = torch.cat([sal[:1], self.permuted_explain(x[:1], y[:1])], 1).abs()
            g["permuted_pair"] = [lenses.by_max(pair.flatten(0, 1)).view_as(pair).cpu()]

    def collect(self) -> tuple[dict[str, float], dict[str, SeedScores], dict[str, np.ndarray]]:
        """Every metric's value, per-image scores and mean curve (gathered over the
        ranks when sharded)."""
        values: dict[str, float] = {}
        per_image: dict[str, SeedScores] = {}
        curves: dict[str, np.ndarray] = {}
        for k, m in self.metrics.items():
            if self.sharded:
                m.gather()
            scores, classes = m.per_image()
            per_image[k] = SeedScores(scores, classes, m.image_ids())
            values[k] = m.aggregate(scores, classes)
            if isinstance(m, CurveMetric) and m.curves:
                curves[k] = m.mean_curve()
        return values, per_image, curves

    def passes(self) -> dict[str, Any]:
        """How the causal metrics' forward passes ran (model kind, engine, streams,
        images per forward batch); empty when none ran."""
        if self.tuner is None:
            return {}
        used = tuning.summary(self.used_before, self.tuner.usage())
        if not used:
            return {}
        return {"model_kind": self.kind, "engine": engine_label(self.cfg),
                "streams": self.cfg.streams, **used}


class _Logits(torch.nn.Module):
    """A method's logits alone (what an inference engine exports)."""

    def __init__(self, method: torch.nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method(x).logits  # type: ignore[no-any-return]


def causal_streams(cfg: EvalConfig, device: torch.device, sample: torch.Tensor) -> int:
    """``eval.streams`` resolved: as set, or (0) :func:`metrics.tuning.choose_streams`
    at ``eval.forward_batch`` (0: the tuner's first size) for inputs like ``sample``;
    one with ``eval.compile``.

    Raises:
        UserError: a negative count, or more than one stream with ``eval.compile``.
    """
    if cfg.streams < 0:
        raise UserError(f"eval.streams must be >= 0 (0: chosen for the device), got "
                        f"{cfg.streams}")
    if cfg.compile:
        if cfg.streams > 1:
            raise UserError("eval.streams > 1 and --compile exclude each other: compiled "
                            "kernels keep the thread count they were compiled with")
        return 1
    if cfg.streams:
        return cfg.streams
    batch = cfg.forward_batch or tuning.start_size(tuning.candidates(sample), device)
    return tuning.choose_streams(batch, sample)


def model_kind(method: torch.nn.Module, precision: str) -> str:
    """What the forward batch is tuned for: the model's class, size and arithmetic
    (models of one kind run at the same pace)."""
    n_params = sum(p.numel() for p in method.parameters())
    return f"{type(method).__name__} ({n_params / 1e6:.3g}M parameters, {precision})"


def forward_tuner(cfg: EvalConfig, sample: torch.Tensor, key: tuple[object, ...]
                  ) -> BatchTuner:
    """The causal passes' forward batch for inputs like ``sample``: ``eval.forward_batch``
    when set (or chosen for ``--compile``), else this process's tuner for ``key``
    (models of one kind share it: each goes on where the last left off), over the sizes
    the memory budget allows ``eval.streams`` passes at once."""
    if cfg.forward_batch > 0:
        return BatchTuner([cfg.forward_batch], cfg.forward_batch, adaptive=False)
    full_key = (*key, tuple(sample.shape), str(sample.device), str(sample.dtype))

    def make() -> BatchTuner:
        sizes = tuning.candidates(sample, streams=cfg.streams)
        return BatchTuner(sizes, tuning.start_size(sizes, sample.device),
                          prefer_large=sample.device.type == "cuda")

    return tuning.tuner_for(full_key, make)


def engine_label(cfg: EvalConfig) -> str:
    """The causal passes' engine as recorded: ``torch``, ``torch.compile`` or
    ``onnxruntime``."""
    return "torch.compile" if cfg.compile else cfg.engine


def causal_engine(scoring: torch.nn.Module, cfg: EvalConfig, device: torch.device,
                  precision: str, image_size: tuple[int, int], *,
                  default: Callable[[torch.Tensor], torch.Tensor], batch: int
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """What computes the causal metrics' logits of perturbed images: ``default`` (the
    eager scoring copy), or with ``eval.compile`` its ``torch.compile`` specialised to
    ``batch`` images, or with ``eval.engine: onnxruntime`` its ONNX Runtime session
    (CPU, fp32 only; any number of images a call; each of the ``eval.streams`` passes
    at once with its share of the threads). Predictions and explanations stay eager.

    Raises:
        UserError: an unknown engine, both ``compile`` and ``onnxruntime``, or ONNX
            Runtime with an evaluation precision other than fp32.
    """
    if dev.check_engine(cfg.engine) == "onnxruntime":
        if cfg.compile:
            raise UserError("--compile and --engine onnxruntime exclude each other: "
                            "choose one")
        if precision != "fp32":
            raise UserError(f"--engine onnxruntime computes in fp32; the evaluation "
                            f"precision is {precision}")
        sample = torch.zeros(3, *image_size, device=device)
        return dev.onnx_logits(_Logits(scoring).eval(), batch, sample,
                               threads=causal.stream_threads(cfg.streams))
    if not cfg.compile:
        return default
    compiled = dev.compiled_logits(lambda z: scoring(dev.channels_last(z)).logits, batch)
    if precision == "fp32":
        return compiled

    def run(z: torch.Tensor) -> torch.Tensor:
        with dev.autocast(device, precision):
            return compiled(z)
    return run


class RandomisedExplainers:
    """The model-parameter randomisation's explainers of one row, built on first call
    (copies of the model, :func:`metrics.randomisation.randomised_models`, from the
    lens seed): (mode, group, explain) per step, explain as the evaluator's (float32,
    no gradient kept, non-finite values scored as 0). A step that is the previous
    one's model (the first of each scheme) shares its explain function."""

    def __init__(self, method: Method, explainer: str, seed: int, label: str) -> None:
        self.method, self.explainer, self.seed, self.label = method, explainer, seed, label
        self.steps: list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor],
                                                  torch.Tensor]]] | None = None

    def __call__(self) -> list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor],
                                                        torch.Tensor]]]:
        if self.steps is None:
            models = randomisation.randomised_models(
                self.method, self.method.parameter_groups(), self.seed)
            made: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
            self.steps = []
            for mode, group, model in models:
                if id(model) not in made:
                    assert isinstance(model, Method)  # a copy of the method
                    made[id(model)] = self.explain_fn(build_explainer(self.explainer, model),
                                                      f"{self.label} randomised ({group})")
                self.steps.append((mode, group, made[id(model)]))
        return self.steps

    @staticmethod
    def explain_fn(ex: Explainer, what: str) -> Callable[[torch.Tensor, torch.Tensor],
                                                         torch.Tensor]:
        """``ex.explain`` as the evaluator's: float32, no gradient kept, non-finite
        values scored as 0 (with one warning naming ``what``)."""
        def run(z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return finite(ex.explain(z, classes).float(), what)
        return run


def cascade_gallery(original: torch.Tensor, steps: list[tuple[str, str, Any]],
                    x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, G + 1, H, W]``: the maps of images ``x`` for classes ``y`` by the trained
    model (``original``) and after each step of the cascade, |map| each divided by its
    maximum (Adebayo et al.'s Fig. 2)."""
    maps = [original] + [explain(x, y) for mode, _g, explain in steps
                         if mode == randomisation.MODES[0]]
    out = torch.cat([m.abs() for m in maps], 1)
    peak = out.flatten(2).amax(2).clamp_min(1e-12)[..., None, None]
    return (out / peak).cpu()


class ClassMapMemo:
    """The class maps of one batch's images ``x``, each (image, classes) row computed
    once: the metrics ask for the (target, most confusing) and the (prediction,
    runner-up) pairs, which coincide on every correctly classified image."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None],
                 x: torch.Tensor) -> None:
        self.fn, self.x = fn, x
        self.classes: torch.Tensor | None = None
        self.maps: torch.Tensor | None = None

    def __call__(self, classes: torch.Tensor) -> torch.Tensor | None:
        if self.classes is None or self.classes.shape != classes.shape:
            self.classes, self.maps = classes, self.fn(self.x, classes)
            return self.maps
        if self.maps is None:
            return None
        new = ~(self.classes == classes).all(1)
        out = self.maps.clone()
        if bool(new.any()):
            fresh = self.fn(self.x[new], classes[new])
            assert fresh is not None
            out[new] = fresh
        return out


def confusion_gallery(class_maps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None],
                      x: torch.Tensor, logits: torch.Tensor,
                      labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the report shows of ``siou_confusion`` for images ``x``: the target and
    most confusing classes (``confusion_classes`` ``[n,2]``) and their maps, negatives
    clipped, scaled by the pair's common maximum (relative strength kept, as the metric
    sees it) and resized to the input (``confusion_maps`` ``[n,2,H,W]``). The scores
    are the metric's per-image values. Empty if the method returns no maps."""
    classes = target_pair(logits, labels)
    maps = class_maps(x, classes)
    if maps is None:
        return {}
    m = maps.clamp_min(0)
    m = m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return {"confusion_maps": m.cpu(), "confusion_classes": classes.cpu()}


def time_explanation(method: Method, explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     loader: DataLoader, device: torch.device,  # type: ignore[type-arg]
                     n_batches: int) -> dict[str, float]:
    """``explain_ms`` (per image, batched) and ``explain_overhead`` (explain / forward),
    measured alternately on the same batches after one warm-up of each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fwd_t, exp_t, n_img = 0.0, 0.0, 0
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        batch = dev.to_device(batch, device)
        x, y = batch["image"], batch["label"]
        with torch.no_grad():
            if i == 0:
                method(x)
                explain(x, y)
            sync()
            t0 = time.perf_counter()
            method(x)
            sync()
            t1 = time.perf_counter()
            explain(x, y)
            sync()
            t2 = time.perf_counter()
        fwd_t += t1 - t0
        exp_t += t2 - t1
        n_img += len(y)
    if n_img == 0:
        return {"explain_ms": float("nan"), "explain_overhead": float("nan")}
    return {"explain_ms": 1000.0 * exp_t / n_img, "explain_overhead": exp_t / max(fwd_t, 1e-12)}

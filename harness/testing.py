"""Conformance checks for plugin authors: the contract the project checks on its own
registries, callable from any test suite.

    from harness.testing import check_method, check_explainer, check_metric, check_dataset

    def test_my_method():
        import my_plugin  # registers "gate"
        check_method("gate")

Each check raises ``AssertionError`` naming what broke the contract and returns what it
saw. They run on the CPU on the embedded dataset's smoke size (seconds):

* :func:`check_method`: builds (and its parent's weights load), one training step
  changes parameters with finite logs, ``forward`` gives named outputs of the right
  shape, ``explain`` ``[B,1,H,W]`` finite and >= 0 without touching inputs or
  gradients, class maps ``[B,C,h,w]``, parameter groups that partition the parameters
  and can be re-initialised, no hook left, nothing stashed on a module in ``forward``;
* :func:`check_explainer`: on every registered method it fits, maps of the contract's
  shape and range, no hook left, parameters' gradients as they were;
* :func:`check_metric`: builds from the evaluation settings, accepts an evaluation
  batch, computes within its bounds, keeps per-image scores with classes and image ids
  in list states reduced by concatenation (what distributed gathering needs), resets;
* :func:`check_dataset`: both splits build, samples hold a normalised ``[3,H,W]``
  image, a label in range, the index, and boxes inside the image where it has them;
  a multi-label dataset's, 0/1 ``labels`` and ``object_labels`` beside ``objects``;
* :func:`check_backbone`: builds and splits into ``features`` / ``last_stage`` / ``fc``
  whose composition is the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from harness import backbones, config, data, train
from harness.config import EvalConfig, RunConfig
from methods.base import METHODS, Method, Output
from methods.explainers import NotApplicable
from methods.explainers import build as build_explainer
from metrics.base import METRICS, EvalBatch, PerImageMetric
from metrics.randomisation import check_groups

#: images of a checked batch
BATCH = 4


def smoke() -> tuple[RunConfig, data.Split]:
    """The smoke preset and its training split (embedded data, 64 images)."""
    cfg = config.resolve("smoke")
    return cfg, data.build(cfg.dataset, "train", **cfg.dataset_kwargs)


def hooks(module: nn.Module) -> int:
    """Hooks registered on ``module``'s submodules and globally."""
    from torch.nn.modules import module as mod

    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            + len(m._backward_pre_hooks) for m in module.modules())
    return n + len(mod._global_forward_hooks) + len(mod._global_forward_pre_hooks) + len(
        mod._global_backward_hooks) + len(mod._global_backward_pre_hooks)


def _attributes(module: nn.Module) -> dict[int, set[str]]:
    """Each submodule's own attribute names (what ``forward`` must not add to)."""
    return {id(m): set(vars(m)) for m in module.modules()}


def _build(method: str | Callable[..., Method], cfg: RunConfig, split: data.Split) -> Method:
    if isinstance(method, str):
        return train.build_method(method, train.method_config(method, cfg), split)
    torch.manual_seed(cfg.seed)
    bb = backbones.build(cfg.backbone, split.info.num_classes, **cfg.backbone_kwargs)
    return method(bb, split.info)


def check_method(method: str | Callable[..., Method], *, cfg: RunConfig | None = None,
                 split: data.Split | None = None) -> Method:
    """The method contract for a registered name or a factory ``(backbone, info)``:
    it builds (and its parent's weights load); one training step changes parameters
    with finite logs; ``forward`` returns ``Output`` with ``[B,K]`` logits; ``explain``
    is ``[B,1,H,W]``, finite, >= 0, and leaves its input and the parameters' gradients
    alone; class maps are ``[B,C,h,w]``; the parameter groups partition the parameters
    and can be re-initialised; no hook is left; nothing is stored on a module in
    ``forward``.

    Returns the model after one training step."""
    if cfg is None or split is None:
        cfg, split = smoke()
    model = _build(method, cfg, split)
    what = method if isinstance(method, str) else getattr(method, "__name__", "method")
    assert isinstance(model, Method), f"{what}: builds {type(model).__name__}, not a Method"
    parent = METHODS.entry(method).meta.get("init_from") if isinstance(method, str) else None
    if parent:  # its parent's trained weights must load
        model.load_parent(_build(parent, cfg, split).state_dict())
    check_groups(model, model.parameter_groups())
    n_hooks, attrs = hooks(model), _attributes(model)
    batch = next(iter(DataLoader(split.dataset, batch_size=BATCH)))
    model.eval()
    model.on_fit_start(split, torch.device("cpu"))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = model.training_step(batch, model.configure_optimizers(cfg.train))
    assert logs and all(torch.isfinite(torch.tensor(float(v))) for v in logs.values()), \
        f"{what}: training logs {logs}"
    assert any(v.dtype.is_floating_point and not torch.equal(v, before[k])
               for k, v in model.state_dict().items()), \
        f"{what}: one training step changed no parameter"
    model.eval()
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, Output), f"{what}: forward returns {type(out).__name__}"
    assert out.logits.shape == (BATCH, split.info.num_classes), \
        f"{what}: logits {tuple(out.logits.shape)}"
    assert _attributes(model) == attrs, f"{what}: forward stored attributes on a module"
    model.zero_grad(set_to_none=True)
    _check_maps(what, model.explain, model.class_maps, x, y)
    assert all(p.grad is None for p in model.parameters()), \
        f"{what}: explain left gradients on the parameters"
    assert hooks(model) == n_hooks, f"{what}: hooks left behind"
    return model


def _check_maps(what: str, explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                class_maps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None,
                x: torch.Tensor, y: torch.Tensor) -> None:
    x0 = x.clone()
    maps = explain(x, y)
    assert maps.shape == (len(x), 1, *x.shape[-2:]), f"{what}: maps {tuple(maps.shape)}"
    assert maps.dtype.is_floating_point and bool(torch.isfinite(maps).all()), \
        f"{what}: maps not finite floats"
    assert bool((maps >= 0).all()), f"{what}: negative map values"
    assert torch.equal(x, x0) and not x.requires_grad, f"{what}: explain changed its input"
    cm = class_maps(x, torch.stack([y, (y + 1) % 2], 1)) if class_maps is not None else None
    if cm is not None:
        assert cm.dim() == 4 and cm.shape[:2] == (len(x), 2), \
            f"{what}: class maps {tuple(cm.shape)}"
        assert bool(torch.isfinite(cm).all()), f"{what}: class maps not finite"


def check_explainer(name: str, methods: list[str] | None = None, *,
                    cfg: RunConfig | None = None, split: data.Split | None = None
                    ) -> list[str]:
    """The explainer contract on every method of ``methods`` (default: every
    registered one) it fits: maps and class maps of the method contract's shapes, no
    hook left, gradients untouched; it fits at least one.

    Returns the methods it fits."""
    if cfg is None or split is None:
        cfg, split = smoke()
    batch = next(iter(DataLoader(split.dataset, batch_size=BATCH)))
    fitted = []
    for m in methods or METHODS.names():
        if METHODS.entry(m).meta.get("external"):
            continue
        model = _build(m, cfg, split).eval()
        n_hooks = hooks(model)
        try:
            ex = build_explainer(name, model)
        except NotApplicable:
            continue
        model.zero_grad(set_to_none=True)
        _check_maps(f"{name} on {m}", ex.explain, ex.class_maps, batch["image"],
                    batch["label"])
        assert all(p.grad is None for p in model.parameters()), \
            f"{name} on {m}: gradients left on the parameters"
        assert hooks(model) == n_hooks, f"{name} on {m}: hooks left behind"
        fitted.append(m)
    assert fitted, f"{name} fits none of {methods or 'the registered methods'}"
    return fitted


def check_metric(name: str, *, cfg: EvalConfig | None = None) -> PerImageMetric | None:
    """The metric contract for a registered column: it builds from the evaluation
    settings, takes an evaluation batch, keeps per-image scores, classes and ids in
    list states reduced by concatenation (what ``torchrun`` gathers), computes within
    its bounds and resets.

    Returns the metric; None for the evaluator's own columns (no factory)."""
    spec = METRICS.get(name)
    if spec.factory is None:
        return None
    run_cfg, split = smoke()
    cfg = cfg or run_cfg.eval
    metric = spec.factory(cfg)
    assert isinstance(metric, PerImageMetric), f"{name}: builds {type(metric).__name__}"
    for state, reduce in metric._reductions.items():  # what torchrun's gather needs
        assert isinstance(getattr(metric, state), list) and reduce is not None, \
            f"{name}: state {state!r} is not a list reduced by concatenation"
    metric.update(eval_batch(split, cfg))
    scores, classes = metric.per_image()
    assert len(scores) == len(classes) == len(metric.image_ids()), \
        f"{name}: per-image scores, classes and ids differ in length"
    if len(scores):
        value = float(metric.compute())
        lo, hi = spec.bounds or (-float("inf"), float("inf"))
        assert lo - 1e-6 <= value <= hi + 1e-6, f"{name}: {value} outside {spec.bounds}"
        assert all(lo - 1e-6 <= float(s) <= hi + 1e-6 for s in scores), \
            f"{name}: a per-image score outside {spec.bounds}"
    metric.reset()
    assert len(metric.per_image()[0]) == 0, f"{name}: reset kept scores"
    return metric


def eval_batch(split: data.Split, cfg: EvalConfig) -> EvalBatch:
    """An evaluation batch of the split's first images, scored by an untrained
    baseline and explained by its centre prior, with everything a metric may read."""
    run_cfg = config.resolve("smoke")
    model = train.build_method("baseline", run_cfg, split).eval()
    batch = next(iter(DataLoader(split.dataset, batch_size=BATCH)))
    x, y = batch["image"], batch["label"]

    def logits(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(z).logits

    sal = model.explain(x, y)
    boxes = {b: batch[b] for b in ("bbox", *split.info.extra_boxes) if b in batch}
    return EvalBatch(images=x, labels=y, logits=logits(x), saliency=sal, boxes=boxes,
                     model=logits, causal_images=x, causal_saliency=sal,
                     causal_classes=logits(x).argmax(1), indices=batch["index"],
                     explain=lambda z, c: model.explain(z, c),
                     input_std=tuple(split.info.std),
                     comb_mask=torch.ones(len(y), dtype=torch.bool))


def check_dataset(name: str, **options: Any) -> tuple[data.Split, data.Split]:
    """The dataset contract, with ``options`` (e.g. ``data_dir``): both splits build; a
    sample holds a float ``[3,H,W]`` image, a label in range, its index, and a box
    inside the image where the dataset has boxes."""
    splits = []
    for part in ("train", "test"):
        split = data.build(name, part, **options)
        info = split.info
        assert len(split) > 0, f"{name} {part}: no samples"
        sample = split.eval_view()[0] if part == "train" else split.dataset[0]
        image = sample["image"]
        assert image.shape == (3, *info.image_size) and image.dtype == torch.float32, \
            f"{name} {part}: image {tuple(image.shape)} {image.dtype}"
        assert 0 <= int(sample["label"]) < info.num_classes, f"{name} {part}: label"
        assert int(sample["index"]) == 0, f"{name} {part}: index {sample['index']}"
        if info.has_boxes and bool(torch.isfinite(sample["bbox"]).all()):  # NaN: no box
            box = sample["bbox"]
            h, w = info.image_size
            inside = 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
            assert box.shape == (4,) and inside, \
                f"{name} {part}: box {box.tolist()} outside the {w}x{h} image"
        if info.multi_label:
            _check_multi_label(f"{name} {part}", sample, info)
        splits.append(split)
    return splits[0], splits[1]


def _check_multi_label(what: str, sample: dict[str, Any], info: data.DatasetInfo) -> None:
    """A multi-label sample: ``labels`` float32 0/1 ``[C]``; with objects,
    ``object_labels`` int64 ``[K]`` beside ``objects``, -1 exactly on the NaN padding
    rows, each other row's class among ``labels``."""
    c = info.num_classes
    labels = sample.get("labels")
    assert isinstance(labels, torch.Tensor) and labels.shape == (c,) and \
        labels.dtype == torch.float32, f"{what}: labels must be float32 [{c}]"
    assert bool(((labels == 0) | (labels == 1)).all()), f"{what}: labels not 0/1"
    if "objects" not in sample:
        return
    objects, classes = sample["objects"], sample.get("object_labels")
    assert isinstance(classes, torch.Tensor) and classes.dtype == torch.long and \
        classes.shape == objects.shape[:1], \
        f"{what}: object_labels must be int64 [{len(objects)}] beside objects"
    padding = classes < 0
    assert bool((classes >= -1).all() and (classes < c).all()), \
        f"{what}: object_labels outside [-1, {c})"
    assert torch.equal(padding, torch.isnan(objects).all(1)), \
        f"{what}: object_labels -1 must be exactly the NaN padding rows"
    assert bool((labels[classes[~padding]] == 1).all()), \
        f"{what}: an object's class is not among labels"


def check_backbone(name: str, num_classes: int = 10, size: int = 64,
                   **options: Any) -> backbones.SplitBackbone:
    """The backbone contract: ``fc(pool(last_stage(features(x))))`` is its forward;
    feature channels and taps are as declared."""
    net = backbones.build(name, num_classes, **options).eval()
    assert isinstance(net, backbones.SplitBackbone), f"{name}: builds {type(net).__name__}"
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = net.features(x)
        assert feats.shape[1] == net.feat_channels, f"{name}: feature channels"
        logits = net.head(net.last_stage(feats))
        torch.testing.assert_close(logits, net(x), msg=f"{name}: split != forward")
    assert logits.shape == (2, num_classes), f"{name}: logits {tuple(logits.shape)}"
    if net.taps:
        with torch.no_grad():
            assert len(net.pyramid(x)) == len(net.taps), f"{name}: pyramid taps"
    return net


__all__ = ["check_backbone", "check_dataset", "check_explainer", "check_method",
           "check_metric", "eval_batch", "hooks", "smoke"]

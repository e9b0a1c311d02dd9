"""Remove and retrain (ROAR) and keep and retrain (KAR): Hooker et al., NeurIPS 2019.

An explanation is judged by what a model can still learn without the pixels it ranks
first: for each row (a trained model and the explainer applied to it) and each fraction
t, every training and test image is explained by the row's own model for its
ground-truth class, and

* ROAR: the top-t share of its pixels (by rank, exactly k, ties broken stably:
  :func:`metrics.road.road_keep_masks`, most relevant first) is removed;
* KAR: all but the top-t share is removed (least relevant first, 1 - t removed);

the removed pixels are filled by ROAD's noisy linear imputation
(:func:`metrics.road.road_images`; Rong et al. 2022 show that Hooker et al.'s fill with
the mean colour leaks the mask's shape to the retrained model), the images stored as
8-bit images at the input size, as a dataset written to disk would be, and
:data:`RETRAINED` (the plain backbone) is trained from scratch on the modified training
images under the run's schedule and seed, then scored on the modified test images.

Accuracy against t is the curve, its unmodified end the same model trained on the
unmodified images (ROAR at t = 0: nothing removed; KAR at t = 1: everything kept);
``roar_auc`` and ``kar_auc`` are the area under it over its span, from 0 to the largest
t (ROAR) and from the smallest t to 1 (KAR), divided by the span (a mean accuracy), per
test image from its 0/1 correctness, so intervals and paired tests come as for every
column. A good explanation makes ROAR's accuracy fall
fast (lower ``roar_auc``) and KAR's stay high (higher ``kar_auc``); the ``random``
explainer's row is the reference: Hooker et al. found most saliency methods no better
than it under ROAR.

Every retrained model is a checkpoint of its own (its key names the row's weights, the
explainer, the mode, t, the imputation's noise and seed), and both columns are parts of
the evaluation cache: a second run reads them from the store.

Deviations: Hooker et al. retrain 5 times per point and explain with the trained model
of the unmodified data for every row; here each row's maps come from that row's own
model (the issue this harness answers: which trained model's explanation is better),
once per seed. On datasets read from files the retraining sees the test-time view of
each training image (resized and cropped) without random augmentation; on the embedded
data the batch augmentation (random crop) is kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness import data, distributed, evalcache, train
from harness import device as dev
from harness.config import RunConfig
from harness.data import BoxedImages, Split
from harness.errors import UserError, shown
from harness.evaluate import MethodResult, RandomisedExplainers
from harness.progress import bars
from harness.stats import SeedScores
from harness.store import Store
from methods.base import Method
from methods.explainers import build as build_explainer
from metrics import road

#: the fractions t of Hooker et al.'s figures (``--roar`` without values)
FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
#: the model trained again on the modified images
RETRAINED = "baseline"
#: mode -> (the removal order, the removed fraction at t, the column)
MODES: dict[str, tuple[str, Callable[[float], float], str]] = {
    "roar": ("morf", lambda t: t, "roar_auc"),
    "kar": ("lerf", lambda t: 1.0 - t, "kar_auc"),
}
COLUMNS = tuple(m[2] for m in MODES.values())
#: the t at which a mode leaves the images as they are (ROAR removes nothing at 0, KAR
#: keeps everything at 1): the model trained on the unmodified images
UNMODIFIED = {"roar": 0.0, "kar": 1.0}


def axis(mode: str, fractions: Sequence[float]) -> tuple[float, ...]:
    """A mode's curve's t values: the fractions and the unmodified end (ROAR: the share
    removed, from 0; KAR: the share kept, up to 1)."""
    return tuple(sorted({*fractions, UNMODIFIED[mode]}))


def parse_fractions(spec: str) -> tuple[float, ...]:
    """``--roar``'s fractions: ``auto`` (:data:`FRACTIONS`) or comma-separated percents
    in (0, 100), e.g. ``10,30,50``; returned as ascending fractions.

    Raises:
        UserError: a value that is not a number, not in (0, 100), or repeated."""
    if spec.strip() == "auto":
        return FRACTIONS
    out = []
    for part in spec.split(","):
        try:
            v = float(part)
        except ValueError:
            raise UserError(f"--roar {shown(spec)}: {shown(part.strip())} is not a number (give "
                            "percents of the pixels, e.g. 10,30,50,70,90)") from None
        if not 0 < v < 100:
            raise UserError(f"--roar {shown(spec)}: {v:g} is outside (0, 100): give percents "
                            "of the pixels, e.g. 10,30,50,70,90")
        out.append(v / 100)
    if len(set(out)) != len(out):
        raise UserError(f"--roar {shown(spec)}: a fraction is given twice")
    return tuple(sorted(out))


@dataclass(frozen=True)
class Protocol:
    """What a ROAR / KAR point depends on besides the row's model and explainer.

    Attributes:
        fractions: the t values, ascending, each in (0, 1).
        noise: the imputation noise in [0, 1] pixel units (``eval.road_noise``).
        seed: seeds the noise (``eval.lens_seed``).
        batch_size: images explained and imputed at once.
        precision: the test forward passes' arithmetic.
    """

    fractions: tuple[float, ...]
    noise: float
    seed: int
    batch_size: int
    precision: str = "fp32"


def noise_seed(seed: int, split: str) -> int:
    """The noise seed of ``split``'s images (their indices restart at 0 in each split)."""
    return road.image_seed(seed, ("test", "train").index(split))


def modified_images(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    split: Split, mode: str, protocol: Protocol, device: torch.device, *,
                    progress: bool = False, label: str = "") -> torch.Tensor:
    """``uint8 [F, N, C, H, W]``: ``split``'s images (test-time view) with the pixels of
    ``mode`` removed at each fraction and imputed, in [0, 255] at the input size.

    Args:
        explain: (images, classes) -> ``[n,1,H,W]`` maps; asked for the ground-truth class.
        protocol: its ``seed`` seeds the noise of each image with the image's index
            (:func:`noise_seed` gives each split its own).
    """
    order, removed, _ = MODES[mode]
    fr = [removed(t) for t in protocol.fractions]
    info = split.info
    std = [protocol.noise / s for s in info.std]
    n = len(split)
    h, w = info.image_size
    out = torch.empty(len(fr), n, 3, h, w, dtype=torch.uint8)
    batches = data.loader(split, protocol.batch_size, device, dataset=split.eval_view())
    for batch in tqdm(batches, desc=f"{label} {mode} images", leave=False,
                      disable=not bars(progress), dynamic_ncols=True):
        batch = dev.to_device(batch, device)
        x, y, idx = batch["image"], batch["label"], batch["index"]
        maps = explain(x, y)
        imputed = road.road_images(x, maps, fr, (order,), std, protocol.seed,
                                   ids=idx)  # [B,F,C,H,W]
        pixels = data.denormalize(imputed.flatten(0, 1), info).view_as(imputed)
        out[:, idx.cpu()] = (pixels * 255).round().to(torch.uint8).transpose(0, 1).cpu()
    return out


def imputed_split(split: Split, images: torch.Tensor, fingerprint: str) -> Split:
    """``split`` with its images replaced by ``images`` (``uint8 [N,3,H,W]`` at the input
    size, the labels kept), normalised as the test images are and augmented as the
    training batches are."""
    labels = torch.as_tensor(split.dataset.labels, dtype=torch.long)  # type: ignore[attr-defined]
    tf = data.make_transform(split.info, train=False)
    return Split(BoxedImages(images, labels, {}, tf), split.info,
                 batch_transform=split.batch_transform, eval_transform=tf,
                 fingerprint=fingerprint)


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def point_fingerprint(split: Split, *, weights: str, explainer: str, mode: str, t: float,
                      protocol: Protocol, split_key: str) -> str:
    """What the modified ``split`` at ``t`` is: the source split, the row's model and
    explainer, the mode, t and the imputation (its checkpoints' data id)."""
    return _digest({"source": split_key, "fingerprint": split.fingerprint, "n": len(split),
                    "weights": weights, "explainer": explainer, "mode": mode, "t": t,
                    "noise": protocol.noise, "seed": protocol.seed, "pixels": "uint8"})


def retrain_keys(cfg: RunConfig, train_split: Split, *, weights: str, explainer: str,
                 protocol: Protocol, train_key: str) -> dict[tuple[str, float], str]:
    """The checkpoint key of each (mode, t) model, known before any image is modified."""
    options = train.method_options(RETRAINED, cfg)
    return {(mode, t): train.cache_key(RETRAINED, cfg, options, data_id=point_fingerprint(
        train_split, weights=weights, explainer=explainer, mode=mode, t=t,
        protocol=protocol, split_key=train_key)) for mode in MODES for t in protocol.fractions}


def part_keys(*, keys: dict[tuple[str, float], str], base_key: str, explainer: str,
              weights: str, split_key: str, protocol: Protocol,
              device: torch.device) -> dict[str, str]:
    """The evaluation-cache key of ``roar_auc`` and ``kar_auc`` for one row."""
    common = {"weights": weights, "explainer": explainer, "split": split_key,
              "base": base_key, "fractions": protocol.fractions, "noise": protocol.noise,
              "seed": protocol.seed, "precision": protocol.precision,
              "device": device.type, "libraries": evalcache.library_versions(),
              "code": evalcache.code_version()}
    return {col: _digest({**common, "part": col,
                          "models": [keys[mode, t] for t in protocol.fractions]})
            for mode, (_o, _r, col) in MODES.items()}


def correct(model: Method, split: Split, device: torch.device, precision: str,
            batch_size: int) -> np.ndarray:
    """bool ``[N]``: ``model``'s prediction is the label, per image of ``split``."""
    model.eval()
    out = np.zeros(len(split), dtype=bool)
    for batch in data.loader(split, batch_size, device):
        batch = dev.to_device(batch, device)
        with torch.no_grad(), dev.autocast(device, precision):
            pred = model(batch["image"]).logits.argmax(1)
        out[batch["index"].cpu().numpy()] = (pred == batch["label"]).cpu().numpy()
    return out


def area(points: np.ndarray, ts: Sequence[float]) -> np.ndarray:
    """The trapezoid area under ``points`` (``[..., len(ts)]``) against ``ts``, over the
    span of ``ts``: a mean value."""
    x = np.asarray(ts, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return ((p[..., 1:] + p[..., :-1]) / 2 * np.diff(x)).sum(-1) / (x[-1] - x[0])


@dataclass
class RowRoar:
    """One row's ROAR / KAR result: per column the per-image areas, the mean accuracy
    at t = 0 and each fraction, and how the points were obtained."""

    scores: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]
    cached: int = 0
    trained: int = 0


@dataclass(frozen=True)
class Context:
    """Where ROAR runs: the run's configuration (its seed), splits, device, checkpoint
    cache, store (None on the other ranks under torchrun; ``read``: may be read), the
    test split's key, progress, the run's trained models and its voice."""

    cfg: RunConfig
    train_split: Split
    test_split: Split
    device: torch.device
    cache: Path | None
    store: Store | None
    read: bool
    split_key: str
    progress: bool
    memo: dict[str, train.Trained]
    say: Callable[..., None] = lambda *a, **k: None


def roar_row(res: MethodResult, method: Method, explainer: str, weights: str,
             protocol: Protocol, ctx: Context) -> tuple[MethodResult, dict[str, str], int]:
    """``res`` with ``roar_auc`` and ``kar_auc`` (values, per-image scores, curves),
    read from ``ctx.store`` when it holds them; returns (the row, the two parts' keys,
    parts read). ``ctx.say`` announces the work when there is some."""
    cfg, train_split, test_split, device = ctx.cfg, ctx.train_split, ctx.test_split, ctx.device
    cache, store, read, progress, memo = ctx.cache, ctx.store, ctx.read, ctx.progress, ctx.memo
    split_key, say = ctx.split_key, ctx.say
    base = train.obtain(RETRAINED, cfg, train_split, device, cache, progress=progress,
                        _memo=memo)
    train_key = evalcache.split_id(train_split, cfg.dataset_kwargs)
    keys = retrain_keys(cfg, train_split, weights=weights, explainer=explainer,
                        protocol=protocol, train_key=train_key)
    pkeys = part_keys(keys=keys, base_key=base.key, explainer=explainer, weights=weights,
                      split_key=split_key, protocol=protocol, device=device)
    hits = distributed.share(lambda: store.lookup(pkeys) if store is not None and read
                             else {})
    if len(hits) == len(pkeys):
        if store is None:  # under torchrun another rank than 0: rank 0 reads them
            return res, pkeys, len(hits)
        parts = store.parts(hits)
        out = replace(res, values={**res.values, **parts.values},
                      per_image={**res.per_image, **parts.per_image},
                      curves={**res.curves, **parts.curves})
        return out, pkeys, len(hits)
    say(f"  {res.row}: ROAR / KAR at t = "
        + ", ".join(f"{100 * t:g}" for t in protocol.fractions)
        + f" %, {RETRAINED} trained on modified images (or read from the cache) "
          f"{2 * len(protocol.fractions)} times", flush=True)
    ex = RandomisedExplainers.explain_fn(build_explainer(explainer, method.eval()),
                                         f"{res.row} ROAR maps")
    at_zero = correct(base.method, test_split, device, protocol.precision,
                      protocol.batch_size)
    labels = torch.as_tensor(test_split.dataset.labels).numpy()  # type: ignore[attr-defined]
    ids = np.arange(len(test_split), dtype=np.int64)
    values, per_image, curves = dict(res.values), dict(res.per_image), dict(res.curves)
    for mode, (_order, _removed, col) in MODES.items():
        test_imgs = modified_images(ex, test_split, mode, replace(protocol, seed=noise_seed(
            protocol.seed, "test")), device, progress=progress, label=res.row)
        train_imgs = modified_images(ex, train_split, mode, replace(protocol, seed=noise_seed(
            protocol.seed, "train")), device, progress=progress, label=res.row)
        ts = axis(mode, protocol.fractions)
        hit = np.zeros((len(ids), len(ts)), dtype=np.float64)
        hit[:, ts.index(UNMODIFIED[mode])] = at_zero
        at = [ts.index(t) for t in protocol.fractions]
        for k, t in enumerate(protocol.fractions):
            fp = point_fingerprint(train_split, weights=weights, explainer=explainer,
                                   mode=mode, t=t, protocol=protocol, split_key=train_key)
            tr = imputed_split(train_split, train_imgs[k], fp)
            te = imputed_split(test_split, test_imgs[k], fp)
            model = train.obtain(RETRAINED, cfg, tr, device, cache, progress=progress,
                                 _memo=memo)
            assert model.key == keys[mode, t]
            hit[:, at[k]] = correct(model.method, te, device, protocol.precision,
                                    protocol.batch_size)
        scores = area(hit, ts).astype(np.float32)
        values[col] = float(scores.mean())
        per_image[col] = SeedScores(scores, labels.astype(np.int64), ids)
        curves[col] = hit.mean(0).astype(np.float32)
    return replace(res, values=values, per_image=per_image, curves=curves), pkeys, len(hits)


__all__ = ["COLUMNS", "FRACTIONS", "MODES", "RETRAINED", "UNMODIFIED", "Context", "Protocol",
           "area",
           "axis", "correct",
           "imputed_split", "modified_images", "parse_fractions", "part_keys",
           "point_fingerprint", "retrain_keys", "roar_row"]

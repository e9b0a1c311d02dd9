"""The evaluation cache: a row's numbers are computed once per thing they depend on.

Each part of an evaluated row — every metric, the timing columns, the gallery — has a
key: a hash of the trained checkpoint's key (which holds the method's, backbone's,
dataset's and training loop's code, :func:`harness.train.cache_key`) and of the weights
themselves (a model trained again under the same key, e.g. after ``--no-cache``, is
evaluated again), the explainer and its code, the test split and its dataset's code,
the device kind and the evaluation precision, the versions of the libraries that
compute or decode (torch, torchvision, captum, TorchCAM, timm, numpy, Pillow), the
evaluator's code (:func:`code_version`), the part's own code (a metric's factory and
what it names, :func:`harness.codedigest.digest`: editing one metric, a plugin's as the
project's, recomputes that column alone), and the evaluation options that part depends
on (:attr:`metrics.base.MetricSpec.options`; the timing: ``timing_batches`` and
``batch_size``; the gallery: ``gallery_n``). A part whose key is in the store is read
from it; only the others are computed. Code is hashed as loaded (the digests are
memoised from the first key on, so code edited during a run does not label that run's
numbers). ``bootstrap`` is not in any key (the intervals are recomputed from the
stored per-image scores), nor are ``forward_batch``, ``streams`` and ``batch_size`` in
a metric's key: they decide how many images go through one forward pass and how many
passes run at once, not what is computed (kernels chosen by batch size or thread count
can move a score by float rounding, ~1e-7).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import numpy as np
import torch

from harness import codedigest, distributed
from harness.config import EvalConfig
from harness.data import DATASETS, Split, loader
from harness.evaluate import (
    GALLERY,
    TIMING,
    MethodResult,
    RowSpec,
    applicable_metrics,
    evaluate,
    misclassified,
)
from harness.store import Store
from methods.base import Method
from methods.explainers import EXPLAINERS
from metrics.base import METRICS
from metrics.localization import box_share

#: libraries whose version can change an evaluated number
LIBRARIES = ("torch", "torchvision", "captum", "torchcam", "timm", "numpy", "pillow",
             "torchmetrics")


def code_version() -> str:
    """The evaluator's code: :func:`harness.evaluate.evaluate` and
    :func:`~harness.evaluate.misclassified` with everything they name (the shared
    kernels: insertion / deletion, ROAD, the explainers' binding, the forward engine,
    folding), :func:`harness.codedigest.digest`."""
    return codedigest.digest(evaluate, misclassified)


def metric_code(name: str) -> str:
    """The code of metric ``name``: its factory and what that names (the evaluator's
    own columns, which have none, are :func:`code_version`'s)."""
    return codedigest.digest(METRICS.get(name).factory)


def explainer_code(name: str) -> str:
    """The code of explainer ``name`` (``native``: the method's own, which is in the
    checkpoint's key)."""
    return "" if name == "native" else codedigest.digest(EXPLAINERS.get(name))


def warm() -> None:
    """Digest the evaluator and every registered metric, explainer, dataset, method and
    backbone now, before any of them computes a number: the digests are memoised, so
    every later key labels the code loaded at this point."""
    from harness.backbones import BACKBONES
    from methods.base import METHODS

    code_version()
    for m in METRICS:
        metric_code(m.name)
    for registry in (EXPLAINERS, DATASETS, METHODS, BACKBONES):
        for e in registry:
            codedigest.digest(e.obj)


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def weights_digest(method: torch.nn.Module) -> str:
    """SHA-256 over the model's state (names, shapes, dtypes, values): the same
    digest means the same model."""
    h = hashlib.sha256()
    for name, t in sorted(method.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]


def mask_digest(mask: torch.Tensor | None) -> str | None:
    """A digest of a bool mask over the test images (the comb subset)."""
    if mask is None:
        return None
    return hashlib.sha256(mask.cpu().numpy().tobytes()).hexdigest()[:16]


def part_keys(*, checkpoint: str, explainer: str, split_id: str, device: torch.device,
              precision: str, cfg: EvalConfig, metrics: Iterable[str],
              comb_subset: torch.Tensor | None, weights: str = "",
              permuted: str = "") -> dict[str, str]:
    """The key of each part of one evaluated row.

    Args:
        permuted: the weights digest of the model trained on permuted labels, in the
            keys of the columns scored against it (``MetricSpec.needs_permuted``)."""
    base = {"checkpoint": checkpoint, "weights": weights, "explainer": explainer,
            "explainer_code": explainer_code(explainer),
            "split": split_id, "device": device.type, "precision": precision,
            "libraries": library_versions(), "code": code_version()}
    options = dict(vars(cfg), comb_subset=mask_digest(comb_subset))
    out = {m: _digest({**base, "part": m, "metric_code": metric_code(m),
                       "options": {o: options[o] for o in METRICS.get(m).options},
                       **({"permuted": permuted} if METRICS.get(m).needs_permuted else {})})
           for m in metrics}
    out[TIMING] = _digest({**base, "part": TIMING, "options": {
        "timing_batches": cfg.timing_batches, "batch_size": cfg.batch_size}})
    out[GALLERY] = _digest({**base, "part": GALLERY, "options": {"gallery_n": cfg.gallery_n},
                            **({"permuted": permuted} if permuted else {})})
    return out


def split_id(split: Split, dataset_kwargs: dict[str, Any]) -> str:
    """What the test split is: dataset, its code, its options and, for files on disk,
    the fingerprint of its files, labels and boxes."""
    return _digest({"dataset": split.info.name, "kwargs": dataset_kwargs,
                    "code": codedigest.digest(DATASETS.get(split.info.name))
                    if split.info.name in DATASETS else "",
                    "fingerprint": split.fingerprint, "n": len(split)})


def box_shares(split: Split, batch_size: int = 250) -> np.ndarray:
    """``[N]``: each image's share of the input's pixels inside its ``bbox``
    (:func:`metrics.localization.box_share`, the ``energy_pg`` a map spread evenly over
    the image would score); NaN for an image without a box."""
    out = []
    for batch in loader(split, batch_size, torch.device("cpu")):
        boxes = batch["bbox"].float()
        ok = torch.isfinite(boxes).all(1)
        share = torch.full((len(boxes),), float("nan"))
        share[ok] = box_share(boxes[ok], *batch["image"].shape[-2:])
        out.append(share)
    return torch.cat(out).numpy() if out else np.zeros(0)


def uniform_energy_cached(store: Store | None, split: Split, *, split_key: str,
                          read: bool = True, batch_size: int = 250) -> float | None:
    """The ``energy_pg`` of a uniform map on ``split``: the mean of :func:`box_shares`
    over the images with a box (as ``energy_pg`` skips the others); None for a split
    without boxes. The shares are read from ``store`` when it holds them for this
    split."""
    if not split.info.has_boxes:
        return None
    key = _digest({"part": "box_shares", "split": split_key,
                   "code": codedigest.digest(box_shares)})
    shares = store.mask(key) if store is not None and read else None
    if shares is None:
        shares = box_shares(split, batch_size)
        if store is not None:
            store.put_mask(key, shares)
    shares = shares[np.isfinite(shares)]
    return float(shares.mean()) if len(shares) else None


def misclassified_cached(store: Store | None, reference: Method, split: Split,
                         device: torch.device, *, split_key: str, read: bool = True,
                         batch_size: int = 250, precision: str = "fp32",
                         weights: str = "") -> torch.Tensor:
    """:func:`harness.evaluate.misclassified` (the comb reference's wrong test images),
    read from ``store`` when it holds the mask for these weights and this split."""
    key = _digest({"part": "misclassified", "weights": weights or weights_digest(reference),
                   "split": split_key, "device": device.type, "precision": precision,
                   "libraries": library_versions(), "code": code_version()})
    # under torchrun rank 0 alone holds the store; the others get what it read
    mask = distributed.share(lambda: store.mask(key) if store is not None and read else None)
    if mask is not None:
        return torch.from_numpy(mask.astype(bool))
    wrong = misclassified(reference, split, device, batch_size=batch_size,
                          precision=precision)
    if store is not None:
        store.put_mask(key, wrong.numpy())
    return wrong


def row_metrics(split: Split, cfg: EvalConfig, explainer: str, *,
                permuted: bool = False, model_columns: bool | None = None) -> list[str]:
    """The columns of a row: every applicable metric for a method's own explanation
    (or where ``model_columns``); for another explainer those that score the
    explanation (the model's accuracy and attention-mechanism columns are in its own
    row). ``permuted``: with the data-randomisation columns."""
    names = list(applicable_metrics(split, cfg, permuted=permuted))
    if explainer == "native" if model_columns is None else model_columns:
        return names
    return [m for m in names if METRICS.get(m).explanation and not METRICS.get(m).of_model]


def evaluate_cached(store: Store | None, row: RowSpec, split: Split, cfg: EvalConfig,
                    device: torch.device, *, split_key: str, read: bool = True,
                    comb_subset: torch.Tensor | None = None, precision: str = "fp32",
                    progress: bool = True) -> tuple[MethodResult, dict[str, str], int]:
    """:func:`harness.evaluate.evaluate` of ``row``, reading from ``store`` every part
    it holds (``read=False``: none). Returns (the row, each part's key, parts read)."""
    method, name, explainer, seed, permuted = (row.method, row.name, row.explainer, row.seed,
                                               row.permuted)
    names = row_metrics(split, cfg, explainer, permuted=permuted is not None,
                        model_columns=row.model_columns)
    keys = part_keys(checkpoint=row.checkpoint, explainer=explainer, split_id=split_key,
                     device=device, precision=precision, cfg=cfg, metrics=names,
                     comb_subset=comb_subset, weights=row.weights or weights_digest(method),
                     permuted="" if permuted is None
                     else row.permuted_weights or weights_digest(permuted))
    # under torchrun rank 0 alone holds the store and tells the others what to compute
    hits = distributed.share(lambda: store.lookup(keys) if store is not None and read else {})
    missing = {m for m in names if m not in hits}
    parts = tuple(p for p in (TIMING, GALLERY) if p not in hits)
    stored = store.parts(hits) if store is not None and hits else None
    fresh = None
    if missing or parts:
        needs_permuted = GALLERY in parts or any(METRICS.get(m).needs_permuted
                                                 for m in missing)
        fresh = evaluate(row if needs_permuted else dataclasses.replace(row, permuted=None),
                         split, cfg, device, precision=precision, comb_subset=comb_subset,
                         only=missing, parts=parts, progress=progress)
    values: dict[str, float] = {}
    per_image, curves, gallery = {}, {}, {}
    per_class: set[str] = set()
    for src in (stored, fresh):
        if src is None:
            continue
        values.update(src.values)
        per_image.update(src.per_image)
        per_class |= src.per_class
        curves.update(src.curves)
        gallery.update(src.gallery)
    order = [*names, "explain_ms", "explain_overhead"]  # the evaluator's column order
    values = {k: values[k] for k in sorted(values, key=lambda k: order.index(k)
                                            if k in order else len(order))}
    n_test = len(split)
    res = MethodResult(name, seed, values, {k: per_image[k] for k in values if k in per_image},
                       per_class, curves, n_test=n_test, n_causal=min(n_test, cfg.causal_n),
                       gallery=gallery, explainer=explainer,
                       causal_passes=(fresh.causal_passes if fresh is not None else {})
                       or (stored.causal_passes if stored is not None else {}))
    return res, keys, len(hits)


code_version()  # the code this process runs, hashed before any of it computes a number

__all__ = ["LIBRARIES", "RowSpec", "code_version", "evaluate_cached", "explainer_code",
           "library_versions", "mask_digest", "metric_code", "misclassified_cached",
           "part_keys", "row_metrics", "split_id", "warm", "weights_digest"]

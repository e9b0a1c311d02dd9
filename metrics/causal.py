"""Causal faithfulness metrics: insertion and deletion (Petsiuk et al., BMVC 2018, RISE).

The saliency map ranks the H*W positions (descending, stable: ties in raster order).
*Deletion* starts from the image and replaces ``step`` positions per step with the
substrate; *insertion* starts from the substrate and restores ``step`` positions per
step. A position changes in all channels at once. After each of the
``n = ceil(H*W / step)`` steps (and before the first) the model's softmax probability of
the tracked class is recorded, giving a curve of ``n + 1`` points; its AUC is the
trapezoid over the changed fraction on [0, 1]: ``(sum(s) - s_0/2 - s_n/2) / n``.

All images x steps are evaluated in large batches of perturbed images on the images'
device; there is no Python loop over steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from metrics import checks

Model = Callable[[torch.Tensor], torch.Tensor]
MODES = ("insertion", "deletion")
SUBSTRATES = ("blur", "zero", "mean")


@functools.lru_cache(maxsize=4)
def _blur_kernel_np(klen: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((klen, klen))
    impulse[klen // 2, klen // 2] = 1.0
    return gaussian_filter(impulse, sigma)


def blur_kernel(klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The RISE blur kernel: ``scipy.ndimage.gaussian_filter`` of a ``klen`` x ``klen``
    unit impulse with standard deviation ``sigma`` (float64 ``[klen, klen]``)."""
    return torch.from_numpy(_blur_kernel_np(klen, float(sigma)).copy())


def make_substrate(images: torch.Tensor, kind: str) -> torch.Tensor:
    """The substrate image for each of ``images`` ``[B,C,H,W]``.

    ``"blur"``: the RISE kernel applied to each channel separately with zero padding;
    ``"zero"``: zeros (the dataset mean, in normalised space); ``"mean"``: each image's
    per-channel mean.
    """
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    if kind == "blur":
        k = blur_kernel().to(device=images.device, dtype=images.dtype)
        c = images.shape[1]
        weight = k.expand(c, 1, *k.shape).contiguous()
        return F.conv2d(images, weight, padding=k.shape[-1] // 2, groups=c)
    raise ValueError(f"substrate must be one of {SUBSTRATES}, got {kind!r}")


def rank_positions(saliency: torch.Tensor) -> torch.Tensor:
    """Rank of each position in descending, stable order: ``int64 [B, H*W]``.

    ``rank[b, p] = r`` means position ``p`` (raster index) is the ``r``-th most salient
    of image ``b``; equal values keep raster order.
    """
    flat = saliency.reshape(saliency.shape[0], -1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


#: forward-batch sizes :func:`choose_batch` tries
BATCH_CANDIDATES = (8, 16, 32, 64, 128, 256, 512)
#: bytes the perturbed images of one forward pass may take
MEMORY_BUDGET = 512 * 2**20
_CHOSEN: dict[tuple[object, ...], int] = {}


def choose_batch(model: Model, sample: torch.Tensor, key: tuple[object, ...] = (),
                 budget: int = MEMORY_BUDGET) -> int:
    """The forward batch with the least time per image for ``model`` on inputs like
    ``sample`` ``[C,H,W]``, measured once per ``key`` (model kind, device, precision)
    and input shape: a cache-friendly batch is several times faster per image on a CPU
    than a large one, and a GPU wants the largest that fits. Candidates whose perturbed
    images exceed ``budget`` bytes are not tried; the search stops when the time per
    image has grown twice in a row. The batch size changes the scores by float rounding
    at most (each image's forward pass is independent of the others' in eval mode, but
    kernels may differ by batch size: ~1e-7; on the default backbone here, not at all);
    a fixed ``eval.forward_batch`` makes them bitwise reproducible."""
    import time

    full_key = (*key, tuple(sample.shape), str(sample.device), str(sample.dtype))
    if full_key in _CHOSEN:
        return _CHOSEN[full_key]
    per_image = sample.numel() * sample.element_size()
    sync = torch.cuda.synchronize if sample.device.type == "cuda" else (lambda: None)
    best, best_t, worse = BATCH_CANDIDATES[0], math.inf, 0
    for bs in BATCH_CANDIDATES:
        if bs > BATCH_CANDIDATES[0] and bs * per_image > budget:
            break
        x = sample.expand(bs, *sample.shape).contiguous()
        with torch.inference_mode():
            model(x)  # warm-up (allocations, kernel selection)
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
        t = (time.perf_counter() - t0) / bs
        if t < best_t:
            best, best_t, worse = bs, t, 0
        else:
            worse += 1
            if worse == 2:
                break
    _CHOSEN[full_key] = best
    return best


def n_steps(height: int, width: int, step: int) -> int:
    """Number of steps ``n = ceil(H*W / step)`` (the curve has ``n + 1`` points)."""
    return math.ceil(height * width / step)


@torch.no_grad()
def causal_curves(model: Model, images: torch.Tensor, saliency: torch.Tensor,
                  classes: torch.Tensor, *, mode: str, step: int, substrate: str,
                  batch_size: int = 256) -> torch.Tensor:
    """Insertion or deletion curves of ``images`` under ``saliency``.

    Args:
        model: maps ``[N,C,H,W]`` images to logits ``[N,K]``.
        images: ``[B,C,H,W]`` model inputs.
        saliency: ``[B,H,W]`` or ``[B,1,H,W]`` at the input resolution.
        classes: ``[B]`` the class whose softmax probability is tracked.
        mode: ``"insertion"`` or ``"deletion"``.
        step: positions changed per step (RISE: one image row, ``W``).
        substrate: ``"blur"``, ``"zero"`` or ``"mean"``.
        batch_size: perturbed images per forward pass; 0: :func:`choose_batch`.

    Returns:
        ``[B, n+1]`` probabilities, ``n = ceil(H*W / step)`` (``[0, n+1]`` for an empty
        batch).

    Raises:
        ValueError: bad ``mode`` / ``step``; ``images`` not ``[B,C,H,W]``; ``saliency``
            without a batch dimension, with several channels, of another size or with
            non-finite values; ``classes`` of another length, not integers, or outside
            the model's classes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    images = checks.images(images)
    b, _, h, w = images.shape
    saliency = checks.maps(saliency, n=b)
    if tuple(saliency.shape) != (b, h, w):
        raise ValueError(f"saliency shape {tuple(saliency.shape)} does not match images "
                         f"{tuple(images.shape)}: resize it to the input first")
    classes = checks.classes(classes, b)
    n = n_steps(h, w, step)
    if b == 0:
        return torch.zeros(0, n + 1, device=images.device)
    if batch_size <= 0:
        batch_size = choose_batch(model, images[0])
    rank = rank_positions(saliency.to(images.device)).view(b, 1, h, w)
    base = make_substrate(images, substrate)
    start, finish = (images, base) if mode == "deletion" else (base, images)
    classes = classes.to(images.device).long()
    total = b * (n + 1)
    scores = torch.empty(total, device=images.device, dtype=torch.float32)
    for lo in range(0, total, batch_size):
        idx = torch.arange(lo, min(lo + batch_size, total), device=images.device)
        img, k = idx // (n + 1), idx % (n + 1)
        changed = rank[img] < (k * step).view(-1, 1, 1, 1)
        x = torch.where(changed, finish[img], start[img])
        logits = model(x).float()
        if lo == 0:  # the classes exist in the model's output
            checks.classes(classes, b, logits.shape[1])
        probs = torch.softmax(logits, dim=1)
        scores[lo : lo + len(idx)] = probs.gather(1, classes[img].view(-1, 1)).squeeze(1)
    return scores.view(b, n + 1)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid AUC of ``[B, n+1]`` curves on [0, 1]: ``(sum - s_0/2 - s_n/2) / n``."""
    if curves.dim() != 2:
        raise ValueError(f"curves has shape {tuple(curves.shape)}: expected [B, n+1]")
    n = curves.shape[1] - 1
    if n < 1:
        raise ValueError("a curve needs at least two points")
    return (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / n

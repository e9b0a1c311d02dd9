"""Causal faithfulness metrics: insertion and deletion (Petsiuk et al., BMVC 2018, RISE).

The saliency map ranks the H*W positions (descending, stable: ties in raster order).
*Deletion* starts from the image and replaces ``step`` positions per step with the
substrate; *insertion* starts from the substrate and restores ``step`` positions per
step. A position changes in all channels at once. After each of the
``n = ceil(H*W / step)`` steps (and before the first) the model's softmax probability of
the tracked class is recorded, giving a curve of ``n + 1`` points; its AUC is the
trapezoid over the changed fraction on [0, 1]: ``(sum(s) - s_0/2 - s_n/2) / n``.

All images x steps are evaluated in large batches of perturbed images on the images'
device; there is no Python loop over steps. On a CPU several of those forward passes
may run at once (``streams``), each with its share of the threads.
"""

from __future__ import annotations

import functools
import math
import threading
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


def choose_streams(batch: int, sample: torch.Tensor, budget: int = MEMORY_BUDGET) -> int:
    """Concurrent forward passes for :func:`causal_curves` on ``sample``'s device:
    on a CPU one per intra-op thread, as many as fit ``budget`` bytes of perturbed
    images at ``batch`` images a pass (at least one); elsewhere one."""
    if sample.device.type != "cpu":
        return 1
    per_pass = batch * sample.numel() * sample.element_size()
    return max(1, min(torch.get_num_threads(), budget // max(1, per_pass)))


def stream_threads(streams: int) -> int:
    """Intra-op threads each of ``streams`` concurrent passes gets: an equal share of
    this process's, at least one."""
    return max(1, torch.get_num_threads() // streams)


def concurrently(fn: Callable[[int, threading.Event], None], streams: int) -> None:
    """``fn(0, stop)``, ..., ``fn(streams - 1, stop)`` at once, each in its own thread under
    ``torch.inference_mode`` with ``1/streams`` of this process's intra-op threads (at
    least one); the thread count is restored afterwards. On a small CPU, independent
    single-thread forward passes beat one pass split over the cores (less waiting at
    each operator's barrier). ``stop`` is set when one raises (or the wait is
    interrupted), so the others can end early; the first exception is raised once all
    have stopped."""
    total = torch.get_num_threads()
    share = stream_threads(streams)
    failed = threading.Event()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        torch.set_num_threads(share)  # this thread's OpenMP pool
        try:
            with torch.inference_mode():  # grad mode is per thread
                fn(k, failed)
        except BaseException as err:  # raised in the calling thread below
            errors.append(err)
            failed.set()

    threads = [threading.Thread(target=work, args=(k,), name=f"causal-{k}", daemon=True)
               for k in range(streams)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:  # e.g. Ctrl-C while waiting: the streams stop at their next pass
        failed.set()
        raise
    finally:
        torch.set_num_threads(total)
    if errors:
        raise errors[0]


def n_steps(height: int, width: int, step: int) -> int:
    """Number of steps ``n = ceil(H*W / step)`` (the curve has ``n + 1`` points)."""
    return math.ceil(height * width / step)


@torch.inference_mode()
def causal_curves(model: Model, images: torch.Tensor, saliency: torch.Tensor,
                  classes: torch.Tensor, *, mode: str, step: int, substrate: str,
                  batch_size: int = 256, unperturbed: torch.Tensor | None = None,
                  streams: int = 1) -> torch.Tensor:
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
        unperturbed: ``[B]`` the tracked class's probability on the images themselves,
            when the caller has it (the evaluator does): deletion's first point and
            insertion's last are then not computed again.
        streams: forward passes run at once, each in its own thread with an equal share
            of the process's intra-op threads (CPU only; on another device, or with
            fewer passes than streams, fewer run). ``model`` must then be safe to call
            from several threads (nothing written on ``self`` in ``forward``). Each pass
            holds the same images as with one stream; only the kernels' thread count
            differs, which changes the scores by float rounding at most.

    Returns:
        ``[B, n+1]`` probabilities, ``n = ceil(H*W / step)`` (``[0, n+1]`` for an empty
        batch).

    The perturbed images of one forward pass are written into one reused buffer,
    image by image with the steps broadcast (no per-row copy of whole images), in
    the memory format of ``images``.

    Raises:
        ValueError: bad ``mode`` / ``step``; ``images`` not ``[B,C,H,W]``; ``saliency``
            without a batch dimension, with several channels, of another size or with
            non-finite values; ``classes`` of another length, not integers, or outside
            the model's classes; ``unperturbed`` not ``[B]``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    images = checks.images(images)
    b, c, h, w = images.shape
    saliency = checks.maps(saliency, n=b)
    if tuple(saliency.shape) != (b, h, w):
        raise ValueError(f"saliency shape {tuple(saliency.shape)} does not match images "
                         f"{tuple(images.shape)}: resize it to the input first")
    classes = checks.classes(classes, b)
    if unperturbed is not None and tuple(unperturbed.shape) != (b,):
        raise ValueError(f"unperturbed has shape {tuple(unperturbed.shape)}: expected [{b}]")
    n = n_steps(h, w, step)
    if b == 0:
        return torch.zeros(0, n + 1, device=images.device)
    if batch_size <= 0:
        batch_size = choose_batch(model, images[0])
    dev = images.device
    rank = rank_positions(saliency.to(dev)).view(b, 1, h, w)
    base = make_substrate(images, substrate)
    start, finish = (images, base) if mode == "deletion" else (base, images)
    classes = classes.to(dev).long()
    # the steps computed: all n+1, or all but the one showing the image itself
    same = 0 if mode == "deletion" else n
    ks = [k for k in range(n + 1) if unperturbed is None or k != same]
    m = len(ks)
    thresholds = (torch.tensor(ks, device=dev) * step).view(-1, 1, 1, 1)
    total = b * m
    fmt = (torch.channels_last if images.is_contiguous(memory_format=torch.channels_last)
           and not images.is_contiguous() else torch.contiguous_format)
    scores = torch.empty(total, device=dev, dtype=torch.float32)
    n_pass = -(-total // batch_size)
    streams = 1 if dev.type != "cpu" else max(1, min(streams, n_pass))

    def run_passes(first: int, stop: threading.Event | None = None) -> None:
        """Passes ``first``, ``first + streams``, ... into one reused buffer (until
        ``stop`` is set)."""
        buffer = torch.empty((min(batch_size, total), c, h, w), dtype=images.dtype,
                             device=dev).contiguous(memory_format=fmt)
        for lo in range(first * batch_size, total, streams * batch_size):
            if stop is not None and stop.is_set():
                return
            hi = min(lo + batch_size, total)
            x = buffer[: hi - lo]
            r = lo
            while r < hi:  # the rows of each image in this pass, its steps broadcast
                i, j = divmod(r, m)
                j1 = min(m, j + hi - r)
                torch.where(rank[i] < thresholds[j:j1], finish[i], start[i],
                            out=x[r - lo : r - lo + j1 - j])
                r += j1 - j
            logits = model(x).float()
            if lo == 0:  # the classes exist in the model's output
                checks.classes(classes, b, logits.shape[1])
            img = torch.arange(lo, hi, device=dev) // m
            probs = torch.softmax(logits, dim=1)
            scores[lo:hi] = probs.gather(1, classes[img].view(-1, 1)).squeeze(1)

    if streams == 1:
        run_passes(0)
    else:
        concurrently(run_passes, streams)
    if unperturbed is None:
        return scores.view(b, n + 1)
    out = torch.empty(b, n + 1, device=dev, dtype=torch.float32)
    out[:, ks] = scores.view(b, m)
    out[:, same] = unperturbed.to(dev).float()
    return out


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid AUC of ``[B, n+1]`` curves on [0, 1]: ``(sum - s_0/2 - s_n/2) / n``."""
    if curves.dim() != 2:
        raise ValueError(f"curves has shape {tuple(curves.shape)}: expected [B, n+1]")
    n = curves.shape[1] - 1
    if n < 1:
        raise ValueError("a curve needs at least two points")
    return (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / n

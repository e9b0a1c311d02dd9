"""Causal faithfulness metrics: insertion and deletion (Petsiuk et al., BMVC 2018, RISE).

The saliency map ranks the H*W positions (descending, stable: ties in raster order).
*Deletion* starts from the image and replaces ``step`` positions per step with the
substrate; *insertion* starts from the substrate and restores ``step`` positions per
step. A position changes in all channels at once. After each of the
``n = ceil(H*W / step)`` steps (and before the first) the model's softmax probability of
the tracked class is recorded, giving a curve of ``n + 1`` points; its AUC is the
trapezoid over the changed fraction on [0, 1]: ``(sum(s) - s_0/2 - s_n/2) / n``.

All images x steps are evaluated in large batches of perturbed images on the images'
device; there is no Python loop over steps. How many go through one pass is decided
while the passes run (:class:`metrics.tuning.BatchTuner`). On a CPU several of those
forward passes may run at once (``streams``), each with its share of the threads.
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
from metrics.tuning import BatchTuner, candidates, start_size

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


class _Rows:
    """The rows ``0 .. total-1`` of the perturbed images, handed out in consecutive
    spans to the passes of every stream (thread-safe)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._next = 0
        self._back: list[tuple[int, int]] = []  # spans a failed pass gave back
        self._lock = threading.Lock()

    def take(self, size: int) -> tuple[int, int] | None:
        """The next span of at most ``size`` rows, or None when all are taken."""
        with self._lock:
            if self._back:
                lo, hi = self._back.pop()
                if hi - lo > size:
                    self._back.append((lo + size, hi))
                    hi = lo + size
                return lo, hi
            if self._next >= self.total:
                return None
            lo = self._next
            self._next = min(self.total, lo + size)
            return lo, self._next

    def left(self) -> int:
        """Rows not handed out yet."""
        with self._lock:
            return self.total - self._next + sum(hi - lo for lo, hi in self._back)

    def give_back(self, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` were not scored: hand them out again."""
        with self._lock:
            self._back.append((lo, hi))


def n_steps(height: int, width: int, step: int) -> int:
    """Number of steps ``n = ceil(H*W / step)`` (the curve has ``n + 1`` points)."""
    return math.ceil(height * width / step)


@torch.inference_mode()
def causal_curves(model: Model, images: torch.Tensor, saliency: torch.Tensor,
                  classes: torch.Tensor, *, mode: str, step: int, substrate: str,
                  batch_size: int | BatchTuner = 0, unperturbed: torch.Tensor | None = None,
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
        batch_size: perturbed images per forward pass; a :class:`BatchTuner` that
            chooses it pass by pass (the evaluator's, one per model kind); 0: a new
            tuner for this call (:func:`metrics.tuning.candidates`). Every image is
            scored once whatever pass it goes through.
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
    the memory format of ``images``. The passes take the next rows in turn, each at
    the size the tuner gives; a pass that runs out of GPU memory
    (``torch.cuda.OutOfMemoryError``) is run again at a smaller size.

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
    if isinstance(batch_size, BatchTuner):
        tuner = batch_size
    elif batch_size > 0:
        tuner = BatchTuner([batch_size], batch_size, adaptive=False)
    else:
        sizes = candidates(images[0], streams=streams)
        tuner = BatchTuner(sizes, start_size(sizes, dev), prefer_large=dev.type == "cuda")
    streams = 1 if dev.type != "cpu" else max(1, min(streams, -(-total // min(tuner.sizes))))
    rows = _Rows(total)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    def run_passes(first: int = 0, stop: threading.Event | None = None) -> None:
        """Passes over the next rows not yet taken, each into this stream's reused
        buffer (until none is left or ``stop`` is set)."""
        buffer: torch.Tensor | None = None
        while stop is None or not stop.is_set():
            size = tuner.size(rows.total, rows.left())
            span = rows.take(size)
            if span is None:
                tuner.unused(size)
                return
            lo, hi = span
            if buffer is None or len(buffer) < hi - lo:
                buffer = torch.empty((hi - lo, c, h, w), dtype=images.dtype,
                                     device=dev).contiguous(memory_format=fmt)
            t0 = tuner.clock()
            try:
                probs = one_pass(buffer[: hi - lo], lo, hi)
                if sync is not None:
                    sync()
            except torch.cuda.OutOfMemoryError:
                buffer = None
                rows.give_back(lo, hi)
                tuner.too_big(size)  # raises when no smaller size is left
                continue
            tuner.observe(size, hi - lo, tuner.clock() - t0)
            scores[lo:hi] = probs

    def one_pass(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """The tracked classes' probabilities of rows ``lo:hi``, perturbed into ``x``."""
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
        return probs.gather(1, classes[img].view(-1, 1)).squeeze(1)

    if streams == 1:
        run_passes()
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

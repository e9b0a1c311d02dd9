"""Trust lenses that need a map or two and at most a forward pass per image: the
similarity of two maps (SSIM), complexity (Gini sparseness, entropy), class
sensitivity (Random Logit) and the confidence change of the image multiplied by its map
(Average Drop, Increase in Confidence). Functional cores on batches, on the maps'
device; the accumulating classes are in :mod:`metrics.standard`.

Every function takes maps ``[B,H,W]`` or ``[B,1,H,W]`` and returns ``[B]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.geometry import normalize

__all__ = ["SSIM_WINDOW", "avg_drop", "by_max", "complexity", "confidence_change", "increase_conf",
           "other_classes", "sparseness", "ssim"]


#: the side of SSIM's window (scikit-image's default); smaller maps cannot be scored
SSIM_WINDOW = 7


def _plane(maps: torch.Tensor) -> torch.Tensor:
    """``[B,H,W]`` of ``[B,H,W]`` or ``[B,1,H,W]`` maps."""
    if maps.dim() == 4 and maps.shape[1] == 1:
        return maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"maps must be [B,H,W] or [B,1,H,W], got {tuple(maps.shape)}")
    return maps


def _flat(maps: torch.Tensor) -> torch.Tensor:
    """``[B,H*W]`` float64 of ``[B,H,W]`` or ``[B,1,H,W]`` maps."""
    m = _plane(maps)
    return m.reshape(m.shape[0], -1).double()


def by_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest magnitude (Quantus' ``normalise_by_max``, its
    default before a similarity); a map without mass stays 0."""
    peak = maps.flatten(1).abs().amax(1).view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny),
                       torch.zeros_like(maps))


def ssim(a: torch.Tensor, b: torch.Tensor, win: int = SSIM_WINDOW, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each pair of maps (Wang et al., IEEE TIP 2004, Eq. 13),
    computed as ``skimage.metrics.structural_similarity`` computes it by default: a
    uniform ``win`` x ``win`` window, sample (co)variances (``N / (N - 1)``), C1 =
    (k1 R)^2, C2 = (k2 R)^2, the mean over the windows lying wholly inside the map
    (skimage's crop of ``(win - 1) / 2`` pixels per side). The data range R of a pair is
    that of both maps together (Quantus' ``similarity_func.ssim``). Two maps that are one
    and the same constant (R = 0, where skimage returns NaN) score 1. In float64.
    (torchmetrics' SSIM pads the borders, takes population variances and one data
    range for the batch, so it is another number.)

    Args:
        a, b: ``[B,H,W]`` or ``[B,1,H,W]`` maps of one shape, H and W >= ``win``.

    Returns:
        ``[B]`` in [-1, 1]; 1 for identical maps.
    """
    x, y = _plane(a).double().unsqueeze(1), _plane(b).double().unsqueeze(1)
    if x.shape != y.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    if min(x.shape[-2:]) < win:
        raise ValueError(f"maps of {tuple(x.shape[-2:])} pixels are smaller than the "
                         f"{win} x {win} SSIM window")
    both = torch.cat([x, y], 1).flatten(1)
    r = (both.amax(1) - both.amin(1)).view(-1, 1, 1, 1)

    def mean(t: torch.Tensor) -> torch.Tensor:  # windows inside the map only
        return F.avg_pool2d(t, win, stride=1)

    n = win * win
    ux, uy = mean(x), mean(y)
    vx = (mean(x * x) - ux * ux) * n / (n - 1)
    vy = (mean(y * y) - uy * uy) * n / (n - 1)
    vxy = (mean(x * y) - ux * uy) * n / (n - 1)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1)
    return torch.where(r.flatten() > 0, out, torch.ones_like(out))


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|map|`` over its pixels (Chalasani et al., ICML 2020's sparseness,
    after Hurley & Rickard, IEEE Trans. Inf. Theory 2009): with the n values sorted
    ascending, G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_(i)). 0 for a uniform map,
    (n - 1) / n for a single pixel; a map without mass counts as uniform (0). Higher is
    sparser.
    """
    a = torch.sort(_flat(maps).abs(), dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1)
    g = ((2 * i - n - 1) * a).sum(1) / (n * total.clamp_min(torch.finfo(a.dtype).tiny))
    return torch.where(total > 0, g, torch.zeros_like(g))


def complexity(maps: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the map's share per pixel, p = ``|a| / sum |a|`` (Bhatt et al.,
    IJCAI 2020, "complexity"): 0 for a single pixel, log n for a uniform map of n pixels (and
    for a map without mass, counted as uniform). Lower is simpler."""
    a = _flat(maps).abs()
    total = a.sum(1, keepdim=True)
    p = a / total.clamp_min(torch.finfo(a.dtype).tiny)
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, math.log(a.shape[1])))


def other_classes(labels: torch.Tensor, n_classes: int, ids: torch.Tensor,
                  seed: int) -> torch.Tensor:
    """``[B]``: for each image one class other than its label, uniformly from the
    ``n_classes - 1`` others, fixed by ``seed`` and the image's test-split index ``ids``
    (the same for every method, batch and process: paired comparisons compare the same
    pairs). Random Logit's draw (Sixt et al., ICML 2020)."""
    if n_classes < 2:
        raise ValueError("class sensitivity needs at least two classes")
    if not ids.numel():
        return labels.clone()
    # one 64-bit word per index, from the start of the seed's stream: a longer stream
    # extends a shorter one (each word is one output of the generator), so an image's
    # draw does not depend on the other images asked for
    words = np.random.default_rng(seed).integers(0, 2 ** 62, size=int(ids.max()) + 1,
                                                 dtype=np.int64)
    off = torch.from_numpy(words[ids.cpu().numpy()]).to(labels.device) % (n_classes - 1)
    return off + (off >= labels).long()


def confidence_change(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      maps: torch.Tensor, classes: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y, O) of Grad-CAM++ Sec. 5: the softmax probability of ``classes`` for the images
    and for the images multiplied by their maps, min-max normalised to [0, 1] per image,
    both from one call of ``model`` (so an inference engine's rounding is the same on
    both sides of O > Y). The images are the model's inputs (normalised), so a pixel
    with map 0 becomes 0, the mean colour, as deletion's substrate. One forward pass of
    ``2 B`` images."""
    m = normalize(maps).unsqueeze(1).to(images.dtype)
    with torch.inference_mode():
        logits = model(torch.cat([images, images * m])).float()
    p = torch.softmax(logits, 1).gather(1, classes.repeat(2).view(-1, 1).to(logits.device))
    return p[: len(images), 0], p[len(images):, 0]


def avg_drop(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-image term of Average Drop (Grad-CAM++, Sec. 5): max(0, Y - O) / Y, a share
    in [0, 1] (the paper reports its mean x 100). 0 where Y is 0."""
    drop = (before - after).clamp_min(0)
    return torch.where(before > 0, drop / before.clamp_min(1e-30), torch.zeros_like(drop))


def increase_conf(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-image term of Increase in Confidence (Grad-CAM++, Sec. 5): 1 where O > Y."""
    return (after > before).float()

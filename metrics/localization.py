"""Localisation metrics of a saliency map against ground-truth boxes.

Saliency is ``[B,H,W]`` or ``[B,1,H,W]`` at image size; each map is min-max normalised
to [0, 1] inside the metric (a constant map becomes all zeros). Boxes are ``[B,4]``
xyxy in pixels; a pixel (row r, column c) is inside a box when its centre
``(c + 0.5, r + 0.5)`` lies in the closed box. A NaN box contains no pixel.

Every function checks its inputs (:mod:`metrics.checks`): a map without a batch
dimension, with several channels or with non-finite values, boxes of another length or
inverted (x2 < x1 or y2 < y1), a negative or non-finite tolerance and original sizes
that are not positive raise ValueError; an empty batch gives an empty result.
"""

from __future__ import annotations

import torch

from harness import geometry
from harness.geometry import box_mask, normalize
from metrics import checks

__all__ = ["bbox_inside_frac", "box_mask", "box_share", "energy_pointing_game", "normalize",
           "pointing_game"]


def bbox_inside_frac(saliency: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.2,
                     ) -> torch.Tensor:
    """Share of the map binarised at ``threshold`` (after min-max) inside the box
    (MSABN, Gupta & Sintorn 2022). Returns ``[B]``."""
    s = checks.maps(saliency)
    b = checks.boxes(boxes, len(s))
    if len(s) == 0:
        return torch.zeros(0, device=s.device)
    return geometry.bbox_inside_frac(s, b, threshold)


def energy_pointing_game(saliency: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Energy-based pointing game (Score-CAM): sum of the normalised map inside the box
    over its total sum; 0 for an all-zero map. Returns ``[B]``."""
    saliency = checks.maps(saliency)
    boxes = checks.boxes(boxes, len(saliency))
    if len(saliency) == 0:
        return torch.zeros(0, device=saliency.device)
    return geometry.energy_inside(saliency, boxes)


def box_share(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Share of an ``height`` x ``width`` image's pixels inside each box (pixel-centre
    rule): what :func:`energy_pointing_game` gives a map spread evenly over the image,
    the reference a map must beat to put more of its energy in the box than none would.
    (A constant map itself scores 0: min-max normalisation makes it all zeros.) Returns
    ``[B]``."""
    b = torch.as_tensor(boxes)
    return box_mask(checks.boxes(b, len(b)), height, width).flatten(1).float().mean(1)


def pointing_game(saliency: torch.Tensor, boxes: torch.Tensor, tolerance: float = 15.0,
                  original_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Pointing-game hits (Zhang et al. 2016; TorchRay's benchmark): ``[B]`` of 0/1.

    The first arg-max of the map in raster order is a hit when it is inside the box or
    strictly closer than ``tolerance`` pixels (centre to centre) to a box pixel.

    Args:
        boxes: ``[B,4]``, or ``[B,K,4]`` every object of each image (NaN rows pad):
            a hit on any object counts.
        original_sizes: ``[B,2]`` (H, W) of each image before it was resized to the
            model input: each map is resized bilinearly (align_corners=False) to its
            image's original size and the box scaled to it, so that ``tolerance`` is
            in original pixels (TorchRay scores at the original resolution with 15 px).
            None: scored at the map's own resolution.
    """
    saliency = checks.maps(saliency)
    boxes = checks.boxes(boxes, len(saliency), objects=True)
    tolerance = checks.tolerance(tolerance)
    if original_sizes is not None:
        original_sizes = checks.sizes(original_sizes, len(saliency))
    if len(saliency) == 0:
        return torch.zeros(0, device=saliency.device)
    if original_sizes is None:
        return _pointing_hits(normalize(saliency), boxes, tolerance)
    s = saliency if saliency.dim() == 4 else saliency[:, None]
    h, w = s.shape[-2:]
    sizes = torch.as_tensor(original_sizes).long().cpu()
    hits = torch.zeros(len(s), device=s.device)
    for size in torch.unique(sizes, dim=0):  # one resize per distinct original size
        rows = torch.nonzero((sizes == size).all(1)).flatten().to(s.device)
        oh, ow = int(size[0]), int(size[1])
        maps = torch.nn.functional.interpolate(s[rows].float(), size=(oh, ow),
                                               mode="bilinear", align_corners=False)
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=boxes.device)
        if boxes.dim() == 3:
            scale = scale[None]
        hits[rows] = _pointing_hits(normalize(maps), boxes[rows].float() * scale, tolerance)
    return hits


def _pointing_hits(s: torch.Tensor, boxes: torch.Tensor, tolerance: float) -> torch.Tensor:
    if boxes.dim() == 3:  # several objects: a hit on any of them
        return torch.stack([_pointing_hits(s, boxes[:, k], tolerance)
                            for k in range(boxes.shape[1])]).amax(0)
    b, h, w = s.shape
    arg = s.reshape(b, -1).argmax(1)
    r, c = (arg // w).float(), (arg % w).float()
    boxes = boxes.float()
    # first/last pixel indices whose centres are inside the box
    c_lo, c_hi = torch.ceil(boxes[:, 0] - 0.5), torch.floor(boxes[:, 2] - 0.5)
    r_lo, r_hi = torch.ceil(boxes[:, 1] - 0.5), torch.floor(boxes[:, 3] - 0.5)
    c_lo, r_lo = c_lo.clamp_min(0), r_lo.clamp_min(0)
    c_hi, r_hi = c_hi.clamp_max(w - 1), r_hi.clamp_max(h - 1)
    nonempty = (c_lo <= c_hi) & (r_lo <= r_hi)
    zero = torch.zeros_like(r)
    dx = torch.maximum(torch.maximum(c_lo - c, c - c_hi), zero)
    dy = torch.maximum(torch.maximum(r_lo - r, r - r_hi), zero)
    dist = torch.sqrt(dx**2 + dy**2)
    hit = nonempty & ((dist == 0) | (dist < tolerance))
    return hit.float()

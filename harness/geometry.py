"""Map and box geometry shared by methods (attention editing, losses) and metrics, and
the one definition of a sample's most confusing class (single- and multi-label).

Boxes are ``[B,4]`` xyxy in input pixels. A cell (row r, column c) of a map whose cells
span ``stride`` input pixels is inside a box when its centre ``((c + 0.5) * stride,
(r + 0.5) * stride)`` lies in the closed box; at input resolution (stride 1) this is
the pixel-centre rule. A NaN box contains no cell.
"""

from __future__ import annotations

import torch


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation to [0, 1]; ``[B,H,W]`` float (constant -> 0).

    Accepts ``[B,H,W]`` or ``[B,1,H,W]``.
    """
    s = maps[:, 0] if maps.dim() == 4 else maps
    s = s.float()
    flat = s.reshape(s.shape[0], -1)
    lo = flat.min(1).values.view(-1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1) - lo
    return torch.where(span > 0, (s - lo) / span.clamp_min(1e-12), torch.zeros_like(s))


def box_mask(boxes: torch.Tensor, height: int, width: int,
             stride: float | tuple[float, float] = 1.0) -> torch.Tensor:
    """Boolean ``[B,H,W]``: cells whose centres lie in each box (``[B,4]``), or in any of
    each image's boxes (``[B,K,4]``, NaN rows none); ``stride`` is the cell size in input
    pixels, one number or (vertical, horizontal)."""
    if boxes.dim() == 3:
        n, k = boxes.shape[:2]
        return box_mask(boxes.reshape(n * k, 4), height, width, stride).view(
            n, k, height, width).any(1)
    sy, sx = stride if isinstance(stride, tuple) else (stride, stride)
    boxes = boxes.float()
    cx = (torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5) * sx
    cy = (torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5) * sy
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside_x = (cx.view(1, 1, -1) >= x1) & (cx.view(1, 1, -1) <= x2)
    inside_y = (cy.view(1, -1, 1) >= y1) & (cy.view(1, -1, 1) <= y2)
    return inside_x & inside_y


def bbox_inside_frac(maps: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.2,
                     normalized: bool = True) -> torch.Tensor:
    """Share of the binarised map (value >= ``threshold``) inside the box (or boxes,
    ``[B,K,4]``).

    MSABN (Sec. 4.3) binarises attention at 0.2. An empty binarised map scores 0.
    Maps at input resolution, ``[B,H,W]`` or ``[B,1,H,W]``; returns ``[B]``.

    Args:
        normalized: binarise the per-image min-max normalised map (the metric, which
            must treat every method's maps alike); False binarises the raw values (for
            maps in [0, 1] such as a sigmoid attention map, as the paper does).
    """
    s = normalize(maps) if normalized else (maps[:, 0] if maps.dim() == 4 else maps).float()
    on = s >= threshold
    inside = (on & box_mask(boxes, *s.shape[-2:])).sum((1, 2)).float()
    total = on.sum((1, 2)).float()
    return torch.where(total > 0, inside / total.clamp_min(1), torch.zeros_like(total))


def energy_inside(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share of the min-max normalised map's sum inside the box (or boxes, ``[B,K,4]``);
    0 for an all-zero map. Maps ``[B,H,W]`` or ``[B,1,H,W]``; returns ``[B]``."""
    s = normalize(maps)
    inside = (s * box_mask(boxes, *s.shape[-2:])).sum((1, 2))
    total = s.sum((1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def map_box_mask(boxes: torch.Tensor, fmap: torch.Tensor,
                 image_size: tuple[int, ...]) -> torch.Tensor:
    """Float ``[B,1,h,w]`` box mask at the resolution of ``fmap`` ``[B,C,h,w]`` for an
    input of ``image_size`` (H, W); the cell strides are H / h and W / w."""
    h, w = fmap.shape[-2:]
    stride = (image_size[0] / h, image_size[1] / w)
    return box_mask(boxes, h, w, stride).unsqueeze(1).to(fmap.dtype)


def soft_iou(a_t: torch.Tensor, a_conf: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft IoU of two non-negative maps ``[B,h,w]`` (Wang et al. 2019, Eq. 6):
    2 sum(min(A^T, A^Conf) * Mask) / sum(A^T + A^Conf), ``[B]``.

    The training loss of discriminative attention (with its object mask) and the
    ``siou_confusion`` metric (without). Without ``mask`` it is 1 for identical maps and
    0 for disjoint ones; two all-zero maps give 0.
    """
    inter = torch.minimum(a_t, a_conf)
    if mask is not None:
        inter = inter * mask
    den = (a_t + a_conf).flatten(1).sum(1)
    return 2.0 * inter.flatten(1).sum(1) / den.clamp_min(1e-12)


def most_confusing(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: the highest-scoring class other than ``target`` (the discriminative
    attention paper's "most confusing class"; ties go to the lowest index)."""
    return logits.detach().scatter(1, target.view(-1, 1), float("-inf")).argmax(1)


def most_confusing_absent(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B]``: the highest-scoring class absent from the image, ``present`` ``[B,K]``
    its 0/1 (or boolean) classes; -1 where every class is present (no confusing class).

    The multi-label analogue of :func:`most_confusing` (the highest non-target score):
    Wang et al. 2019, Sec. 4.3, train on multi-label targets without saying which class
    is then the most confusing one; a class the image holds is no confusion, so the
    highest-scoring one among those it does not hold is taken. Ties go to the lowest
    index."""
    held = present.bool()
    conf = logits.detach().masked_fill(held, float("-inf")).argmax(1)
    return torch.where(held.all(1), torch.full_like(conf, -1), conf)

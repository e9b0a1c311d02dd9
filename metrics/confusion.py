"""Class confusion between explanation maps (Wang et al. 2019, "Reducing Visual
Confusion with Discriminative Attention", Eq. 6 without its object mask).

``siou_confusion`` is the soft IoU between two classes' maps: 1 when the two classes are
explained by the same evidence, 0 when by disjoint evidence. As in Eq. 6 the pair is the
target (ground-truth) class and the most confusing class, the highest-scoring other
class (:func:`target_pair`); the label-free variant pairs the predicted class with the
runner-up (:func:`confusing_pair`).
"""

from __future__ import annotations

import torch

from harness.geometry import most_confusing, soft_iou
from metrics import checks

__all__ = ["confusing_pair", "most_confusing", "runner_up", "siou_confusion", "target_pair"]


def runner_up(logits: torch.Tensor) -> torch.Tensor:
    """``[B]``: the highest-scoring class other than the prediction ``argmax``."""
    return most_confusing(logits, logits.argmax(1))


def target_pair(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B,2]``: the target class and the most confusing class (Eq. 6's pair)."""
    if logits.dim() != 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}: expected [B,K]")
    target = checks.classes(target, len(logits), logits.shape[1], arg="target").to(
        logits.device)
    return torch.stack([target, most_confusing(logits, target)], 1)


def confusing_pair(logits: torch.Tensor) -> torch.Tensor:
    """``[B,2]``: the predicted class and the runner-up, the classes whose maps
    :func:`siou_confusion` compares."""
    return torch.stack([logits.argmax(1), runner_up(logits)], 1)


def siou_confusion(maps: torch.Tensor) -> torch.Tensor:
    """Soft IoU ``[B]`` between ``maps[:, 0]`` and ``maps[:, 1]`` (``[B,2,h,w]``: two
    classes' maps, e.g. of :func:`target_pair`, at the method's own resolution).

    Negative values (CAM's raw class maps, negative evidence) are clipped to 0 first: the
    soft IoU is defined for non-negative maps, and the clipped map is the one CAM
    explains with. No other normalisation: both maps come from the same method and
    layer, so their relative magnitude is part of the overlap.
    """
    if maps.dim() != 4 or maps.shape[1] != 2:
        raise ValueError(f"siou_confusion needs [B,2,h,w] maps, got {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps has non-finite values (NaN or inf)")
    m = maps.float().clamp_min(0)
    return soft_iou(m[:, 0], m[:, 1])

"""Class confusion between explanation maps (Wang et al. 2019, "Reducing Visual
Confusion with Discriminative Attention", Eq. 6 without its object mask).

``siou_confusion`` is the soft IoU between the map of the predicted class and the map of
the most confusing class (the highest-scoring class other than the prediction): 1 when
the two classes are explained by the same evidence, 0 when by disjoint evidence.
"""

from __future__ import annotations

import torch

from harness.geometry import soft_iou

__all__ = ["confusing_pair", "runner_up", "siou_confusion"]


def runner_up(logits: torch.Tensor) -> torch.Tensor:
    """``[B]``: the highest-scoring class other than the prediction ``argmax``."""
    pred = logits.argmax(1, keepdim=True)
    return logits.detach().scatter(1, pred, float("-inf")).argmax(1)


def confusing_pair(logits: torch.Tensor) -> torch.Tensor:
    """``[B,2]``: the predicted class and the runner-up, the classes whose maps
    :func:`siou_confusion` compares."""
    return torch.stack([logits.argmax(1), runner_up(logits)], 1)


def siou_confusion(maps: torch.Tensor) -> torch.Tensor:
    """Soft IoU ``[B]`` between ``maps[:, 0]`` and ``maps[:, 1]`` (``[B,2,h,w]``: the
    predicted and the most confusing class's maps, at the method's own resolution).

    Negative values (CAM's raw class maps, negative evidence) are clipped to 0 first: the
    soft IoU is defined for non-negative maps, and the clipped map is the one CAM
    explains with. No other normalisation: both maps come from the same method and
    layer, so their relative magnitude is part of the overlap.
    """
    if maps.dim() != 4 or maps.shape[1] != 2:
        raise ValueError(f"siou_confusion needs [B,2,h,w] maps, got {tuple(maps.shape)}")
    m = maps.float().clamp_min(0)
    return soft_iou(m[:, 0], m[:, 1])

"""A custom metric in one file: relevance rank accuracy (Arras et al., "CLEVR-XAI",
Information Fusion 2022, Sec. 4.2).

    python -m harness.run --include examples/custom_metric.py --methods baseline,gradcam,abn

For an image whose object box covers K pixels, the share of the map's K highest pixels
that lie in the box (ties broken by pixel order): 1 when the map's top pixels fill the
box exactly, K / (H W) on average for a map that ignores the image. Like every column it
gets per-image scores, intervals, paired tests, a place in the store and in the
evaluation cache (editing this file recomputes this column alone).
"""

from __future__ import annotations

import torch

from harness.geometry import box_mask
from metrics.base import EvalBatch, MetricSpec, PerImageMetric, Rows, register_metric


def relevance_rank_accuracy(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[B]`` scores of ``[B,1,H,W]`` maps against ``[B,4]`` xyxy boxes."""
    b, _, h, w = maps.shape
    inside = box_mask(boxes, h, w).reshape(b, -1)
    k = inside.sum(1)
    order = maps.reshape(b, -1).argsort(dim=1, descending=True, stable=True)
    top = torch.arange(h * w, device=maps.device)[None, :] < k[:, None]
    hits = (inside.gather(1, order) & top).sum(1)
    return hits.float() / k.clamp_min(1).float()


class RelevanceRankAccuracy(PerImageMetric):
    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        boxes = batch.boxes.get("bbox")
        if boxes is None:
            return None
        ok = torch.isfinite(boxes).all(1)  # images without a box are not scored
        return relevance_rank_accuracy(batch.saliency[ok], boxes[ok]), ok


register_metric(MetricSpec(
    "relevance_rank_acc", higher_is_better=True, needs_boxes=("bbox",),
    description="share of the map's K top pixels inside the box of K pixels",
    paper="Arras et al., Information Fusion 2022", factory=lambda cfg: RelevanceRankAccuracy()))

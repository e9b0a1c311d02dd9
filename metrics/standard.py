"""The accumulating metric classes behind the leaderboard's columns, and their registry
entries. Functional cores live in :mod:`metrics.causal` and :mod:`metrics.localization`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metrics import causal, localization
from metrics.base import EvalBatch, MetricSpec, PerImageMetric, register_metric


class TopK(PerImageMetric):
    """Top-k accuracy of the prediction (1 if the true class is among the k best)."""

    def __init__(self, k: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(self.k, batch.logits.shape[1])
        top = batch.logits.topk(k, dim=1).indices
        return (top == batch.labels.view(-1, 1)).any(1).float(), batch.labels


class CausalAUC(PerImageMetric):
    """Insertion or deletion AUC on the evaluator's causal subset (curves kept).

    Args:
        mode: ``"insertion"`` (higher is better) or ``"deletion"`` (lower is better).
        substrate: defaults to the RISE protocol: blur for insertion, zero for deletion.
        step: positions per step; 0 = one image row (RISE).
        forward_batch: perturbed images per forward pass.
    """

    def __init__(self, mode: str, substrate: str | None = None, step: int = 0,
                 forward_batch: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode
        self.substrate = substrate or ("blur" if mode == "insertion" else "zero")
        self.step = step
        self.forward_batch = forward_batch
        self.curves: list[torch.Tensor]
        self.add_state("curves", default=[], dist_reduce_fx="cat")

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if batch.causal_images is None or batch.model is None:
            return None
        assert batch.causal_saliency is not None and batch.causal_classes is not None
        n_img = batch.causal_images.shape[0]
        step = self.step or batch.causal_images.shape[-1]
        curves = causal.causal_curves(batch.model, batch.causal_images, batch.causal_saliency,
                                      batch.causal_classes, mode=self.mode, step=step,
                                      substrate=self.substrate, batch_size=self.forward_batch)
        self.curves.append(curves)
        return causal.auc(curves), batch.labels[:n_img]

    def mean_curve(self) -> np.ndarray:
        """The mean curve over all scored images."""
        if not self.curves:
            return np.zeros(0)
        return torch.cat(self.curves).mean(0).cpu().numpy()


class InsertionAUC(CausalAUC):
    """Insertion AUC (higher is better); RISE default substrate: blur."""

    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("insertion", **kwargs)


class DeletionAUC(CausalAUC):
    """Deletion AUC (lower is better); RISE default substrate: zeros."""

    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("deletion", **kwargs)


class BoxMetric(PerImageMetric):
    """A localisation metric of the ground-truth-class saliency against a named box."""

    def __init__(self, fn: str, box: str = "bbox", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn, self.box = fn, box

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.box not in batch.boxes:
            return None
        boxes = batch.boxes[self.box]
        if self.fn == "inside":
            s = localization.bbox_inside_frac(batch.saliency, boxes)
        elif self.fn == "energy":
            s = localization.energy_pointing_game(batch.saliency, boxes)
        else:
            s = localization.pointing_game(batch.saliency, boxes, batch.pointing_tolerance)
        return s, batch.labels


class PointingGame(BoxMetric):
    """Pointing game, reported as the mean of per-class hit rates (TorchRay)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("pointing", **kwargs)

    @staticmethod
    def aggregate(scores: np.ndarray, classes: np.ndarray) -> float:
        if not len(scores):
            return float("nan")
        return float(np.mean([scores[classes == c].mean() for c in np.unique(classes)]))


def _spec(name: str, hib: bool, desc: str, factory: Any = None, needs: tuple[str, ...] = (),
          paper: str = "", unit: str = "", explanation: bool = True) -> None:
    register_metric(MetricSpec(name, hib, desc, paper, needs, factory, unit, explanation))


_spec("top1", True, "top-1 accuracy", lambda cfg: TopK(1), explanation=False)
_spec("top5", True, "top-5 accuracy", lambda cfg: TopK(5), explanation=False)
_spec("insertion_auc", True, "insertion AUC (RISE protocol: predicted class, blur substrate, "
      "one row per step)", lambda cfg: InsertionAUC(step=cfg.causal_step,
                                                    forward_batch=cfg.forward_batch),
      paper="Petsiuk et al., BMVC 2018")
_spec("deletion_auc", False, "deletion AUC (RISE protocol: predicted class, zero substrate, "
      "one row per step)", lambda cfg: DeletionAUC(step=cfg.causal_step,
                                                   forward_batch=cfg.forward_batch),
      paper="Petsiuk et al., BMVC 2018")
_spec("bbox_inside_frac", True, "share of the map binarised at 0.2 inside the target box",
      lambda cfg: BoxMetric("inside"), ("bbox",), paper="Mitsuhara et al. (MSABN), 2022")
_spec("energy_pg", True, "share of map energy inside the target box",
      lambda cfg: BoxMetric("energy"), ("bbox",), paper="Wang et al. (Score-CAM), 2020")
_spec("pointing_game", True, "pointing game, mean per-class hit rate",
      lambda cfg: PointingGame(), ("bbox",), paper="Zhang et al., ECCV 2016")
_spec("distractor_frac", False, "share of map energy on the distractor object",
      lambda cfg: BoxMetric("energy", box="distractor_bbox"), ("distractor_bbox",))
_spec("explain_ms", False, "milliseconds per explanation (batched)", unit="ms")
_spec("explain_overhead", False, "explanation time / plain forward time on the same batch")

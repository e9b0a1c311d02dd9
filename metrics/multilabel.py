"""Metrics of multi-label datasets: per-label accuracy, mean average precision, and the
localisation columns scored per present class against that class's boxes.

A multi-label image holds several classes (``EvalBatch.targets``, a 0/1 vector), each
with its own boxes (``objects`` rows whose ``object_labels`` name the class). These
metrics keep one score per (image, label) pair, the label as the pair's class and the
image's test-split index as its id, and report the mean of per-label means: the
average of per-label accuracies (ABN Table 4), the mean over classes of the average
precision (Wang et al. Table 6), the class-balanced localisation. The bootstrap draws
images (every pair of a drawn image comes with it, :func:`harness.stats.estimate`), and
paired tests pair the same (image, label) pairs across methods.

The prediction of label c is ``logit_c > 0`` (sigmoid > 0.5), as the losses of
:func:`methods.base.classification_loss` train it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.utilities import dim_zero_cat

from harness import geometry
from metrics import localization
from metrics.base import EvalBatch, MetricSpec, PerImageMetric, register_metric

#: the task of a dataset whose samples carry ``labels`` (:attr:`MetricSpec.tasks`)
MULTI = ("multi",)


class PerLabelMetric(PerImageMetric):
    """Scores (image, label) pairs: :meth:`pairs` returns the scores, the batch rows of
    their images and their labels. The column is the mean of per-label means."""

    per_class = True

    def pairs(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``[n]`` scores, ``[n]`` batch rows and ``[n]`` labels (None: skip the batch)."""
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        got = self.pairs(batch) if batch.targets is not None else None
        ids = self.image_ids_of(batch)
        self._seen += len(batch.labels)
        if got is None:
            return
        scores, rows, labels = got
        self.scores.append(scores.detach().float())
        self.classes.append(labels.detach().long())
        self.ids.append(ids.to(rows.device)[rows].detach().long())


def _present(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, labels) of every label present in each image, image by image."""
    rows, labels = torch.nonzero(targets > 0.5, as_tuple=True)
    return rows, labels


class LabelAccuracy(PerLabelMetric):
    """Per-label accuracy: label c of an image is right when ``logit_c > 0`` is its 0/1
    target; every (image, label) pair is scored, so the column is the average of the
    per-label accuracies (ABN Table 4, "average of accuracy")."""

    def pairs(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert batch.targets is not None
        right = ((batch.logits > 0) == (batch.targets > 0.5)).float()
        n, c = right.shape
        rows = torch.arange(n, device=right.device).repeat_interleave(c)
        labels = torch.arange(c, device=right.device).repeat(n)
        return right.flatten(), rows, labels


def precision_at_positives(scores: np.ndarray, targets: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each positive (image, class) pair's precision at its own score: among the images
    scoring at least as high on that class, the share that hold it.

    The average precision of a class (``sklearn.metrics.average_precision_score``, the
    sum over thresholds of recall step x precision, ties forming one threshold) is the
    mean of these over the class's positives; classes without a positive have none.

    Args:
        scores, targets: ``[n,C]`` scores and 0/1 targets.

    Returns:
        (precision, image row, class), one entry per positive pair, image by image.
    """
    n, c = scores.shape
    prec = np.zeros((n, c))
    for k in range(c):
        s, t = scores[:, k].astype(np.float64), targets[:, k] > 0.5
        order = np.argsort(-s, kind="stable")
        tp = np.cumsum(t[order])
        # the number of images scoring >= each image's score: the last of its tie group
        last = np.searchsorted(-s[order], -s, side="right") - 1
        prec[:, k] = tp[last] / (last + 1)
    rows, cls = np.nonzero(targets > 0.5)
    return prec[rows, cls], rows, cls


class MeanAveragePrecision(PerImageMetric):
    """Mean average precision over classes (Wang et al. Table 6, "AP"): each positive
    (image, class) pair scores its precision at its own score over the whole test set
    (:func:`precision_at_positives`), so the mean of per-class means is the mean of
    scikit-learn's per-class average precision, over the classes with a positive test
    image. The precisions are computed once every image is in; the bootstrap
    resamples images with each pair's precision held as computed on the full test set
    (a conditional interval: it leaves out how a resample would re-rank)."""

    per_class = True
    logits: list[torch.Tensor]
    targets: list[torch.Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        ids = self.image_ids_of(batch)
        self._seen += len(batch.labels)
        if batch.targets is None:
            return
        self.logits.append(batch.logits.detach().float())
        self.targets.append(batch.targets.detach().float())
        self.ids.append(ids.to(batch.logits.device).detach().long())
        # one placeholder per image: the base class's gather orders states by image
        self.scores.append(torch.zeros(len(ids), device=batch.logits.device))
        self.classes.append(torch.zeros(len(ids), dtype=torch.long, device=batch.logits.device))

    def empty_states(self) -> dict[str, torch.Tensor]:
        import torch.distributed as dist

        width = torch.tensor([self.logits[0].shape[1] if self.logits else 0],
                             device=self.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        c = int(width)
        return {**super().empty_states(), "logits": torch.zeros(0, c),
                "targets": torch.zeros(0, c)}

    def per_image(self) -> tuple[np.ndarray, np.ndarray]:
        """Each positive pair's precision and class, image by image."""
        if not self.logits:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        prec, _, cls = precision_at_positives(dim_zero_cat(self.logits).cpu().numpy(),
                                              dim_zero_cat(self.targets).cpu().numpy())
        return prec, cls.astype(np.int64)

    def image_ids(self) -> np.ndarray:
        """The image of each pair of :meth:`per_image` (its positives, in the same order)."""
        if not self.logits:
            return np.zeros(0, dtype=np.int64)
        rows, _ = np.nonzero(dim_zero_cat(self.targets).cpu().numpy() > 0.5)
        return dim_zero_cat(self.ids).cpu().numpy()[rows].astype(np.int64)


def class_boxes(objects: torch.Tensor, object_labels: torch.Tensor, rows: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """``[n,K,4]``: for each (row, label) pair, the boxes of the image's objects of that
    class, the other objects' rows NaN (a NaN box contains no pixel)."""
    mine = object_labels[rows] == labels[:, None]
    boxes = objects[rows].float()
    return torch.where(mine[..., None], boxes, torch.full_like(boxes, float("nan")))


def class_explanations(batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor] | None:
    """Every present (image, class) pair of ``batch`` with an object of its class: (the
    explanation of that class ``[n,1,H,W]``, rows, labels, the class's boxes
    ``[n,K,4]``), computed once per batch for every per-class localisation column."""
    if batch.targets is None or batch.object_labels is None or batch.explain is None or (
            "objects" not in batch.boxes):
        return None
    key = "class_explanations"
    if key not in batch.shared:
        rows, labels = _present(batch.targets)
        boxes = class_boxes(batch.boxes["objects"], batch.object_labels, rows, labels)
        has = torch.isfinite(boxes).all(2).any(1)
        rows, labels, boxes = rows[has], labels[has], boxes[has]
        maps = batch.explain(batch.images[rows], labels) if len(rows) else None
        batch.shared[key] = None if maps is None else (maps, rows, labels, boxes)
    got: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = (
        batch.shared[key])
    return got


class ClassLocalisation(PerLabelMetric):
    """A localisation score of each present class's explanation against the boxes of
    that class's objects (the union of them): ``energy`` (share of the normalised
    map's energy inside), ``inside`` (share of the map binarised at 0.2 inside, MSABN)
    or ``pointing`` (the map's arg-max on one of them, within the dataset's tolerance,
    TorchRay's pointing game). The column is the mean of per-class means."""

    def __init__(self, fn: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if fn not in ("energy", "inside", "pointing"):
            raise ValueError(f"unknown class localisation {fn!r}")
        self.fn = fn

    def pairs(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        got = class_explanations(batch)
        if got is None:
            return None
        maps, rows, labels, boxes = got
        if self.fn == "pointing":
            sizes = None if batch.original_sizes is None else batch.original_sizes[rows]
            s = localization.pointing_game(maps, boxes, batch.pointing_tolerance, sizes)
            return s, rows, labels
        s = (geometry.energy_inside(maps, boxes) if self.fn == "energy"
             else geometry.bbox_inside_frac(maps, boxes))
        return s, rows, labels


def _spec(name: str, desc: str, factory: Any, *, explanation: bool = True,
          needs: tuple[str, ...] = (), paper: str = "") -> None:
    register_metric(MetricSpec(name, True, desc, paper, needs, factory,
                               explanation=explanation, tasks=MULTI))


_spec("label_acc", "multi-label: mean over labels of the per-label accuracy (label c "
      "predicted present when its logit > 0)", lambda cfg: LabelAccuracy(), explanation=False,
      paper="Fukui et al. (ABN), CVPR 2019, Table 4")
_spec("mAP", "multi-label: mean over classes of the average precision (scikit-learn's); "
      "interval with each positive's precision held fixed", lambda cfg: MeanAveragePrecision(),
      explanation=False, paper="Wang et al. (discriminative attention), 2019, Table 6")
_spec("class_energy_pg", "multi-label: share of the map's energy inside the boxes of the "
      "explained class, each present class explained; mean of per-class means",
      lambda cfg: ClassLocalisation("energy"), needs=("bbox",),
      paper="Wang et al. (Score-CAM), 2020, per class")
_spec("class_bbox_inside_frac", "multi-label: share of the map binarised at 0.2 inside the "
      "boxes of the explained class, each present class explained; mean of per-class means",
      lambda cfg: ClassLocalisation("inside"), needs=("bbox",),
      paper="Gupta & Sintorn (MSABN), 2022, per class")
_spec("class_pointing_game", "multi-label: pointing game of each present class's map "
      "against that class's boxes (dataset tolerance); mean of per-class hit rates",
      lambda cfg: ClassLocalisation("pointing"), needs=("bbox",),
      paper="Zhang et al., ECCV 2016, per class")

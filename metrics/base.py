"""Metric registry, the evaluation batch and the per-image accumulating base class.

Every metric keeps per-image scores (so the leaderboard can give bootstrap intervals
and paired tests) in a ``torchmetrics.Metric`` state reduced by concatenation across
processes. Nothing here knows a method by name: metrics see an :class:`EvalBatch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from harness import stats
from harness.registry import Registry
from metrics.tuning import BatchTuner


@dataclass
class EvalBatch:
    """What the evaluator knows about one batch of test images.

    Attributes:
        images: ``[B,3,H,W]`` model inputs.
        labels: ``[B]`` ground-truth classes.
        logits: ``[B,K]`` the method's prediction.
        saliency: ``[B,1,H,W]`` explanation of the ground-truth class.
        boxes: named ``[B,4]`` xyxy boxes (``"bbox"``, ``"distractor_bbox"``, ...).
        model: images -> logits, for metrics that perturb the input.
        forward_batch: how many perturbed images go through ``model`` at once, chosen
            pass by pass (None: the metric's own ``forward_batch``).
        causal_images/causal_saliency/causal_classes: the subset scored by the causal
            metrics, the batch's first rows (so ``logits[:n]`` are their predictions),
            with the explanation of the tracked class (None if none here).
        pointing_tolerance: the dataset's pointing-game tolerance in pixels (of the
            original images when ``original_sizes`` is given, else of the inputs).
        fixed_logits: the prediction with attention outside the target box removed
            (methods with an attention mechanism; None otherwise).
        comb_mask: ``[B]`` bool, the images in the ``comb`` insertion protocol's subset
            (those the reference method misclassifies); None when not computed.
        class_maps: classes ``[B,C]`` -> the method's class-specific maps ``[B,C,h,w]``
            of these images (None: the method has no class maps).
        indices: ``[B]`` the images' indices in the test split (scores are paired across
            methods and seeds by them); None: numbered in the order the metric sees
            them.
        explain: (images, classes ``[n]``) -> the explainer's maps ``[n,1,H,W]`` (float,
            finite), for metrics that explain again (another class, other images);
            None: not available.
        shared: what metrics computing the same thing on this batch share (each key
            named by the function that fills it).
        input_std: the per-channel standard deviation the inputs were normalised by (a
            step of 1 in [0, 1] pixel units is 1 / std in input units); None: unknown.
        randomised: () -> (mode, group, explain) for each step of the model-parameter
            randomisation (:func:`metrics.randomisation.randomised_models`): the same
            explainer on the model with parameter groups re-initialised; built on first
            call; None: not available.
        permuted: (images, classes ``[n]``) -> the same explainer's maps by the model
            trained on permuted labels (the data-randomisation test, ``--sanity
            data``); None: no such model in this run.
        targets: ``[B,C]`` 0/1, every class each image holds (multi-label datasets;
            None otherwise); ``labels`` is then one of them (the dataset's primary).
        object_labels: ``[B,K]`` the class of each row of ``boxes["objects"]`` (-1 on
            padding), where the dataset has it; None otherwise.
        original_sizes: ``[B,2]`` (H, W), in original pixels, of the region of each
            image that the input shows (the whole image when the test transform
            resizes it, the centre crop's side when it crops), for datasets read from
            files; None otherwise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    saliency: torch.Tensor
    boxes: dict[str, torch.Tensor] = field(default_factory=dict)
    model: Callable[[torch.Tensor], torch.Tensor] | None = None
    forward_batch: BatchTuner | None = None
    causal_images: torch.Tensor | None = None
    causal_saliency: torch.Tensor | None = None
    causal_classes: torch.Tensor | None = None
    pointing_tolerance: float = 15.0
    fixed_logits: torch.Tensor | None = None
    comb_mask: torch.Tensor | None = None
    class_maps: Callable[[torch.Tensor], torch.Tensor | None] | None = None
    indices: torch.Tensor | None = None
    original_sizes: torch.Tensor | None = None
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    input_std: tuple[float, ...] | None = None
    randomised: Callable[[], list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor],
                                                            torch.Tensor]]]] | None = None
    permuted: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    targets: torch.Tensor | None = None
    object_labels: torch.Tensor | None = None


#: which images of a batch a metric scored: a bool mask ``[B]`` or row indices
Rows = torch.Tensor


class PerImageMetric(Metric):
    """Accumulates one score per image, with the image's class and test-split index.

    Subclasses implement :meth:`score`: the ``[n]`` scores of the batch rows they
    scored and those rows (None to skip the batch). The leaderboard value is the mean
    of the scores, or with ``per_class = True`` the mean of per-class means
    (:func:`harness.stats.aggregate`).
    """

    full_state_update = False
    higher_is_better: bool | None = True
    #: aggregate as the mean of per-class means (TorchRay's pointing game, balanced acc.)
    per_class: bool = False
    scores: list[torch.Tensor]
    classes: list[torch.Tensor]
    ids: list[torch.Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("classes", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self._seen = 0  # images offered so far (ids when batches carry no indices)

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        """Per-image scores and the batch rows (mask or indices) they belong to."""
        raise NotImplementedError

    def reset(self) -> None:
        super().reset()
        self._seen = 0

    def image_ids_of(self, batch: EvalBatch) -> torch.Tensor:
        """``[B]`` the batch's test-split indices (numbered in arrival order when the
        batch carries none), as :meth:`update` records them."""
        if batch.indices is not None:
            return batch.indices
        return torch.arange(len(batch.labels), device=batch.labels.device) + self._seen

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        out = self.score(batch)
        if out is None:
            return
        scores, rows = out
        ids = self.image_ids_of(batch)  # in test-split order when numbered here
        self._seen += len(batch.labels)
        self.scores.append(scores.detach().float())
        self.classes.append(batch.labels[rows].detach().long())
        self.ids.append(ids.to(batch.labels.device)[rows].detach().long())

    def gather(self) -> None:
        """After each rank has scored its share of the test images (torchrun): every
        rank's scores, by torchmetrics' distributed reduction (concatenation, uneven
        shares allowed), put in test-split order, so that the state is exactly what one
        process scoring every image in order accumulates. A no-op in one process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        names = list(self._defaults)
        for name, empty in self.empty_states().items():  # a rank that scored nothing
            if not getattr(self, name):
                getattr(self, name).append(empty.to(self.device))
        self.sync(should_sync=True)
        gathered = {n: dim_zero_cat(getattr(self, n)) for n in names}
        self.unsync()
        order = torch.argsort(gathered["ids"], stable=True)
        for n in names:
            t = gathered[n]
            setattr(self, n, [t[order]] if len(t) else [])

    def empty_states(self) -> dict[str, torch.Tensor]:
        """What each list state holds for no image (shape and dtype of the gathered
        tensors)."""
        return {"scores": torch.zeros(0), "classes": torch.zeros(0, dtype=torch.long),
                "ids": torch.zeros(0, dtype=torch.long)}

    def per_image(self) -> tuple[np.ndarray, np.ndarray]:
        """All per-image scores and their ground-truth classes (numpy)."""
        if not self.scores:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        return (dim_zero_cat(self.scores).cpu().numpy(),
                dim_zero_cat(self.classes).cpu().numpy())

    def image_ids(self) -> np.ndarray:
        """The test-split index of each score of :meth:`per_image`."""
        if not self.ids:
            return np.zeros(0, dtype=np.int64)
        return dim_zero_cat(self.ids).cpu().numpy()

    @classmethod
    def aggregate(cls, scores: np.ndarray, classes: np.ndarray) -> float:
        """The leaderboard value from per-image scores (mean, or mean of class means)."""
        return stats.aggregate(scores, classes, per_class=cls.per_class)

    def compute(self) -> torch.Tensor:
        scores, classes = self.per_image()
        return torch.tensor(self.aggregate(scores, classes))


class CurveMetric(PerImageMetric):
    """A per-image metric that also keeps one curve per scored image (``[n, points]``:
    insertion / deletion scores per step, similarities per randomisation step, ROAD's
    probabilities per fraction); the report shows their mean (:meth:`mean_curve`)."""

    curves: list[torch.Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("curves", default=[], dist_reduce_fx="cat")

    def empty_states(self) -> dict[str, torch.Tensor]:
        """As the base class's, and ``[0, points]`` curves: the points agreed over the
        ranks (a rank that scored no image does not know them)."""
        import torch.distributed as dist

        points = torch.tensor([self.curves[0].shape[1] if self.curves else 0],
                              device=self.device)
        dist.all_reduce(points, op=dist.ReduceOp.MAX)
        return {**super().empty_states(), "curves": torch.zeros(0, int(points))}

    def mean_curve(self) -> np.ndarray:
        """The mean curve over all scored images."""
        if not self.curves:
            return np.zeros(0)
        return torch.cat(self.curves).mean(0).cpu().numpy()


@dataclass(frozen=True)
class MetricSpec:
    """Registry metadata of a leaderboard column."""

    name: str
    higher_is_better: bool
    description: str
    paper: str = ""
    needs_boxes: tuple[str, ...] = ()
    factory: Callable[..., PerImageMetric] | None = None  # None: computed by the evaluator
    unit: str = ""
    #: scores the explanation (False for accuracy): reference rows are not ranked on it
    explanation: bool = True
    #: the leaderboard marks a best value (False for diagnostic columns)
    ranked: bool = True
    #: the values a score can take (intervals are clipped to it); None: unbounded
    bounds: tuple[float, float] | None = (0.0, 1.0)
    #: the evaluation options its scores depend on (:class:`harness.config.EvalConfig`
    #: fields, or ``comb_subset``: which images the reference misclassifies); the
    #: evaluation cache recomputes the metric when one of them changes
    options: tuple[str, ...] = ()
    #: measures the model whatever explains it (the attention mechanism's fixed-box
    #: gains): shown in the method's own row only, as the accuracy columns
    of_model: bool = False
    #: scores against the model trained on permuted labels (``--sanity data``): a
    #: column of runs that train one, its weights in the part's cache key
    needs_permuted: bool = False
    #: the datasets it applies to: ``single`` (one label an image) and / or ``multi``
    #: (samples carry ``labels``, :attr:`harness.data.DatasetInfo.multi_label`)
    tasks: tuple[str, ...] = ("single",)
    #: the fewest classes a dataset needs for the column to say anything (top-5: 6;
    #: with 5 classes or fewer every image's five best classes hold its own, a score of
    #: 1 whatever the model): the reports leave the column out below it
    min_classes: int = 0


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(spec: MetricSpec) -> None:
    """Register a leaderboard column."""
    METRICS.add(spec.name, spec, higher_is_better=spec.higher_is_better,
                needs_boxes=spec.needs_boxes, tasks=spec.tasks)

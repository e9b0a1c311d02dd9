"""The accumulating metric classes behind the leaderboard's columns, and their registry
entries. Functional cores live in :mod:`metrics.causal` and :mod:`metrics.localization`.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.hooks import SEED_CONTEXTS, SeedContext, SeedValue
from metrics import (
    causal,
    confusion,
    lenses,
    localization,
    randomisation,
    road,
    robustness,
)
from metrics.base import (
    CurveMetric,
    EvalBatch,
    MetricSpec,
    PerImageMetric,
    Rows,
    register_metric,
)


class TopK(PerImageMetric):
    """Top-k accuracy of the prediction (1 if the true class is among the k best).

    Tied logits (frequent with bfloat16 outputs) rank by class index, lowest first, as
    ``argmax`` does, so top-1 agrees with the prediction used everywhere else.
    """

    def __init__(self, k: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows]:
        k = min(self.k, batch.logits.shape[1])
        top = torch.sort(batch.logits, dim=1, descending=True, stable=True).indices[:, :k]
        return (top == batch.labels.view(-1, 1)).any(1).float(), _all(batch)


class BalancedAccuracy(TopK):
    """Balanced accuracy: the mean over classes of the per-class top-1 recall (MSABN,
    Table 3; ``sklearn.metrics.balanced_accuracy_score``)."""

    per_class = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(1, **kwargs)


class CausalAUC(CurveMetric):
    """Insertion or deletion AUC on the evaluator's causal subset (curves kept).

    Args:
        mode: ``"insertion"`` (higher is better) or ``"deletion"`` (lower is better).
        substrate: defaults to the RISE protocol: blur for insertion, zero for deletion.
        step: positions per step; 0 = one image row (RISE).
        forward_batch: perturbed images per forward pass when the batch does not bring
            the evaluator's tuner; 0 (the default): a tuner for each call
            (:class:`metrics.tuning.BatchTuner`).
        streams: forward passes run at once on a CPU (``causal_curves``' ``streams``).
    """

    def __init__(self, mode: str, substrate: str | None = None, step: int = 0,
                 forward_batch: int = 0, streams: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode
        self.substrate = substrate or ("blur" if mode == "insertion" else "zero")
        self.step = step
        self.forward_batch = forward_batch
        self.streams = streams

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.causal_images is None or batch.model is None:
            return None
        assert batch.causal_saliency is not None and batch.causal_classes is not None
        n_img = batch.causal_images.shape[0]
        step = self.step or batch.causal_images.shape[-1]
        # the images' own probabilities: from the prediction the evaluator already made
        known = torch.softmax(batch.logits[:n_img].float(), dim=1).gather(
            1, batch.causal_classes.view(-1, 1).to(batch.logits.device)).squeeze(1)
        curves = causal.causal_curves(batch.model, batch.causal_images, batch.causal_saliency,
                                      batch.causal_classes, mode=self.mode, step=step,
                                      substrate=self.substrate,
                                      batch_size=batch.forward_batch or self.forward_batch,
                                      unperturbed=known, streams=self.streams)
        self.curves.append(curves)
        return causal.auc(curves), torch.arange(n_img, device=batch.labels.device)


class MaxWrongProb(PerImageMetric):
    """Highest incorrect-class softmax probability of each image (COMB, Table 1)."""

    higher_is_better = False

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows]:
        return max_wrong_prob(batch.logits, batch.labels), _all(batch)


def max_wrong_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]``: the largest softmax probability among the classes other than ``labels``."""
    p = torch.softmax(logits.float(), dim=1)
    return p.scatter(1, labels.view(-1, 1), float("-inf")).max(1).values


class AttnFixGain(PerImageMetric):
    """COMB's Table 1 analysis: per-image change when the attention outside the target
    box is removed and the perception branch re-run; ``what`` is ``"max_wrong_prob"``
    (after - before; negative = the attention outside the box fed a wrong class) or
    ``"top1"`` (after - before, in {-1, 0, 1}). Methods without an attention mechanism
    have no score (N/A).

    Args:
        subset: score only the images of the ``comb`` protocol's subset, those the
            reference method (``abn``) misclassifies, as COMB Sec. 3.1 / Table 1 does
            (N/A when the subset was not computed); False scores every image with a box.
    """

    def __init__(self, what: str, subset: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.what, self.subset = what, subset

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.fixed_logits is None or "bbox" not in batch.boxes:
            return None
        ok = torch.isfinite(batch.boxes["bbox"]).all(1)  # the fix needs a box
        if self.subset:
            if batch.comb_mask is None:
                return None
            ok = ok & batch.comb_mask
        logits, fixed, labels = batch.logits[ok], batch.fixed_logits[ok], batch.labels[ok]
        if self.what == "max_wrong_prob":
            before, after = max_wrong_prob(logits, labels), max_wrong_prob(fixed, labels)
        else:
            before = (logits.argmax(1) == labels).float()
            after = (fixed.argmax(1) == labels).float()
        return after - before, ok


class CombInsertionAUC(CausalAUC):
    """Insertion under the COMB paper's protocol (Sec. 4.4): ground-truth class, only the
    test images the reference method misclassifies, the top-p % most salient positions
    kept and the rest blanked (zeros in normalised space), p in steps of 5 %."""

    higher_is_better = True

    def __init__(self, percent_step: int = 5, **kwargs: Any) -> None:
        super().__init__("insertion", substrate="zero", **kwargs)
        self.percent_step = percent_step

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.comb_mask is None or batch.model is None or not bool(batch.comb_mask.any()):
            return None
        sel = batch.comb_mask
        x = batch.images[sel]
        h, w = x.shape[-2:]
        step = -(-h * w * self.percent_step // 100)
        curves = causal.causal_curves(batch.model, x, batch.saliency[sel], batch.labels[sel],
                                      mode="insertion", step=step, substrate=self.substrate,
                                      batch_size=batch.forward_batch or self.forward_batch,
                                      streams=self.streams)
        self.curves.append(curves)
        return causal.auc(curves), sel


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


class SiouConfusion(PerImageMetric):
    """Soft IoU between two classes' maps (:func:`metrics.confusion.siou_confusion`);
    lower is more discriminative. ``pair="target"`` (Eq. 6 of the discriminative
    attention paper): the ground-truth class and the most confusing class, the highest
    non-target logit; ``pair="pred"``: the predicted class and the runner-up (needs no
    labels). Skipped for methods without class maps."""

    higher_is_better = False

    def __init__(self, pair: str = "target", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if pair not in ("target", "pred"):
            raise ValueError(f"pair must be 'target' or 'pred', got {pair!r}")
        self.pair = pair

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.class_maps is None:
            return None
        classes = (confusion.target_pair(batch.logits, batch.labels) if self.pair == "target"
                   else confusion.confusing_pair(batch.logits))
        maps = batch.class_maps(classes)
        if maps is None:
            return None
        return confusion.siou_confusion(maps), _all(batch)


class BoxMetric(PerImageMetric):
    """A localisation metric of the ground-truth-class saliency against a named box."""

    def __init__(self, fn: str, box: str = "bbox", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn, self.box = fn, box

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if self.box not in batch.boxes:
            return None
        ok = torch.isfinite(batch.boxes[self.box]).all(1)  # images without a box: skipped
        if not bool(ok.any()):
            return None
        boxes, sal = batch.boxes[self.box][ok], batch.saliency[ok]
        if self.fn == "inside":
            s = localization.bbox_inside_frac(sal, boxes)
        else:
            s = localization.energy_pointing_game(sal, boxes)
        return s, ok


class PointingGame(PerImageMetric):
    """Pointing game (TorchRay's benchmark), reported as the mean of per-class hit
    rates. With the images' original sizes known, each map is resized to its image's
    original size and scored there against the box in original pixels; otherwise at
    the model input. ``tolerance`` None: the dataset's (15 px at the original size, as
    TorchRay); a number overrides it (0: the arg-max must lie in the box). Where the
    samples carry every annotated object (``objects``), a hit on any of them counts, as
    TorchRay counts a hit on any instance of the class."""

    per_class = True

    def __init__(self, tolerance: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if "bbox" not in batch.boxes:
            return None
        ok = torch.isfinite(batch.boxes["bbox"]).all(1)
        if not bool(ok.any()):
            return None
        tol = batch.pointing_tolerance if self.tolerance is None else self.tolerance
        sizes = None if batch.original_sizes is None else batch.original_sizes[ok]
        boxes = batch.boxes.get("objects", batch.boxes["bbox"])
        hits = localization.pointing_game(batch.saliency[ok], boxes[ok], tol,
                                          original_sizes=sizes)
        return hits, ok


class Sparseness(PerImageMetric):
    """Gini index of the explanation of the ground-truth class
    (:func:`metrics.lenses.sparseness`); higher is sparser. No forward pass."""

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows]:
        return lenses.sparseness(batch.saliency).float(), _all(batch)


class Complexity(PerImageMetric):
    """Entropy of the explanation of the ground-truth class
    (:func:`metrics.lenses.complexity`); lower is simpler. No forward pass."""

    higher_is_better = False

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows]:
        return lenses.complexity(batch.saliency).float(), _all(batch)


class ClassSensitivity(PerImageMetric):
    """Random Logit (Sixt et al., ICML 2020): SSIM (:func:`metrics.lenses.ssim`) between
    the explanation of the ground-truth class and that of one other class drawn per
    image from ``seed`` (:func:`metrics.lenses.other_classes`), both at input size and
    divided by their maxima (:func:`metrics.lenses.by_max`, Quantus' default), so a
    weaker map of the same shape is not counted as another explanation.
    Lower is more class-sensitive; an explanation that ignores the class scores 1. One
    explanation per image; n/a where the batch brings no explainer or the images are
    smaller than the SSIM window."""

    higher_is_better = False

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.explain is None or min(batch.saliency.shape[-2:]) < lenses.SSIM_WINDOW:
            return None
        k = batch.logits.shape[1]
        if k < 2:
            return None
        other = lenses.other_classes(batch.labels, k, self.image_ids_of(batch), self.seed)
        maps = batch.explain(batch.images, other)
        return lenses.ssim(lenses.by_max(batch.saliency), lenses.by_max(maps)).float(), _all(
            batch)


class ConfidenceChange(PerImageMetric):
    """Grad-CAM++'s confidence change (Chattopadhay et al., WACV 2018, Sec. 5) on the
    causal subset: the predicted class's probability Y of each image and O of the image
    multiplied by its map of that class (:func:`metrics.lenses.confidence_change`), each
    image's term given by :attr:`term`. Two forward passes per image (Y and O through
    the same engine), made once per batch for both columns (``EvalBatch.shared``)."""

    term = staticmethod(lenses.avg_drop)

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.causal_images is None or batch.model is None:
            return None
        assert batch.causal_saliency is not None and batch.causal_classes is not None
        n = batch.causal_images.shape[0]
        if "confidence_change" not in batch.shared:
            batch.shared["confidence_change"] = lenses.confidence_change(
                batch.model, batch.causal_images, batch.causal_saliency, batch.causal_classes)
        y, o = batch.shared["confidence_change"]
        return self.term(y, o).to(batch.labels.device), torch.arange(
            n, device=batch.labels.device)


class AvgDrop(ConfidenceChange):
    """Average Drop's term, max(0, Y - O) / Y (lower is better)."""

    higher_is_better = False
    term = staticmethod(lenses.avg_drop)


class IncreaseConf(ConfidenceChange):
    """Increase in Confidence's term, 1 where O > Y (higher is better)."""

    higher_is_better = True
    term = staticmethod(lenses.increase_conf)


def _similarity(name: str, what: str) -> str:
    """``name`` if it is one of the map similarities (``spearman``, ``ssim``)."""
    if name not in ("spearman", "ssim"):
        raise ValueError(f"{what} similarity must be 'spearman' or 'ssim', got {name!r}")
    return name


def _too_small(similarity: str, batch: EvalBatch) -> bool:
    """SSIM asked of maps smaller than its window (the column is then n/a)."""
    return similarity == "ssim" and min(batch.saliency.shape[-2:]) < lenses.SSIM_WINDOW


class MPRT(CurveMetric):
    """Model-parameter randomisation test (Adebayo et al., NeurIPS 2018, Sec. 3.1) on
    the causal subset: the explanation of each image's ground-truth class by the
    trained model against that by each randomised copy
    (:func:`metrics.randomisation.randomised_models`: the cascade, then each group
    alone), compared by ``similarity``: ``"spearman"``, the rank correlation of |map|
    (:func:`metrics.randomisation.spearman`), or ``"ssim"`` of |map| divided by its
    maximum (:func:`metrics.lenses.ssim`, :func:`metrics.lenses.by_max`; n/a for maps
    smaller than the SSIM window). An image's score is the mean over the cascade's
    steps (the trained model's own map, similarity 1, is never one of them); its curve
    holds every step, cascading then independent (``mprt.csv``). Lower passes: the
    explanation changes with the model. One explanation per image and randomisation
    step (2 G - 1 for G groups; the first step is one model in both schemes), made once
    per batch for both columns (``EvalBatch.shared``)."""

    higher_is_better = False

    def __init__(self, similarity: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.similarity = _similarity(similarity, "MPRT")

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.randomised is None or batch.causal_images is None or _too_small(
                self.similarity, batch):
            return None
        n = batch.causal_images.shape[0]
        if "mprt" not in batch.shared:
            batch.shared["mprt"] = mprt_similarities(
                batch.saliency[:n], batch.randomised(), batch.causal_images,
                batch.labels[:n])
        steps, n_cascade = batch.shared["mprt"][self.similarity], batch.shared["mprt"]["n"]
        self.curves.append(steps.float())
        return steps[:, :n_cascade].mean(1).float(), torch.arange(n, device=batch.labels.device)


class DataRandomisation(PerImageMetric):
    """Data-randomisation test (Adebayo et al., NeurIPS 2018, Sec. 3.2) on the causal
    subset: the explanation of each image's ground-truth class by the trained model
    against that by the same method trained, under the same protocol, on training labels
    permuted once over the images (:func:`harness.data.permuted_labels`), compared by
    ``similarity`` as :class:`MPRT` compares a randomisation step (Spearman of |map|, or
    SSIM of |map| divided by its maximum). Lower passes: the explanation depends on the
    relation between images and labels the model learnt. One explanation per image by
    the permuted model, made once per batch for both columns."""

    higher_is_better = False

    def __init__(self, similarity: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.similarity = _similarity(similarity, "data randomisation")

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.permuted is None or batch.causal_images is None or _too_small(
                self.similarity, batch):
            return None
        n = batch.causal_images.shape[0]
        if "data_random" not in batch.shared:
            batch.shared["data_random"] = mprt_similarities(
                batch.saliency[:n], [("data", "labels", batch.permuted)],
                batch.causal_images, batch.labels[:n])
        s = batch.shared["data_random"][self.similarity][:, 0]
        return s.float(), torch.arange(n, device=batch.labels.device)


class Sensitivity(PerImageMetric):
    """A robustness lens on the causal subset (:func:`metrics.robustness.sensitivity`):
    the explanation of each image's ground-truth class against those of ``n`` copies
    perturbed uniformly in an L-infinity ball of ``radius`` (fixed per image by
    ``seed`` and its test-split index), for the same class. ``kind`` is one of
    :data:`metrics.robustness.SCORES`. Lower is more robust; a map that ignores its
    input scores 0. Images whose map has no mass while a perturbed one has are not
    scored on the relative changes (unbounded). ``n`` explanations per image, made once
    per batch for the three columns (``EvalBatch.shared``), in calls of the evaluation
    batch's size."""

    higher_is_better = False

    def __init__(self, kind: str, radius: float = 0.1, n: int = 10, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in robustness.SCORES:
            raise ValueError(f"robustness kind must be one of {robustness.SCORES}, got {kind!r}")
        self.kind, self.radius, self.n, self.seed = kind, radius, n, seed

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.explain is None or batch.causal_images is None:
            return None
        n = batch.causal_images.shape[0]
        if "sensitivity" not in batch.shared:
            batch.shared["sensitivity"] = robustness.sensitivity(
                batch.explain, batch.causal_images, batch.labels[:n],
                self.image_ids_of(batch)[:n], self.radius, self.n, self.seed,
                maps=batch.saliency[:n], chunk=len(batch.labels))
        s = batch.shared["sensitivity"][self.kind].to(batch.labels.device)
        ok = torch.isfinite(s)
        return s[ok].float(), torch.arange(n, device=batch.labels.device)[ok]


class ROAD(CurveMetric):
    """ROAD (Rong et al., ICML 2022) on the causal subset: the predicted class's
    probability after 10, 20, ..., 90 % of the pixels are removed by the map of that
    class, most relevant first (``morf``) or least relevant first (``lerf``), exactly k
    by rank with ties broken stably, and filled by noisy linear imputation
    (:func:`metrics.road.road_scores`). This class is ``road_morf``, the mean over the
    fractions (lower is better; curve kept); :class:`RoadLeRF` is ``road_lerf`` (higher;
    curve kept) and :class:`RoadCombined` ``road_combined``, (LeRF - MoRF) / 2 (higher).
    The imputation noise is ``noise`` in [0, 1] pixel units (the authors' 0.01), divided
    by the inputs' normalisation std per channel; fixed per image by ``seed`` and its
    test-split index. 18 forward passes per image through the evaluator's engine, made
    once per batch for the three columns."""

    kind = "road_morf"
    higher_is_better = False

    def __init__(self, noise: float = 0.01, seed: int = 0, forward_batch: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise, self.seed, self.forward_batch = noise, seed, forward_batch

    def score(self, batch: EvalBatch) -> tuple[torch.Tensor, Rows] | None:
        if batch.causal_images is None or batch.model is None:
            return None
        assert batch.causal_saliency is not None and batch.causal_classes is not None
        n = batch.causal_images.shape[0]
        if "road" not in batch.shared:
            c = batch.causal_images.shape[1]
            std = batch.input_std if batch.input_std is not None else (1.0,) * c
            size = (batch.forward_batch.current if batch.forward_batch is not None
                    else self.forward_batch) or None
            morf, lerf = road.road_scores(
                batch.model, batch.causal_images, batch.causal_saliency,
                batch.causal_classes, noise=[self.noise / s for s in std], seed=self.seed,
                ids=self.image_ids_of(batch)[:n], forward_batch=size)
            batch.shared["road"] = {"morf": morf, "lerf": lerf,
                                    **road.road_summary(morf, lerf)}
        shared = batch.shared["road"]
        if self.kind != "road_combined":
            self.curves.append(shared[self.kind[5:]].float())
        return shared[self.kind].float().to(batch.labels.device), torch.arange(
            n, device=batch.labels.device)


class RoadLeRF(ROAD):
    """ROAD, least relevant first."""

    kind = "road_lerf"
    higher_is_better = True


class RoadCombined(ROAD):
    """ROAD's (LeRF - MoRF) / 2."""

    kind = "road_combined"
    higher_is_better = True


def mprt_similarities(original: torch.Tensor, steps: list[tuple[str, str, Any]],
                      images: torch.Tensor, classes: torch.Tensor) -> dict[str, Any]:
    """Spearman and SSIM (``[n, steps]``, float64) of ``original`` maps against those of
    each randomisation step's explainer on ``images`` and ``classes``; ``n``: the
    cascade's steps (the first columns). A step whose model is the previous step's
    (the first of each scheme) is explained once."""
    a = original.abs()
    a_max, a_ranks = lenses.by_max(a), randomisation.ranks(a.flatten(1).double())
    can_ssim = min(a.shape[-2:]) >= lenses.SSIM_WINDOW
    sp, ss = [], []
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for _mode, _group, explain in steps:
        if id(explain) not in done:
            m = explain(images, classes).abs()
            done[id(explain)] = (
                randomisation.rank_correlation(a_ranks,
                                               randomisation.ranks(m.flatten(1).double())),
                lenses.ssim(a_max, lenses.by_max(m)) if can_ssim
                else torch.full((len(a),), float("nan"), dtype=torch.float64, device=a.device))
        sp.append(done[id(explain)][0])
        ss.append(done[id(explain)][1])
    n_cascade = sum(1 for mode, _g, _e in steps if mode == randomisation.MODES[0])
    return {"spearman": torch.stack(sp, 1), "ssim": torch.stack(ss, 1), "n": n_cascade}


def _all(batch: EvalBatch) -> Rows:
    return torch.ones(len(batch.labels), dtype=torch.bool, device=batch.labels.device)


def _spec(name: str, hib: bool, desc: str, factory: Any = None, needs: tuple[str, ...] = (),
          paper: str = "", unit: str = "", explanation: bool = True,
          ranked: bool = True, bounds: tuple[float, float] | None = (0.0, 1.0),
          options: tuple[str, ...] = (), of_model: bool = False,
          needs_permuted: bool = False, min_classes: int = 0) -> None:
    register_metric(MetricSpec(name, hib, desc, paper, needs, factory, unit, explanation,
                               ranked, bounds, options, of_model, needs_permuted,
                               min_classes=min_classes))


#: what the causal metrics' scores depend on besides the model and its explanation
_CAUSAL = ("causal_n", "causal_step")


def comb_subset(ctx: SeedContext) -> SeedValue | None:
    """COMB's insertion protocol (Iwayoshi et al., VISAPP 2023, Table 1): the test
    images the reference method (``comb_reference``, abn) misclassifies, once per seed,
    for the metrics declaring ``comb_subset`` in their options; read from the store
    when it holds the mask for these weights. None when the reference is not trained in
    this run (its columns are then n/a)."""
    from harness import evalcache
    from harness.planning import lineage

    ref = ctx.cfg.comb_reference
    if ref not in lineage(ctx.methods):
        return None
    trained = ctx.obtain(ref)
    mask = evalcache.misclassified_cached(
        ctx.store, trained.method, ctx.test_split, ctx.plan.device, split_key=ctx.split_key,
        read=ctx.read, weights=ctx.weights(trained), batch_size=ctx.cfg.eval.batch_size,
        precision=ctx.plan.eval_precision)
    return SeedValue(mask, {"comb_reference": ref, "n_comb": {ctx.cfg.seed: int(mask.sum())}})


SEED_CONTEXTS.add("comb_subset", comb_subset)


_spec("top1", True, "top-1 accuracy", lambda cfg: TopK(1), explanation=False)
_spec("top5", True, "top-5 accuracy", lambda cfg: TopK(5), explanation=False,
      min_classes=6)
_spec("balanced_acc", True, "balanced accuracy: mean over classes of the per-class top-1 "
      "recall", lambda cfg: BalancedAccuracy(), explanation=False,
      paper="Gupta & Sintorn (MSABN), 2022, Table 3")
_spec("insertion_auc", True, "insertion AUC (RISE protocol: predicted class, blur substrate, "
      "one row per step)", lambda cfg: InsertionAUC(step=cfg.causal_step,
                                                    forward_batch=cfg.forward_batch,
                                                    streams=cfg.streams),
      paper="Petsiuk et al., BMVC 2018", options=_CAUSAL)
_spec("deletion_auc", False, "deletion AUC (RISE protocol: predicted class, zero substrate, "
      "one row per step)", lambda cfg: DeletionAUC(step=cfg.causal_step,
                                                   forward_batch=cfg.forward_batch,
                                                   streams=cfg.streams),
      paper="Petsiuk et al., BMVC 2018", options=_CAUSAL)
_spec("bbox_inside_frac", True, "share of the map binarised at 0.2 inside the target box",
      lambda cfg: BoxMetric("inside"), ("bbox",), paper="Gupta & Sintorn (MSABN), 2022")
_spec("energy_pg", True, "share of map energy inside the target box",
      lambda cfg: BoxMetric("energy"), ("bbox",), paper="Wang et al. (Score-CAM), 2020")
_spec("pointing_game", True, "pointing game: the map's arg-max within 15 px of the box (of "
      "any of the image's objects, where a dataset has several) at the image's original size "
      "(TorchRay); datasets without an original size use their own tolerance at the model "
      "input (cluttered-digits: 4 px on its 64 px images); mean of per-class hit rates",
      lambda cfg: PointingGame(), ("bbox",),
      paper="Zhang et al., ECCV 2016; TorchRay")
_spec("pointing_game_0px", True, "pointing game with no tolerance: the map's arg-max lies in "
      "the box; mean of per-class hit rates", lambda cfg: PointingGame(tolerance=0.0),
      ("bbox",), paper="Zhang et al., ECCV 2016; TorchRay")
_spec("distractor_frac", False, "share of map energy on the distractor object",
      lambda cfg: BoxMetric("energy", box="distractor_bbox"), ("distractor_bbox",))
_spec("comb_insertion_auc", True, "insertion AUC, COMB protocol: ground-truth class, only "
      "images the reference method (abn) misclassifies, top-p% kept, rest zero, 5% steps",
      lambda cfg: CombInsertionAUC(forward_batch=cfg.forward_batch, streams=cfg.streams),
      paper="Iwayoshi et al., VISAPP 2023", options=("comb_subset",))
_spec("max_wrong_prob", False, "highest incorrect-class probability", lambda cfg: MaxWrongProb(),
      explanation=False, paper="Iwayoshi et al., VISAPP 2023")
_FIX = ("attn_fix_gain: change of {what} when the attention outside the target box is "
        "removed and the perception branch re-run{where}; diagnostic, not ranked; n/a without "
        "an attention mechanism")
_ON_SUBSET = ", on the test images the reference method (abn) misclassifies (COMB Table 1)"
_ON_ALL = ", on every test image with a box"
_spec("attn_fix_gain_wrong_prob", False, _FIX.format(
      what="max_wrong_prob (negative: the outside attention fed a wrong class)",
      where=_ON_SUBSET), lambda cfg: AttnFixGain("max_wrong_prob"), ("bbox",),
      paper="Iwayoshi et al., VISAPP 2023", ranked=False, bounds=(-1.0, 1.0), of_model=True,
      options=("comb_subset",))
_spec("attn_fix_gain_top1", True, _FIX.format(what="top-1", where=_ON_SUBSET),
      lambda cfg: AttnFixGain("top1"), ("bbox",), paper="Iwayoshi et al., VISAPP 2023",
      ranked=False, bounds=(-1.0, 1.0), of_model=True, options=("comb_subset",))
_spec("attn_fix_gain_wrong_prob_all", False, _FIX.format(what="max_wrong_prob",
                                                         where=_ON_ALL),
      lambda cfg: AttnFixGain("max_wrong_prob", subset=False), ("bbox",),
      paper="Iwayoshi et al., VISAPP 2023", ranked=False, bounds=(-1.0, 1.0), of_model=True)
_spec("attn_fix_gain_top1_all", True, _FIX.format(what="top-1", where=_ON_ALL),
      lambda cfg: AttnFixGain("top1", subset=False), ("bbox",),
      paper="Iwayoshi et al., VISAPP 2023", ranked=False, bounds=(-1.0, 1.0), of_model=True)
_spec("siou_confusion", False, "soft IoU (Eq. 6, no mask) between the maps of the target "
      "class and of the most confusing class (highest non-target logit), negatives clipped; "
      "n/a without class maps", lambda cfg: SiouConfusion("target"),
      paper="Wang et al., 2019 (discriminative attention)")
_spec("siou_confusion_pred", False, "label-free siou_confusion: the predicted class against "
      "the runner-up (highest other logit)", lambda cfg: SiouConfusion("pred"),
      paper="Wang et al., 2019 (discriminative attention)")
_spec("sparseness", True, "Gini index of |map| over the pixels (the ground-truth class's "
      "map at input size): 0 uniform, (n-1)/n one pixel", lambda cfg: Sparseness(),
      paper="Chalasani et al., ICML 2020")
_spec("complexity", False, "entropy (nats) of the map's share per pixel, |a| / sum |a| "
      "(ground-truth class, input size): 0 one pixel, log(H*W) uniform",
      lambda cfg: Complexity(), paper="Bhatt et al., IJCAI 2020", bounds=None)
_spec("class_sensitivity", False, "Random Logit: SSIM between the maps of the ground-truth "
      "class and of one other class drawn per image (eval.lens_seed); 1 = the map ignores "
      "the class", lambda cfg: ClassSensitivity(seed=cfg.lens_seed),
      paper="Sixt et al., ICML 2020", bounds=(-1.0, 1.0), options=("lens_seed",))
_spec("avg_drop", False, "Average Drop: max(0, Y - O) / Y, Y the predicted class's "
      "probability, O that of the image times its min-max normalised map (causal subset)",
      lambda cfg: AvgDrop(), paper="Chattopadhay et al., WACV 2018",
      options=("causal_n",))
_spec("increase_conf", True, "Increase in Confidence: share of images with O > Y (as "
      "avg_drop; causal subset)", lambda cfg: IncreaseConf(),
      paper="Chattopadhay et al., WACV 2018", options=("causal_n",))
_spec("mprt_spearman", False, "model-parameter randomisation: Spearman rank correlation of "
      "|map| (ground-truth class, causal subset) between the trained model and the model "
      "with its parameter groups re-initialised top-down, mean over the cascade's steps; "
      "lower passes (per step in mprt.csv)", lambda cfg: MPRT("spearman"),
      paper="Adebayo et al., NeurIPS 2018", bounds=(-1.0, 1.0),
      options=("causal_n", "lens_seed"))
_spec("mprt_ssim", False, "as mprt_spearman, SSIM of |map| divided by its maximum",
      lambda cfg: MPRT("ssim"), paper="Adebayo et al., NeurIPS 2018", bounds=(-1.0, 1.0),
      options=("causal_n", "lens_seed"))
_spec("data_rand_spearman", False, "data randomisation (--sanity data): Spearman rank "
      "correlation of |map| (ground-truth class, causal subset) between the trained model "
      "and the same method trained on labels permuted once (eval.lens_seed); lower passes",
      lambda cfg: DataRandomisation("spearman"), paper="Adebayo et al., NeurIPS 2018",
      bounds=(-1.0, 1.0), options=("causal_n",), needs_permuted=True)
_spec("data_rand_ssim", False, "as data_rand_spearman, SSIM of |map| divided by its maximum",
      lambda cfg: DataRandomisation("ssim"), paper="Adebayo et al., NeurIPS 2018",
      bounds=(-1.0, 1.0), options=("causal_n",), needs_permuted=True)
_ROAD = ("causal_n", "lens_seed", "road_noise")
_spec("road_morf", False, "ROAD most relevant first: the predicted class's probability after "
      "removing the top 10, 20, ..., 90 % of the pixels by its map (exactly k by rank) and "
      "filling them by noisy linear imputation, mean over the fractions (causal subset)",
      lambda cfg: ROAD(cfg.road_noise, cfg.lens_seed, cfg.forward_batch),
      paper="Rong et al., ICML 2022", options=_ROAD)
_spec("road_lerf", True, "ROAD least relevant first: as road_morf, the least relevant pixels "
      "removed first", lambda cfg: RoadLeRF(cfg.road_noise, cfg.lens_seed,
                                            cfg.forward_batch),
      paper="Rong et al., ICML 2022", options=_ROAD)
_spec("road_combined", True, "ROAD combined: (LeRF - MoRF) / 2 per image, mean over the "
      "fractions", lambda cfg: RoadCombined(cfg.road_noise, cfg.lens_seed,
                                            cfg.forward_batch),
      paper="Rong et al., ICML 2022; pytorch-grad-cam's ROADCombined", bounds=(-0.5, 0.5),
      options=_ROAD)
_ROBUST = ("causal_n", "lens_seed", "sensitivity_radius", "sensitivity_n")
_spec("max_sensitivity", False, "Max-Sensitivity: the largest ||map(x + d) - map(x)|| / "
      "||map(x)|| over eval.sensitivity_n uniform perturbations d of L-inf radius "
      "eval.sensitivity_radius (ground-truth class, causal subset); 0 for a map that "
      "ignores its input", lambda cfg: Sensitivity(
          "max_sensitivity", cfg.sensitivity_radius, cfg.sensitivity_n, cfg.lens_seed),
      paper="Yeh et al., NeurIPS 2019", bounds=None, options=_ROBUST)
_spec("avg_sensitivity", False, "Avg-Sensitivity: the mean of max_sensitivity's ratio over "
      "the perturbations", lambda cfg: Sensitivity(
          "avg_sensitivity", cfg.sensitivity_radius, cfg.sensitivity_n, cfg.lens_seed),
      paper="Yeh et al., NeurIPS 2019; Bhatt et al., IJCAI 2020", bounds=None,
      options=_ROBUST)
_spec("local_lipschitz", False, "local Lipschitz estimate: the largest ||map(x + d) - "
      "map(x)||_2 / ||d||_2 over max_sensitivity's perturbations (map units per input unit)",
      lambda cfg: Sensitivity("local_lipschitz", cfg.sensitivity_radius, cfg.sensitivity_n,
                              cfg.lens_seed),
      paper="Alvarez-Melis & Jaakkola, 2018", bounds=None, options=_ROBUST)
_spec("roar_auc", False, "remove and retrain (--roar): the baseline trained from scratch on "
      "images whose top-t share of pixels by the row's map (ground-truth class, the row's "
      "own model) is removed and imputed as ROAD's, its test top-1 on images modified alike; "
      "area under top-1 against t from 0 (unmodified) to the largest t, over that span "
      "(roar.csv)", paper="Hooker et al., NeurIPS 2019; imputation: Rong et al., ICML 2022")
_spec("kar_auc", True, "keep and retrain (--roar): as roar_auc with the top-t share alone "
      "kept; area from the smallest t to t = 1 (unmodified), over that span",
      paper="Hooker et al., NeurIPS 2019; imputation: Rong et al., ICML 2022")
_spec("explain_ms", False, "milliseconds per explanation (batched)", unit="ms", bounds=None)
_spec("explain_overhead", False, "explanation time / plain forward time on the same batch",
      bounds=None)

"""The accumulating metric classes and the bootstrap intervals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

from harness.stats import bootstrap_ci
from metrics import METRICS, EvalBatch
from metrics.localization import pointing_game
from metrics.standard import BalancedAccuracy, PointingGame, TopK


def _batch(logits: torch.Tensor, labels: torch.Tensor, sal: torch.Tensor | None = None,
           boxes: torch.Tensor | None = None) -> EvalBatch:
    b = len(labels)
    return EvalBatch(images=torch.zeros(b, 3, 8, 8), labels=labels, logits=logits,
                     saliency=sal if sal is not None else torch.zeros(b, 1, 8, 8),
                     boxes={} if boxes is None else {"bbox": boxes}, pointing_tolerance=2.0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_matches_sklearn_and_accumulates(k: int) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7))
    labels = rng.integers(0, 7, 50)
    m = TopK(k)
    for lo in range(0, 50, 16):  # uneven batches
        m.update(_batch(torch.from_numpy(logits[lo : lo + 16]),
                        torch.from_numpy(labels[lo : lo + 16])))
    ref = top_k_accuracy_score(labels, logits, k=k, labels=list(range(7)))
    assert m.compute().item() == pytest.approx(ref)
    m.reset()
    assert m.per_image()[0].size == 0


def test_top1_breaks_ties_as_argmax() -> None:
    # bf16 logits tie often; top-1 must agree with argmax, the prediction used elsewhere
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]] * 2 + [[2.0, 2.0, 2.0, 2.0]] * 2
                          ).bfloat16().float()
    labels = torch.tensor([1, 2, 0, 3])
    m = TopK(1)
    m.update(_batch(logits, labels))
    assert m.per_image()[0].tolist() == (logits.argmax(1) == labels).float().tolist()
    assert m.per_image()[0].tolist() == [1.0, 0.0, 1.0, 0.0]
    m2 = TopK(2)
    m2.update(_batch(logits, labels))
    assert m2.per_image()[0].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_pointing_game_is_mean_of_per_class_rates() -> None:
    torch.manual_seed(0)
    sal = torch.rand(40, 1, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(40, 1)
    labels = torch.tensor([0] * 30 + [1] * 10)
    m = PointingGame()
    m.update(_batch(torch.zeros(40, 2), labels, sal, boxes))
    hits = pointing_game(sal, boxes, 2.0).numpy()
    ref = pd.Series(hits).groupby(labels.numpy()).mean().mean()
    assert m.compute().item() == pytest.approx(ref)
    assert not np.isclose(ref, hits.mean())  # the classes are unbalanced on purpose


def test_every_registered_metric_has_a_direction_and_description() -> None:
    for e in METRICS:
        assert isinstance(e.obj.higher_is_better, bool) and e.obj.description


def test_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.1, 400)
    lo, hi = bootstrap_ci(x, np.zeros(400, int), n_resamples=2000)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # normal approximation
    assert bootstrap_ci(np.ones(10), np.zeros(10)) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci(np.ones(1), np.zeros(1))))
    classes = rng.integers(0, 3, 400)
    lo2, hi2 = bootstrap_ci(x, classes, per_class=True, n_resamples=300)
    assert lo2 < PointingGame.aggregate(x, classes) < hi2


def test_images_without_a_box_are_skipped() -> None:
    sal = torch.zeros(3, 1, 8, 8)
    sal[:, 0, 1, 1] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [float("nan")] * 4, [4.0, 4.0, 8.0, 8.0]])
    m = PointingGame()
    b = _batch(torch.zeros(3, 2), torch.tensor([0, 0, 1]), sal, boxes)
    m.update(dataclasses.replace(b, indices=torch.tensor([10, 11, 12])))
    scores, classes = m.per_image()
    assert scores.tolist() == [1.0, 0.0] and classes.tolist() == [0, 1]
    assert m.image_ids().tolist() == [10, 12]  # the scored images' test-split indices


def test_balanced_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(60, int), np.ones(25, int), np.full(15, 2)]
    logits = rng.normal(size=(100, 3))
    logits[np.arange(100), labels] += rng.uniform(0, 2, 100)  # unbalanced recalls
    m = BalancedAccuracy()
    for lo in range(0, 100, 32):
        m.update(_batch(torch.from_numpy(logits[lo : lo + 32]),
                        torch.from_numpy(labels[lo : lo + 32])))
    ref = balanced_accuracy_score(labels, logits.argmax(1))
    assert m.compute().item() == pytest.approx(ref)
    assert not np.isclose(ref, accuracy_score(labels, logits.argmax(1)))


def test_pointing_game_at_the_original_size() -> None:
    """TorchRay scores at the original resolution: an 8x8 map of a 32x32 original. The
    peak at input pixel (1, 1) is 4 input px from the box but 16.x original px: a miss
    at 15 px there, a hit at the input's own 4.5 px; inside the box counts at 0 px."""
    sal = torch.zeros(2, 1, 8, 8)
    sal[:, 0, 1, 1] = 1.0
    boxes = torch.tensor([[5.0, 1.0, 8.0, 2.0], [0.0, 0.0, 3.0, 3.0]])  # input pixels
    at_input = pointing_game(sal, boxes, 4.5)
    assert at_input.tolist() == [1.0, 1.0]
    orig = torch.tensor([[32, 32], [32, 32]])
    at_orig = pointing_game(sal, boxes, 15.0, original_sizes=orig)
    # the resized map's first arg-max and the scaled box, checked by hand
    up = torch.nn.functional.interpolate(sal, size=(32, 32), mode="bilinear",
                                         align_corners=False)[:, 0]
    r, c = divmod(int(up[0].flatten().argmax()), 32)
    assert (r, c) == (5, 5)  # the centre of input pixel (1, 1): 4.5 -> original 4.5..5.5
    # box 0 in original pixels: x 20..32, y 4..8: nearest box pixel column 20 -> 15 px
    assert at_orig.tolist() == [0.0, 1.0]
    assert pointing_game(sal, boxes, 16.0, original_sizes=orig).tolist() == [1.0, 1.0]
    # mixed original sizes in one batch: each image at its own
    mixed = pointing_game(sal, boxes, 15.0, original_sizes=torch.tensor([[32, 32], [8, 8]]))
    assert mixed.tolist() == [0.0, 1.0]
    m, m0 = PointingGame(), PointingGame(tolerance=0.0)
    b = dataclasses.replace(_batch(torch.zeros(2, 2), torch.tensor([0, 1]), sal, boxes),
                            original_sizes=orig, pointing_tolerance=15.0)
    m.update(b)
    m0.update(b)
    assert m.per_image()[0].tolist() == [0.0, 1.0]
    assert m0.per_image()[0].tolist() == [0.0, 1.0]  # image 1's peak lies in its box


def test_images_are_numbered_across_batches_without_indices() -> None:
    m = TopK(1)
    for _ in range(3):
        m.update(_batch(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
    assert m.image_ids().tolist() == list(range(12))
    m.reset()
    m.update(_batch(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)))
    assert m.image_ids().tolist() == [0, 1]


def test_pointing_game_counts_a_hit_on_any_object() -> None:
    """Two objects in one image (NaN rows pad the other image's list): the peak is far
    from the first object and inside the second, a hit; alone, the first is a miss."""
    sal = torch.zeros(2, 1, 8, 8)
    sal[:, 0, 6, 6] = 1.0
    first = torch.tensor([0.0, 0.0, 2.0, 2.0])
    second = torch.tensor([5.0, 5.0, 8.0, 8.0])
    nan = torch.full((4,), float("nan"))
    objects = torch.stack([torch.stack([first, second]), torch.stack([first, nan])])
    assert pointing_game(sal, objects, 0.0).tolist() == [1.0, 0.0]
    assert pointing_game(sal, objects[:, :1], 0.0).tolist() == [0.0, 0.0]
    orig = torch.tensor([[16, 16], [16, 16]])  # and at the original size
    assert pointing_game(sal, objects, 0.0, original_sizes=orig).tolist() == [1.0, 0.0]
    m = PointingGame(tolerance=0.0)
    b = _batch(torch.zeros(2, 2), torch.tensor([0, 1]), sal, objects[:, 0])
    m.update(dataclasses.replace(b, boxes={"bbox": objects[:, 0], "objects": objects}))
    assert m.compute().item() == pytest.approx(0.5)  # classes 0 and 1: hit, miss

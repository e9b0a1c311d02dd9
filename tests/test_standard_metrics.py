"""The accumulating metric classes and the bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

from harness.stats import bootstrap_ci
from metrics import METRICS, EvalBatch
from metrics.localization import pointing_game
from metrics.standard import PointingGame, TopK


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
    lo2, hi2 = bootstrap_ci(x, classes, PointingGame.aggregate, n_resamples=300)
    assert lo2 < PointingGame.aggregate(x, classes) < hi2


def test_images_without_a_box_are_skipped() -> None:
    from metrics.standard import BoxMetric

    sal = torch.zeros(3, 1, 8, 8)
    sal[:, 0, 1, 1] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [float("nan")] * 4, [4.0, 4.0, 8.0, 8.0]])
    m = BoxMetric("pointing")
    m.update(_batch(torch.zeros(3, 2), torch.tensor([0, 0, 1]), sal, boxes))
    scores, classes = m.per_image()
    assert scores.tolist() == [1.0, 0.0] and classes.tolist() == [0, 1]

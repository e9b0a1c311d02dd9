"""``siou_confusion``: known answers, an independent loop reference, the metric's class
choice, and the evaluator's wiring (n/a for methods without class maps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import config, data, evaluate, train
from metrics.base import EvalBatch
from metrics.confusion import runner_up, siou_confusion, target_pair
from metrics.standard import SiouConfusion


def test_known_answers_on_3x3() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[0.5, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -4.0]])  # -4 clipped
    # min: 0.5 + 1 = 1.5; sum(a) + sum(clipped b) = 4 + 2.5; 2 * 1.5 / 6.5
    assert siou_confusion(torch.stack([a, b])[None]).item() == pytest.approx(3 / 6.5)
    assert siou_confusion(torch.stack([a, a])[None]).item() == pytest.approx(1.0)
    disjoint = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert siou_confusion(torch.stack([a, disjoint])[None]).item() == 0.0
    assert siou_confusion(torch.stack([a, -a])[None]).item() == 0.0  # nothing positive shared
    with pytest.raises(ValueError, match=r"\[B,2,h,w\]"):
        siou_confusion(torch.zeros(1, 3, 3, 3))


def test_matches_an_elementwise_loop() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 2, 4, 6))
    want = []
    for m in maps:
        p, q = np.maximum(m[0], 0), np.maximum(m[1], 0)
        inter = sum(min(p[i, j], q[i, j]) for i in range(4) for j in range(6))
        want.append(2 * inter / (p.sum() + q.sum()))
    got = siou_confusion(torch.from_numpy(maps)).numpy()
    assert np.allclose(got, want)


def test_runner_up_is_the_best_other_class() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 1.0], [0.0, -1.0, 4.0]])
    assert runner_up(logits).tolist() == [2, 1, 0]  # tie: argmax takes 0, runner-up 1


def test_target_pair_is_eq6s_target_and_most_confusing_class() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0], [2.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    assert target_pair(logits, labels).tolist() == [[0, 1], [2, 0], [1, 0]]


@pytest.mark.parametrize(("pair", "want"), [("target", [[0, 1], [2, 0]]),
                                            ("pred", [[1, 2], [2, 0]])])
def test_metric_asks_for_the_pair_of_its_column(pair: str, want: list[list[int]]) -> None:
    """siou_confusion: target vs most confusing class (Eq. 6); siou_confusion_pred:
    predicted vs runner-up. Image 0 is misclassified, so the two pairs differ there."""
    bank = torch.rand(3, 4, 4)  # one map per class, shared by the images
    asked = []

    def class_maps(classes: torch.Tensor) -> torch.Tensor:
        asked.append(classes.clone())
        return bank[classes]

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    labels = torch.tensor([0, 2])
    base = dict(images=torch.zeros(2, 3, 4, 4), labels=labels, logits=logits,
                saliency=torch.zeros(2, 1, 4, 4))
    m = SiouConfusion(pair)
    m.update(EvalBatch(**base, class_maps=class_maps))
    assert asked[0].tolist() == want
    want_scores = siou_confusion(torch.stack([bank[want[0]], bank[want[1]]]))
    assert torch.allclose(m.compute(), want_scores.mean())
    n_a = SiouConfusion(pair)
    n_a.update(EvalBatch(**base))  # no class maps
    n_a.update(EvalBatch(**base, class_maps=lambda c: None))
    assert math.isnan(float(n_a.compute()))


@pytest.mark.parametrize(("name", "has_maps"), [("baseline", False), ("cam", True),
                                                ("gradcam", True), ("abn", True),
                                                ("discattn-px", True)])
def test_evaluator_scores_methods_with_class_maps_only(
        name: str, has_maps: bool, smoke_cfg: config.RunConfig, smoke_train: data.Split,
        smoke_test: data.Split) -> None:
    model = train.build_method(name, smoke_cfg, smoke_train)
    res = evaluate.evaluate(evaluate.RowSpec(model, name), smoke_test, smoke_cfg.eval,
                            torch.device("cpu"), progress=False)
    v = res.values["siou_confusion"]
    if has_maps:
        assert 0.0 <= v <= 1.0 and len(res.per_image["siou_confusion"].scores) == res.n_test
    else:
        assert math.isnan(v) and len(res.per_image["siou_confusion"].scores) == 0


def test_class_map_memo_computes_each_row_once() -> None:
    from harness.evaluate import ClassMapMemo

    bank = torch.rand(4, 3, 3)  # one map per class; image b's maps are bank * (b + 1)
    calls = []

    def fn(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return bank[classes] * x.view(-1, 1, 1, 1)

    x = torch.tensor([1.0, 2.0, 3.0])
    memo = ClassMapMemo(fn, x)
    target = torch.tensor([[0, 1], [2, 3], [1, 0]])
    pred = torch.tensor([[0, 1], [3, 2], [1, 0]])  # image 1 misclassified
    assert torch.equal(memo(target), fn(x, target))
    assert torch.equal(memo(pred), fn(x, pred))
    assert torch.equal(memo(target), fn(x, target))
    assert calls == [3, 3, 1, 3, 3]  # memo: 3, then image 1 only, then nothing

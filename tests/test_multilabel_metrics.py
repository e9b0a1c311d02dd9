"""Multi-label metrics against independent references: mAP against scikit-learn, per-label
accuracy by hand, per-class localisation on hand-drawn maps and boxes, and the bootstrap
drawing images (all of an image's labels together)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from harness import stats
from harness.data import DatasetInfo
from harness.geometry import box_mask
from methods.base import classification_loss
from metrics.base import METRICS, EvalBatch
from metrics.multilabel import (
    ClassLocalisation,
    LabelAccuracy,
    MeanAveragePrecision,
    class_boxes,
    precision_at_positives,
)


def _batch(logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None = None,
           **kw: object) -> EvalBatch:
    n = len(logits)
    return EvalBatch(images=torch.zeros(n, 3, 8, 8), labels=targets.argmax(1),
                     logits=logits, saliency=torch.zeros(n, 1, 8, 8), targets=targets,
                     indices=torch.arange(n) if index is None else index, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("ties", [False, True])
def test_map_equals_scikit_learn_macro_average_precision(ties: bool) -> None:
    rng = np.random.default_rng(3)
    n, c = 57, 6
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[0] = 1  # every class has a positive
    scores = rng.normal(size=(n, c)).astype(np.float32)
    if ties:  # coarse scores: many tied thresholds, ties across positives and negatives
        scores = np.round(scores * 2) / 2
    want = average_precision_score(targets, scores, average=None)
    prec, _rows, cls = precision_at_positives(scores, targets)
    for k in range(c):
        assert prec[cls == k].mean() == pytest.approx(want[k], abs=1e-12)
    m = MeanAveragePrecision()
    for part in np.array_split(np.arange(n), 4):  # in batches, out of order across them
        idx = torch.as_tensor(part)
        m.update(_batch(torch.from_numpy(scores[part]), torch.from_numpy(targets[part]),
                        index=idx))
    sc, classes = m.per_image()
    assert m.aggregate(sc, classes) == pytest.approx(want.mean(), abs=1e-7)
    assert float(m.compute()) == pytest.approx(want.mean(), abs=1e-7)
    # one score per positive pair, ids of the pairs' images
    assert len(sc) == int(targets.sum())
    assert sorted(m.image_ids().tolist()) == sorted(np.nonzero(targets)[0].tolist())


def test_map_known_answer() -> None:
    """Class 0: scores 0.9 (pos), 0.8 (neg), 0.7 (pos): AP = (1/1 + 2/3) / 2."""
    scores = np.array([[0.9], [0.8], [0.7]])
    targets = np.array([[1.0], [0.0], [1.0]])
    prec, rows, _ = precision_at_positives(scores, targets)
    assert prec.tolist() == pytest.approx([1.0, 2 / 3])
    assert rows.tolist() == [0, 2]


def test_label_accuracy_is_the_mean_of_per_label_accuracies() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.1], [1.0, 1.0, 1.0],
                           [-1.0, -1.0, -1.0]])
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0]])
    m = LabelAccuracy()
    m.update(_batch(logits, targets))
    sc, cls = m.per_image()
    # label 0: all 4 right; label 1: rows 0, 1, 3 right; label 2: rows 2, 3 right
    per_label = [1.0, 3 / 4, 2 / 4]
    assert m.aggregate(sc, cls) == pytest.approx(np.mean(per_label))
    for k, v in enumerate(per_label):
        assert sc[cls == k].mean() == pytest.approx(v)
    assert np.bincount(m.image_ids()).tolist() == [3, 3, 3, 3]


def test_class_boxes_and_their_union() -> None:
    objects = torch.tensor([[[0.0, 0, 4, 4], [4, 4, 8, 8], [0, 4, 2, 8]]])
    object_labels = torch.tensor([[3, 5, 3]])
    b = class_boxes(objects, object_labels, torch.tensor([0, 0]), torch.tensor([3, 5]))
    assert torch.isnan(b[0, 1]).all() and torch.equal(b[0, 0], objects[0, 0])
    assert torch.equal(b[1, 1], objects[0, 1]) and torch.isnan(b[1, [0, 2]]).all()
    m = box_mask(b, 8, 8)  # the union of each row's boxes
    assert int(m[0].sum()) == 16 + 8 and int(m[1].sum()) == 16


def _localisation_batch() -> EvalBatch:
    """Two 8x8 images; image 0 holds classes 1 (box top-left) and 2 (box bottom-right),
    image 1 holds class 1 (box bottom-right). The explainer puts all its mass in the
    top-left quadrant for class 1 and in the bottom-right one for class 2."""
    objects = torch.tensor([[[0.0, 0, 4, 4], [4, 4, 8, 8]], [[4.0, 4, 8, 8],
                                                            [float("nan")] * 4]])
    object_labels = torch.tensor([[1, 2], [1, -1]])
    targets = torch.tensor([[0.0, 1, 1], [0, 1, 0]])

    def explain(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(classes), 1, 8, 8)
        for i, c in enumerate(classes.tolist()):
            if c == 1:
                out[i, 0, :4, :4] = 1.0
            else:
                out[i, 0, 4:, 4:] = 1.0
        out[:, 0, 0, 7] = 0.5  # some mass outside every box
        return out

    return _batch(torch.zeros(2, 3), targets, boxes={"objects": objects},
                  object_labels=object_labels, explain=explain, pointing_tolerance=0.0)


def test_class_localisation_scores_each_present_class_against_its_boxes() -> None:
    ev = _localisation_batch()
    got = {}
    for fn in ("energy", "inside", "pointing"):
        m = ClassLocalisation(fn)
        m.update(ev)
        sc, cls = m.per_image()
        got[fn] = (sc.tolist(), cls.tolist(), m.image_ids().tolist())
    # pairs: (image 0, class 1) inside, (image 0, class 2) inside, (image 1, class 1) outside
    assert got["energy"][1] == [1, 2, 1] and got["energy"][2] == [0, 0, 1]
    assert got["energy"][0] == pytest.approx([16 / 16.5, 16 / 16.5, 0.0])
    assert got["inside"][0] == pytest.approx([16 / 17, 16 / 17, 0.0])
    assert got["pointing"][0] == [1.0, 1.0, 0.0]
    # mean of per-class means: class 1 (1 + 0) / 2, class 2: 1
    m = ClassLocalisation("pointing")
    m.update(ev)
    assert float(m.compute()) == pytest.approx((0.5 + 1.0) / 2)


def test_multi_label_metrics_skip_single_label_batches_and_are_multi_only() -> None:
    ev = EvalBatch(images=torch.zeros(2, 3, 8, 8), labels=torch.tensor([0, 1]),
                   logits=torch.zeros(2, 2), saliency=torch.zeros(2, 1, 8, 8))
    for m in (LabelAccuracy(), MeanAveragePrecision(), ClassLocalisation("energy")):
        m.update(ev)
        assert len(m.per_image()[0]) == 0
    multi = {e.name for e in METRICS if "multi" in e.obj.tasks}
    assert multi == {"label_acc", "mAP", "class_energy_pg", "class_bbox_inside_frac",
                     "class_pointing_game"}
    assert all(e.obj.tasks == ("single",) for e in METRICS if e.name not in multi)


def test_multi_label_loss_is_the_multilabel_soft_margin_loss() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.1]])
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    info = DatasetInfo(name="t", num_classes=3, image_size=(8, 8), mean=(0, 0, 0),
                       std=(1, 1, 1), has_boxes=False, multi_label=True)
    got = classification_loss(logits, {"labels": labels}, info)
    assert float(got) == pytest.approx(float(F.multilabel_soft_margin_loss(logits, labels)))
    by_hand = -(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits)).mean()
    assert float(got) == pytest.approx(float(by_hand))


def test_bootstrap_draws_images_with_all_their_labels() -> None:
    """Scores of one image's labels move together: an image whose labels all score 1
    against images whose labels all score 0 gives the interval of one score per image
    (not the narrower one of independent labels)."""
    n, c = 40, 5
    per_image = np.repeat(np.arange(n) % 2, c).astype(float)
    ids = np.repeat(np.arange(n), c)
    classes = np.tile(np.arange(c), n)
    clustered = stats.estimate([stats.SeedScores(per_image, classes, ids)], per_class=True)
    single = stats.estimate([stats.SeedScores((np.arange(n) % 2).astype(float),
                                              np.zeros(n, np.int64), np.arange(n))])
    assert clustered.value == pytest.approx(0.5)
    assert (clustered.lo, clustered.hi) == pytest.approx((single.lo, single.hi))
    flat = stats.estimate([stats.SeedScores(per_image, classes, np.arange(n * c))],
                          per_class=True)
    assert flat.hi - flat.lo < 0.6 * (clustered.hi - clustered.lo)


def test_paired_difference_pairs_the_same_image_label_pairs() -> None:
    n, c = 30, 3
    ids = np.repeat(np.arange(n), c)
    classes = np.tile(np.arange(c), n)
    rng = np.random.default_rng(0)
    a = rng.random(n * c)
    sa = stats.SeedScores(a, classes, ids)
    sb = stats.SeedScores(a - 0.1, classes, ids)
    cmp = stats.paired_difference([sa], [sb], per_class=True)
    assert cmp.diff == pytest.approx(0.1) and cmp.n_images == n
    assert cmp.lo == pytest.approx(0.1) and cmp.hi == pytest.approx(0.1)
    sub = sa.take(np.array([4, 2]))
    assert sub.ids.tolist() == [4, 4, 4, 2, 2, 2] and sub.classes.tolist() == [0, 1, 2] * 2

"""Leaderboard ranking rules and the class-confusion figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from harness.analysis import Analysis
from harness.evaluate import MethodResult, confusion_gallery
from harness.stats import SeedScores
from reports.leaderboard import (
    CONFUSION_IMAGES,
    GAP,
    RunRecord,
    best_values,
    confusion_figure,
    overlay,
)


def test_reference_rows_rank_on_accuracy_only() -> None:
    frame = pd.DataFrame({"method": ["baseline", "cam", "abn"],
                          "top1": [0.95, 0.95, 0.93],
                          "deletion_auc": [0.10, 0.20, 0.15],
                          "explain_ms": [0.01, 0.5, 1.0]})
    ref = pd.Series([True, False, False])
    best = best_values(frame, ["top1", "deletion_auc", "explain_ms"], ref)
    assert best == {"top1": 0.95, "deletion_auc": 0.15, "explain_ms": 0.5}
    assert best_values(frame, ["deletion_auc"]) == {"deletion_auc": 0.10}


def test_confusion_gallery_and_figure() -> None:
    """The evaluator's gallery entries: classes = (target, most confusing), maps on the
    pair's common scale; the figure has one row per method with class maps."""
    bank = torch.zeros(3, 2, 2)
    bank[0, 0, 0], bank[1, 1, 1], bank[2, 0, 0] = 2.0, -1.0, 1.0
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1])
    got = confusion_gallery(lambda x, c: bank[c], torch.zeros(2, 3, 4, 4), logits, labels)
    assert got["confusion_classes"].tolist() == [[0, 2], [1, 2]]
    assert got["confusion_maps"].shape == (2, 2, 4, 4)
    assert got["confusion_maps"][0, 1].max() == 0.5  # half the pair's maximum
    assert got["confusion_maps"][1, 0].max() == 0.0  # class 1: negative map, clipped
    assert set(got) == {"confusion_maps", "confusion_classes"}
    # a misclassified image: the target's map and the best other class's (here: the prediction)
    wrong = confusion_gallery(lambda x, c: bank[c], torch.zeros(2, 3, 4, 4), logits,
                              torch.tensor([2, 1]))
    assert wrong["confusion_classes"].tolist() == [[2, 0], [1, 2]]
    assert confusion_gallery(lambda x, c: None, torch.zeros(2, 3, 4, 4), logits, labels) == {}

    def row(name: str, gallery: dict[str, np.ndarray]) -> MethodResult:
        scores = ({"siou_confusion": SeedScores(np.linspace(0.1, 0.6, 6), np.zeros(6, int),
                                                np.arange(6))} if gallery else {})
        return MethodResult(name, 0, {}, scores, set(), {}, 6, 0,
                            gallery={"saliency": np.zeros((6, 4, 4)), **gallery})

    def record(rows: list[MethodResult], images: np.ndarray) -> RunRecord:
        return RunRecord(results=rows, analysis=Analysis(rows=[]), gallery_rows=rows, meta={},
                         method_meta={}, config={}, gallery_images=images)

    g = {"confusion_maps": np.random.rand(6, 2, 4, 4),
         "confusion_classes": np.tile([[2, 0]], (6, 1))}
    rec = record([row("baseline", {}), row("cam", g), row("abn", g)], np.random.rand(6, 4, 4, 3))
    fig = confusion_figure(rec)
    assert fig is not None and len(fig.axes) == 1  # one mosaic: rows cam, abn
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    assert [t for t in texts if t in ("cam", "abn", "baseline")] == ["cam", "abn"]
    # a dataset without class names: the classes' numbers; image 2's score
    assert texts[1:1 + 2 * CONFUSION_IMAGES][2:4] == ["target 2", "vs 0 · sIoU 0.20"]
    tile = 4
    mosaic_px = ax.images[0].get_array()
    vgap = mosaic_px.shape[0] - 2 * tile  # room for a title line between the rows
    assert vgap >= GAP
    assert mosaic_px.shape[1] == 2 * CONFUSION_IMAGES * (tile + GAP) - GAP
    # abn's second tile: image 0's grey version under the confusing class's map
    grey = np.repeat(rec.gallery_images[:1].mean(-1, keepdims=True), 3, -1)
    want = overlay(grey, g["confusion_maps"][:1, 1], 0.55)[0]
    got = mosaic_px[tile + vgap:, tile + GAP:2 * tile + GAP]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert confusion_figure(record([row("baseline", {})], np.zeros((6, 4, 4, 3)))) is None
    # where the run recorded the dataset's class names, the titles use them
    rec.meta = {"label_names": ["bird", "cat", "dog"]}
    (ax,) = confusion_figure(rec).axes
    assert [t.get_text() for t in ax.texts][1:3] == ["target dog", "vs bird · sIoU 0.10"]

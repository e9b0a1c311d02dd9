"""The embedded cluttered-digits dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import data
from harness.errors import UserError


def test_deterministic_from_seed() -> None:
    a = data.generate_digits(20, "train", seed=3)
    b = data.generate_digits(20, "train", seed=3)
    c = data.generate_digits(20, "train", seed=4)
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["images"], c["images"])


def test_train_and_test_sources_are_disjoint() -> None:
    digits, labels, is_test = data.mnist_sources()
    assert digits.shape == (5000, 28, 28) and is_test.sum() == 1000
    assert all((labels[is_test] == c).sum() == data.TEST_SOURCES_PER_CLASS for c in range(10))
    tr = data.generate_digits(200, "train", seed=0)
    te = data.generate_digits(200, "test", seed=0)
    assert not is_test[tr["source"]].any()
    assert is_test[te["source"]].all()
    assert not set(tr["source"]) & set(te["source"])
    assert np.array_equal(labels[te["source"]], te["labels"])


def test_boxes_cover_the_drawn_digits() -> None:
    d = data.generate_digits(60, "test", seed=1)
    digits, _, _ = data.mnist_sources()
    for i in range(60):
        x1, y1, x2, y2 = d["bbox"][i]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        dx1, dy1, dx2, dy2 = d["distractor_bbox"][i]
        assert 0 <= dx1 < dx2 <= 64 and 0 <= dy1 < dy2 <= 64
        # box size matches the resized source digit's ink extent
        size_w, size_h = x2 - x1, y2 - y1
        assert 4 <= size_w <= 40 and 8 <= size_h <= 40
    # The target is drawn last: every pixel of the image that differs from a re-render
    # without the target lies inside the target box.
    rng = np.random.default_rng(0)
    for i in rng.choice(60, 5, replace=False):
        assert _target_pixels_inside_box(d, int(i))


def _target_pixels_inside_box(d: dict[str, np.ndarray], i: int) -> bool:
    """Rebuild the target's ink map from its source and box, check it lies in the box."""
    digits, _, _ = data.mnist_sources()
    x1, y1, x2, y2 = d["bbox"][i].astype(int)
    # the box is tight: ink on each border row/column of the box
    for size in range(24, 41):
        ink = data._resize(digits[d["source"][i]], size) > data.INK_THRESHOLD
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        if cols[-1] + 1 - cols[0] == x2 - x1 and rows[-1] + 1 - rows[0] == y2 - y1:
            oy, ox = y1 - rows[0], x1 - cols[0]
            ys, xs = np.nonzero(ink)
            ys, xs = ys + oy, xs + ox
            return bool(((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).all())
    return False


def test_sample_format_and_boxes_follow_transforms() -> None:
    split = data.build("cluttered-digits", "train", n_train=16, n_test=8)
    s = split.dataset[3]
    assert set(s) >= {"image", "label", "bbox", "index", "distractor_bbox"}
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["bbox"].shape == (4,) and s["index"] == 3
    raw = data._cached_digits(16, "train", 0)
    shift = s["bbox"] - torch.from_numpy(raw["bbox"][3])
    # random crop with 4 px padding: a translation of at most 4 px (boxes clamped)
    assert shift.abs().max() <= 4
    test = data.build("cluttered-digits", "test", n_train=16, n_test=8)
    t = test.dataset[2]
    assert torch.equal(t["bbox"], torch.from_numpy(data._cached_digits(8, "test", 0)["bbox"][2]))
    back = data.denormalize(t["image"][None], test.info)[0]
    img = torch.from_numpy(data._cached_digits(8, "test", 0)["images"][2]).float() / 255
    assert torch.allclose(back, img, atol=1e-5)


def test_bad_sizes_and_names() -> None:
    with pytest.raises(UserError, match="n_test"):
        data.build("cluttered-digits", "test", n_test=0)
    with pytest.raises(UserError, match="did you mean cluttered-digits"):
        data.build("cluttered-digit", "test")

"""The embedded cluttered-digits dataset."""

from __future__ import annotations

from pathlib import Path

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
    d = data.generate_digits(80, "test", seed=1, with_masks=True)
    plain = data.generate_digits(80, "test", seed=1)
    assert np.array_equal(plain["images"], d["images"])  # masks change nothing else
    for i in range(80):
        mask = d["target_mask"][i]
        x1, y1, x2, y2 = d["bbox"][i].astype(int)
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        ys, xs = np.nonzero(mask)
        assert len(ys) > 20
        # every drawn pixel's centre is inside the box ...
        assert ((xs + 0.5 >= x1) & (xs + 0.5 <= x2) & (ys + 0.5 >= y1) & (ys + 0.5 <= y2)).all()
        # ... and the box is tight: ink on each of its border rows and columns
        assert xs.min() == x1 and xs.max() == x2 - 1 and ys.min() == y1 and ys.max() == y2 - 1
        dx1, dy1, dx2, dy2 = d["distractor_bbox"][i]
        assert 0 <= dx1 < dx2 <= 64 and 0 <= dy1 < dy2 <= 64
    # the distractor is kept off the target: most pairs of boxes do not overlap
    t, dd = d["bbox"], d["distractor_bbox"]
    ov = (np.minimum(t[:, 2], dd[:, 2]) > np.maximum(t[:, 0], dd[:, 0])) & \
         (np.minimum(t[:, 3], dd[:, 3]) > np.maximum(t[:, 1], dd[:, 1]))
    assert ov.mean() < 0.5


def test_sample_format_and_boxes_follow_transforms() -> None:
    split = data.build("cluttered-digits", "train", n_train=16, n_test=8)
    s = split.dataset[3]
    assert set(s) >= {"image", "label", "bbox", "index", "distractor_bbox"}
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["bbox"].shape == (4,) and s["index"] == 3
    raw = data._cached_digits(16, "train", 0)
    # samples are converted and normalised; the random crop runs per batch
    assert torch.equal(s["bbox"], torch.from_numpy(raw["bbox"][3]))
    assert isinstance(split.batch_transform, data.BatchRandomCrop)
    batch = torch.utils.data.default_collate([split.dataset[i] for i in range(16)])
    torch.manual_seed(0)
    moved = split.batch_transform(batch)
    shift = moved["bbox"] - batch["bbox"]
    # random crop with 4 px padding: a translation of at most 4 px (boxes clamped)
    assert shift.abs().max() <= 4 and (shift != 0).any()
    assert moved["image"].shape == batch["image"].shape
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


def test_disk_cache_round_trip(tmp_path: Path) -> None:
    a = data.build("cluttered-digits", "test", cache_dir=tmp_path, n_test=12)
    files = list((tmp_path / "data").glob("*.npz"))
    assert len(files) == 1 and "test-12-0" in files[0].name
    data._cached_digits.cache_clear()
    b = data.build("cluttered-digits", "test", cache_dir=tmp_path, n_test=12)
    fresh = data.generate_digits(12, "test", 0)
    for i in range(12):
        assert torch.equal(a.dataset[i]["image"], b.dataset[i]["image"])
    assert np.array_equal(b.dataset.images.numpy(), fresh["images"])  # type: ignore[attr-defined]


def test_batch_random_crop_equals_torchvisions_per_sample_crop() -> None:
    """The batched crop against v2 on each sample: pad 4 px of zeros (uint8), crop at
    the same offsets, then convert and normalise; boxes through v2's BoundingBoxes."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    info = data.DIGITS_INFO
    raw = data.generate_digits(6, "train", seed=2)
    images = torch.from_numpy(raw["images"])
    names = ("bbox", "distractor_bbox")
    boxes = {n: torch.from_numpy(raw[n]) for n in names}
    boxes["bbox"][1] = torch.tensor([0.0, 0.0, 64.0, 64.0])  # clamped on two sides
    boxes["distractor_bbox"][2] = float("nan")  # a missing box stays missing
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)])
    batch = {"image": norm(images), **boxes, "label": torch.zeros(6, dtype=torch.long)}
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [4, 4], [1, 7]])
    got = data.BatchRandomCrop(info)(batch, offsets)
    for i, (top, left) in enumerate(offsets.tolist()):
        img = tv_tensors.Image(images[i])
        bxs = tv_tensors.BoundingBoxes(torch.stack([boxes[n][i] for n in names]),
                                       format="XYXY", canvas_size=(64, 64))
        img, bxs = v2.functional.pad(img, [4]), v2.functional.pad(bxs, [4])
        img = v2.functional.crop(img, top, left, 64, 64)
        bxs = v2.functional.crop(bxs, top, left, 64, 64)
        assert torch.allclose(got["image"][i], norm(img), atol=1e-6), i
        for n, want in zip(names, bxs.as_subclass(torch.Tensor), strict=True):
            assert torch.allclose(got[n][i], want, equal_nan=True), (i, n)
    assert torch.equal(got["label"], batch["label"])
    assert got["image"].is_contiguous(memory_format=torch.channels_last)


def test_batched_fetch_is_the_per_sample_fetch(smoke_train: data.Split,
                                               smoke_test: data.Split) -> None:
    """A DataLoader batch of an in-memory split (photometric transform: one call on the
    stacked images) equals the per-sample samples collated, bit for bit."""
    from torch.utils.data import default_collate

    for split in (smoke_train, smoke_test):
        ds = split.dataset
        idx = [5, 0, 17, 3, 9]
        fast = default_collate(ds.__getitems__(idx))  # type: ignore[attr-defined]
        slow = default_collate([ds[i] for i in idx])
        assert list(fast) == list(slow)
        for k, v in slow.items():
            assert torch.equal(fast[k], v) and fast[k].dtype == v.dtype, k
        batch = next(iter(data.loader(split, 5, torch.device("cpu"))))
        ref = default_collate([ds[i] for i in range(5)])
        assert all(torch.equal(batch[k], ref[k]) for k in ref)

"""DiagSet-A at 10x against a tiny fixture in its published layout: the classes
without the background, the partitions by scan, the counts and their distribution
files, the pixels as stored, one-line errors naming the file, ``--check-data``."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from harness import data, run
from harness.data.diagset import BlobPatches
from harness.errors import UserError
from tests.dataset_fixtures import DIAGSET_LABELS, DIAGSET_SCANS, Fixture, make_diagset

S = 40  # the fixture's patch side


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return make_diagset(tmp_path_factory.mktemp("diagset"))


@pytest.fixture
def copy(fx: Fixture, tmp_path: Path) -> Fixture:
    """A copy of the fixture to damage."""
    shutil.copytree(fx.root, tmp_path / "data")
    return Fixture(fx.name, tmp_path / "data", tmp_path / "data" / "DiagSet-A", fx.classes,
                   fx.images)


def _build(root: Path, split: str, **kw: Any) -> data.Split:
    kw = {"image_size": S, "resize": S, **kw}
    return data.build("diagset10x", split, data_dir=root, **kw)


def _where(s: data.Split, fx: Fixture) -> list[tuple[str, int]]:
    """Each sample's ``<blob>#<row>`` relative to the dataset folder, and its label."""
    ds = s.dataset
    assert isinstance(ds, BlobPatches)
    return [(f"{ds.blobs[k].path.relative_to(fx.dataset_dir).as_posix()}#{r}", int(y))
            for k, r, y in zip(ds.blob_of.tolist(), ds.row_of.tolist(), ds.labels.tolist(),
                               strict=True)]


def _error(root: Path, split: str = "train", **kw: Any) -> str:
    with pytest.raises(UserError) as err:
        _build(root, split, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _scans(s: data.Split) -> set[str]:
    ds = s.dataset
    assert isinstance(ds, BlobPatches)
    return {ds.blobs[k].path.parent.parent.name for k in set(ds.blob_of.tolist())}


def test_the_classes_are_the_eight_labels_without_the_background(fx: Fixture) -> None:
    entry = data.DATASETS.entry("diagset10x")
    assert entry.meta["label_names"] == ("T", "N", "A", "R1", "R2", "R3", "R4", "R5")
    assert entry.meta["num_classes"] == 8 and entry.meta["official"] == (132882, 30086)
    for split in ("train", "test"):
        s = _build(fx.root, split)
        assert s.info.num_classes == 8 and not s.info.has_boxes
        assert "/BG/" not in " ".join(w for w, _ in _where(s, fx))
        assert sorted(set(s.dataset.labels.tolist())) == list(range(8))  # type: ignore[attr-defined]


def test_partitions_are_by_scan_and_the_order_is_scan_label_blob_row(fx: Fixture) -> None:
    train, test = _build(fx.root, "train"), _build(fx.root, "test")
    assert _scans(train) == set(DIAGSET_SCANS["train"])
    assert _scans(test) == set(DIAGSET_SCANS["test"])
    for split, s in (("train", train), ("test", test)):
        assert _where(s, fx) == [(im.relpath, im.label) for im in fx.split(split)]
    both = _build(fx.root, "train", add_validation=True)
    assert _scans(both) == set(DIAGSET_SCANS["train"]) | set(DIAGSET_SCANS["validation"])
    assert len(both) == len(train) + 2 * 8  # the validation scans' two patches a label
    assert both.fingerprint != train.fingerprint
    assert _build(fx.root, "test", add_validation=True).fingerprint == test.fingerprint


def test_counts_agree_with_the_distribution_files(fx: Fixture) -> None:
    for split, part in (("train", "train"), ("test", "test")):
        want = dict.fromkeys(DIAGSET_LABELS, 0)
        for scan in DIAGSET_SCANS[part]:
            counts = json.loads((fx.dataset_dir / "distributions" / "S" / "10x"
                                 / f"{scan}.json").read_text())
            for k, v in counts.items():
                want[k] += v
        s = _build(fx.root, split)
        got = np.bincount(s.dataset.labels.numpy(), minlength=8)  # type: ignore[attr-defined]
        assert got.tolist() == [want[k] for k in DIAGSET_LABELS[1:]]
        assert len(s) == sum(want.values()) - want["BG"] == len(fx.split(split))


def test_samples_are_the_stored_pixels(fx: Fixture) -> None:
    """The whole patch (image_size = its side), the centre crop (the container's test
    crop: 224 of 256, here 32 of 40), and a training sample without random steps."""
    s = _build(fx.root, "test", test_crop="none")
    crop = _build(fx.root, "test", image_size=32)
    tr = _build(fx.root, "train", train_crop="random", flip=False, vflip=False)
    for split, views in (("test", (s, crop)), ("train", (tr,))):
        for i, im in enumerate(fx.split(split)):
            blob, row = im.relpath.split("#")
            want = torch.from_numpy(np.load(fx.dataset_dir / blob)[int(row)]).permute(2, 0, 1)
            want = want.float() / 255
            for view in views:
                x = view.dataset[i]
                back = data.denormalize(x["image"][None], view.info)[0]
                side = x["image"].shape[-1]
                m = (S - side) // 2
                assert torch.allclose(back, want[:, m:m + side, m:m + side], atol=1e-5)
                assert x["label"] == im.label and x["index"] == i
                assert torch.isnan(x["bbox"]).all()
                assert x["orig_size"].tolist() == [side, side]


def test_the_defaults_crop_224_of_256_and_flip_both_ways() -> None:
    """At 224 px the default shorter side is 256, a 256 px patch's own: training takes a
    random 224 crop with horizontal and vertical flips, testing the centre crop."""
    import inspect

    from harness.data.diagset import diagset

    p = inspect.signature(diagset).parameters
    assert (p["image_size"].default, p["train_crop"].default, p["test_crop"].default,
            p["flip"].default, p["vflip"].default) == (224, "random", "center", True, True)
    photo = data.PhotoTransforms(224, (0.5,) * 3, (0.5,) * 3, "random", vflip=True,
                                 extra_augment="jitter")
    assert photo.shorter == 256
    steps = [type(t) for t in photo.train_transform().transforms]
    assert steps[:5] == [v2.Resize, v2.RandomCrop, v2.RandomHorizontalFlip,
                         v2.RandomVerticalFlip, v2.ColorJitter]
    img = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    out = v2.Compose(photo.test_transform().transforms[:2])(img)
    assert torch.equal(out, img[:, 16:240, 16:240])


def test_training_augmentation_follows_the_epoch_seed(fx: Fixture) -> None:
    s = _build(fx.root, "train", extra_augment="jitter", image_size=32)
    ds = s.dataset
    assert isinstance(ds, BlobPatches)
    ds.reseed(5)
    a = ds[3]["image"]
    ds.reseed(6)
    b = ds[3]["image"]
    ds.reseed(5)
    assert torch.equal(ds[3]["image"], a) and not torch.equal(a, b)
    # a worker gets the dataset without the parent's open maps
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._open and ds._open and torch.equal(clone[3]["image"], a)


def test_subsets_and_the_dataset_folder_itself(fx: Fixture) -> None:
    a, b = _build(fx.root, "train", n_train=5), _build(fx.root, "train", n_train=5)
    assert len(a) == 5 and a.fingerprint == b.fingerprint != _build(fx.root, "train").fingerprint
    whole = _where(_build(fx.root, "train"), fx)
    picked = _where(a, fx)
    assert picked == sorted(picked, key=whole.index)
    own = _build(fx.dataset_dir, "test")
    assert own.fingerprint == _build(fx.root, "test").fingerprint


def test_another_magnification(tmp_path: Path) -> None:
    fx = make_diagset(tmp_path, magnification=20)
    msg = _error(fx.root)
    assert msg == f"{fx.dataset_dir / 'blobs' / 'S' / '10x'}: missing (the patches at 10x " \
        "magnification)"
    assert len(_build(fx.root, "train", magnification=20)) == len(fx.split("train"))
    assert "magnification must be one of 40, 20, 10, 5" in _error(fx.root, magnification=15)


# ---- bad data: one line naming the file

def test_a_missing_partition_file_or_folder(copy: Fixture) -> None:
    parts = copy.dataset_dir / "partitions" / "DiagSet-A.2"
    (parts / "test.csv").unlink()
    assert _error(copy.root, "test") == f"{parts / 'test.csv'}: missing partition file"
    _build(copy.root, "train")  # the train split does not need it
    (parts / "validation.csv").unlink()
    assert _error(copy.root, "train", add_validation=True) == \
        f"{parts / 'validation.csv'}: missing partition file"
    (parts / "train.csv").write_text("id,scan\nS0117,x\n")
    assert _error(copy.root).startswith(f"{parts / 'train.csv'}: no scan_id column")
    (parts / "train.csv").write_text("scan_id\n")
    assert _error(copy.root) == f"{parts / 'train.csv'}: lists no scan"
    (parts / "train.csv").write_text("scan_id\n../S0117\n")
    assert _error(copy.root).startswith(f"{parts / 'train.csv'}:2: '../S0117' is not a scan id")
    shutil.rmtree(copy.dataset_dir / "partitions")
    assert _error(copy.root).startswith(f"{copy.root}: no DiagSet-A here (expected partitions")


def test_partition_files_are_read_by_column_name(copy: Fixture) -> None:
    """Another column first (a saved index), the ids kept as written (a leading zero)."""
    path = copy.dataset_dir / "partitions" / "DiagSet-A.2" / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["", "scan_id"], *[[i, s] for i, s in
                                                    enumerate(DIAGSET_SCANS["train"])]])
    assert _where(_build(copy.root, "train"), copy) == [
        (im.relpath, im.label) for im in copy.split("train")]
    assert "0042" in _scans(_build(copy.root, "train"))


def test_missing_blob_folders(copy: Fixture) -> None:
    blobs = copy.dataset_dir / "blobs" / "S" / "10x"
    scan = blobs / DIAGSET_SCANS["test"][0]
    dist = copy.dataset_dir / "distributions" / "S" / "10x" / f"{scan.name}.json"
    counts = json.loads(dist.read_text())
    empty = next(lab for lab in DIAGSET_LABELS[1:] if counts[lab] == 0)
    full = next(lab for lab in DIAGSET_LABELS[1:] if counts[lab] > 0)
    shutil.rmtree(scan / empty)  # no patch of it: the folder may be absent
    _build(copy.root, "test")
    shutil.rmtree(scan / full)
    assert _error(copy.root, "test") == (
        f"{scan / full}: missing ({dist} counts {counts[full]} {full} patches)")
    shutil.rmtree(scan)
    assert _error(copy.root, "test") == (
        f"{scan}: missing (a scan of the partition without patches)")
    shutil.rmtree(blobs)
    assert _error(copy.root, "test") == f"{blobs}: missing (the patches at 10x magnification)"


def test_the_distribution_files_are_checked(copy: Fixture) -> None:
    scan = DIAGSET_SCANS["train"][1]
    dist = copy.dataset_dir / "distributions" / "S" / "10x" / f"{scan}.json"
    counts = json.loads(dist.read_text())
    lab = next(k for k in DIAGSET_LABELS[1:] if counts[k] > 0)
    folder = copy.dataset_dir / "blobs" / "S" / "10x" / scan / lab
    dist.write_text(json.dumps({**counts, lab: counts[lab] + 1}))
    assert _error(copy.root) == (f"{dist}: counts {counts[lab] + 1} {lab} patches, the blobs "
                                 f"in {folder} hold {counts[lab]}")
    dist.write_text(json.dumps({**counts, "BG": counts["BG"] + 7}))  # BG is not read
    _build(copy.root, "train")
    dist.write_text(json.dumps({k: v for k, v in counts.items() if k != "R3"}))
    assert _error(copy.root) == f"{dist}: no count for label R3"
    dist.write_text(json.dumps({**counts, "X": 1}))
    assert _error(copy.root).startswith(f"{dist}: unknown label 'X'")
    dist.write_text(json.dumps({**counts, "T": -1}))
    assert _error(copy.root).startswith(f"{dist}: the count of T must be a whole number")
    dist.write_text("{")
    assert _error(copy.root).startswith(f"{dist}: not valid JSON")
    dist.unlink()
    assert _error(copy.root) == f"{dist}: missing distribution file"


def test_bad_blobs(copy: Fixture) -> None:
    blob = copy.dataset_dir / copy.split("train")[0].relpath.split("#")[0]
    n = len(np.load(blob))
    np.save(blob, np.zeros((n, S, S), np.uint8))  # greyscale
    assert _error(copy.root) == (f"{blob}: expected uint8 RGB patches [n, H, W, 3], got "
                                 f"uint8 [{n}, {S}, {S}]")
    np.save(blob, np.zeros((n, S, S, 3), np.float32))
    assert _error(copy.root).endswith(f"got float32 [{n}, {S}, {S}, 3]")
    np.save(blob, np.zeros((n, S, S, 3), np.uint8))
    raw = blob.read_bytes()
    blob.write_bytes(raw[: len(raw) - 100])  # truncated: the header promises more
    assert _error(copy.root).startswith(f"{blob}: not a readable .npy array")
    blob.write_bytes(b"not an array")
    assert _error(copy.root).startswith(f"{blob}: not a readable .npy array")


# ---- the command line

def _main(*args: str, tmp: Path) -> int:
    return run.main([*args, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                     "--no-progress", "--device", "cpu", "--workers", "0"])


def test_check_data_reads_every_blob_and_lists_problems(
        copy: Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main("--dataset", "diagset10x", "--data-dir", str(copy.root), "--check-data",
                 tmp=tmp_path) == 0
    out = capsys.readouterr().out
    assert f"train: {len(copy.split('train'))} images, 8 of 8 classes present, {S}-{S} x " \
        f"{S}-{S} px" in out
    assert f"test: {len(copy.split('test'))} images" in out and "problems: none" in out
    # a bad blob and a wrong count: both listed, the rest still scanned
    blob = copy.dataset_dir / copy.split("train")[0].relpath.split("#")[0]
    blob.write_bytes(b"not an array")
    scan = DIAGSET_SCANS["test"][0]
    dist = copy.dataset_dir / "distributions" / "S" / "10x" / f"{scan}.json"
    counts = json.loads(dist.read_text())
    dist.write_text(json.dumps({**counts, "R5": counts["R5"] + 1}))
    assert _main("--dataset", "diagset10x", "--data-dir", str(copy.root), "--check-data",
                 tmp=tmp_path) == 2
    cap = capsys.readouterr()
    assert "problems: 2" in cap.out and f"{blob}: not a readable .npy array" in cap.out
    assert f"{dist}: counts {counts['R5'] + 1} R5 patches" in cap.out
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: 2 problem(s)")


def test_dry_run_without_the_data_uses_the_papers_sizes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTNBENCH_DATA", raising=False)
    assert _main("--dataset", "diagset10x", "--methods", "baseline", "--dry-run",
                 tmp=tmp_path) == 0
    out = capsys.readouterr().out
    assert "official sizes" in out and "132882 train / 30086 test images, 8 classes" in out

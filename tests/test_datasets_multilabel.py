"""The multi-label datasets (PASCAL VOC 2012, CelebA, cluttered-digits-multilabel):
their samples (``labels``, ``objects``, ``object_labels``) against hand-built
expectations and torchvision's own readers, boxes through the transforms, collation,
one-line errors naming the file, the command line, and the single-label default left
byte for byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness import config, data, run
from harness.data.celeba import CELEBA_ATTRIBUTES
from harness.data.core import ObjectsRandomCrop
from harness.data.voc import VOC_CLASSES
from harness.errors import UserError
from tests import dataset_fixtures as fixtures
from tests.dataset_fixtures import Fixture

SIZE = 64


def _build(name: str, fx: Fixture | Path, split: str, **kw: Any) -> data.Split:
    root = fx.root if isinstance(fx, Fixture) else fx
    return data.build(name, split, data_dir=root, image_size=SIZE, **kw)


def _error(name: str, root: Path, split: str = "test") -> str:
    with pytest.raises(UserError) as err:
        _build(name, root, split)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _hot(classes: tuple[int, ...], n: int) -> list[float]:
    return [1.0 if c in classes else 0.0 for c in range(n)]


def test_the_registry_says_which_datasets_are_multi_label() -> None:
    meta = {n: data.DATASETS.entry(n).meta for n in data.DATASETS.names()}
    assert sorted(n for n, m in meta.items() if m.get("multi_label")) == [
        "celeba", "cluttered-digits-multilabel", "voc2012"]
    assert meta["voc2012"]["label_names"] == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert VOC_CLASSES == fixtures.VOC_CLASSES  # the standard order, written twice
    assert meta["celeba"]["label_names"] == CELEBA_ATTRIBUTES == tuple(
        fixtures.CELEBA_ATTRIBUTES)
    assert not data.DatasetInfo("x", 2, (8, 8), (0.5,) * 3, (0.5,) * 3, False).multi_label


# ---- PASCAL VOC 2012

def test_voc2012_samples_hold_every_object_and_class(tmp_path: Path) -> None:
    fx = fixtures.make_voc2012(tmp_path)
    for split in ("train", "test"):
        s = _build("voc2012", fx, split, train_crop="none", test_crop="none", flip=False)
        want = fx.split(split)
        assert s.info.multi_label and s.info.multi_object and s.info.num_classes == 20
        assert [r.path.relative_to(fx.dataset_dir).as_posix() for r in s.dataset.records] \
            == [im.relpath for im in want]  # type: ignore[attr-defined]
        k = max(len(im.boxes) for im in want)
        for i, im in enumerate(want):
            x = s.dataset[i]
            assert x["label"] == im.label and x["labels"].dtype == torch.float32
            assert x["labels"].tolist() == _hot(im.labels, 20)
            n = len(im.boxes)
            assert x["object_labels"].tolist() == [*im.object_labels, *[-1] * (k - n)]
            assert x["object_difficult"].tolist() == [*im.difficult, *[False] * (k - n)]
            h, w = im.size
            scale = torch.tensor([SIZE / w, SIZE / h, SIZE / w, SIZE / h])
            assert torch.allclose(x["objects"][:n], torch.tensor(im.boxes) * scale, atol=1e-4)
            assert torch.isnan(x["objects"][n:]).all()
    # the fixture's own choices: two objects of one class, difficult marks, several sizes
    ims = fx.images
    assert any(len(set(im.object_labels)) < len(im.object_labels) for im in ims)
    assert any(any(im.difficult) for im in ims) and {len(im.boxes) for im in ims} == {1, 2, 3}


def test_voc2012_labels_agree_with_the_per_class_image_sets(tmp_path: Path) -> None:
    """``ImageSets/Main/<class>_<set>.txt`` says 1 (an object of the class), 0 (its
    objects all difficult) or -1 (none): ``labels`` is 1 for both 1 and 0, and 0 is the
    class's objects all marked difficult."""
    fx = fixtures.make_voc2012(tmp_path)
    main = fx.dataset_dir / "ImageSets" / "Main"
    seen = set()
    for split, image_set in (("train", "train"), ("test", "val")):
        s = _build("voc2012", fx, split)
        samples = [s.eval_view()[i] for i in range(len(s))]
        for c, cls in enumerate(VOC_CLASSES):
            rows = [ln.split() for ln in (main / f"{cls}_{image_set}.txt").read_text()
                    .splitlines()]
            assert [r[0] for r in rows] == [Path(im.relpath).stem for im in fx.split(split)]
            for (_, mark), x in zip(rows, samples, strict=True):
                mine = x["object_labels"] == c
                only_difficult = bool(mine.any() and x["object_difficult"][mine].all())
                got = -1 if not x["labels"][c] else (0 if only_difficult else 1)
                assert got == int(mark), (cls, x["index"])
                seen.add(int(mark))
    assert seen == {-1, 0, 1}


def test_voc2012_is_torchvisions_vocdetection_reading(tmp_path: Path) -> None:
    """torchvision's ``VOCDetection`` (``download=False`` only checks the folder)
    reads the same fixture: the same images, objects, classes, boxes and marks."""
    from torchvision.datasets import VOCDetection

    fx = fixtures.make_voc2012(tmp_path)
    for split, image_set in (("train", "train"), ("test", "val")):
        tv = VOCDetection(str(fx.root), year="2012", image_set=image_set, download=False)
        s = _build("voc2012", fx, split)
        records = s.dataset.records  # type: ignore[attr-defined]
        assert [Path(p).resolve() for p in tv.images] == [r.path.resolve() for r in records]
        for i, r in enumerate(records):
            objs = tv[i][1]["annotation"]["object"]
            assert [VOC_CLASSES.index(o["name"]) for o in objs] == r.object_labels.tolist()
            assert [o["difficult"] == "1" for o in objs] == r.difficult.tolist()
            assert [[float(o["bndbox"][k]) - k.endswith("min") for k in
                     ("xmin", "ymin", "xmax", "ymax")] for o in objs] == r.boxes.tolist()
            classes = sorted({VOC_CLASSES.index(o["name"]) for o in objs})
            assert np.flatnonzero(r.present).tolist() == classes


def _center_crop_boxes(boxes: torch.Tensor, h: int, w: int, size: int) -> torch.Tensor:
    """Boxes under Resize(shorter side = size / 0.875) then CenterCrop(size), by hand."""
    short = round(size / 0.875)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    top, left = round((nh - size) / 2), round((nw - size) / 2)
    out = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    out -= torch.tensor([left, top, left, top])
    return out.clamp(0, size)


def test_voc2012_boxes_and_their_classes_follow_a_resize_and_crop(tmp_path: Path) -> None:
    fx = fixtures.make_voc2012(tmp_path)
    s = _build("voc2012", fx, "test")  # resize the shorter side, centre crop
    for i, im in enumerate(fx.split("test")):
        x = s.dataset[i]
        n = len(im.boxes)
        want = _center_crop_boxes(torch.tensor(im.boxes), *im.size, SIZE)
        assert torch.allclose(x["objects"][:n], want, atol=1e-3), (i, x["objects"], want)
        assert x["object_labels"][:n].tolist() == list(im.object_labels)
    # a random crop keeps every row's class, boxes cropped away included
    tr = _build("voc2012", fx, "train", train_crop="random-resized")
    torch.manual_seed(0)
    for i, im in enumerate(fx.split("train")):
        x = tr.dataset[i]
        n = len(im.boxes)
        assert x["object_labels"][:n].tolist() == list(im.object_labels)
        boxes = x["objects"][:n]
        assert ((boxes >= 0) & (boxes <= SIZE)).all()


def test_voc2012_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    fx = fixtures.make_voc2012(tmp_path)
    d = fx.dataset_dir
    stem = Path(fx.split("test")[0].relpath).stem
    xml = d / "Annotations" / f"{stem}.xml"
    text = xml.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{name}</name>", "<name>unicorn</name>", 1))
    assert _error("voc2012", fx.root) == (f"{xml}: object name 'unicorn' is not one of the "
                                          "20 VOC classes")
    xml.unlink()
    assert _error("voc2012", fx.root) == f"{xml}: missing annotation file"
    xml.write_text(text)
    image = d / "JPEGImages" / f"{stem}.jpg"
    image.unlink()
    listing = d / "ImageSets" / "Main" / "val.txt"
    assert _error("voc2012", fx.root) == (f"{listing}:1: names {image}, which does not "
                                          "exist")
    listing.unlink()
    assert _error("voc2012", fx.root) == f"{listing}: missing index file"
    listing.write_text("2008_000001 1\n")
    assert _error("voc2012", fx.root) == (f"{listing}:1: expected one image id, got "
                                          "'2008_000001 1'")
    (tmp_path / "elsewhere").mkdir()
    assert _error("voc2012", tmp_path / "elsewhere").startswith(
        f"{tmp_path / 'elsewhere'}: no voc2012 here (expected ImageSets/Main or "
        "VOCdevkit/VOC2012/ImageSets/Main")


# ---- CelebA

def _tv_celeba(root: Path, split: str) -> Any:
    """torchvision's reader; its MD5 check is of the real files (the fixture's differ)."""
    from torchvision.datasets import CelebA

    unchecked = type("Unchecked", (CelebA,), {"_check_integrity": lambda self: True})
    return unchecked(str(root), split=split, target_type="attr", download=False)


def test_celeba_samples_are_the_40_attributes(tmp_path: Path) -> None:
    fx = fixtures.make_celeba(tmp_path)
    for split in ("train", "test"):
        s = _build("celeba", fx, split)
        want = fx.split(split)
        assert s.info.multi_label and not s.info.has_boxes and s.info.num_classes == 40
        assert len(s) == len(want)
        for i, im in enumerate(want):
            x = s.dataset[i]
            assert x["label"] == im.label and x["labels"].tolist() == _hot(im.labels, 40)
            assert torch.isnan(x["bbox"]).all() and "objects" not in x
            assert "object_labels" not in x
    none = [x for x in fx.split("train") if not x.labels]
    assert len(none) == 1 and none[0].label == 0  # no attribute: label 0, labels all 0


def test_celeba_is_torchvisions_celeba_reading(tmp_path: Path) -> None:
    """torchvision's ``CelebA`` reads all five files of the same fixture (its integrity
    check compares MD5 sums of the real files, so it is skipped): the same images in
    the same order and the same 0/1 attributes; test is its ``test`` partition."""
    fx = fixtures.make_celeba(tmp_path)
    for split in ("train", "test"):
        tv = _tv_celeba(fx.root, split)
        s = _build("celeba", fx, split)
        records = s.dataset.records  # type: ignore[attr-defined]
        assert list(tv.filename) == [r.path.name for r in records]
        assert torch.equal(tv.attr.float(), torch.from_numpy(np.stack([r.present
                                                                        for r in records])))
        assert [n for n in tv.attr_names if n] == list(CELEBA_ATTRIBUTES)
    assert len(_tv_celeba(fx.root, "valid")) == 2  # in neither split


def test_celeba_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    fx = fixtures.make_celeba(tmp_path)
    d = fx.dataset_dir
    attrs = d / "list_attr_celeba.txt"
    text = attrs.read_text()
    lines = text.splitlines()
    attrs.write_text("\n".join([lines[0], lines[1], lines[2].replace(" 1", " 2", 1)
                                if " 1" in lines[2] else lines[2].replace("-1", "2", 1),
                                *lines[3:]]) + "\n")
    assert _error("celeba", fx.root).startswith(f"{attrs}:3: expected an image and 40 "
                                                "values of -1 or 1")
    attrs.write_text("\n".join([lines[0], lines[1].replace("Young", "Old"), *lines[2:]]))
    assert _error("celeba", fx.root) == (f"{attrs}:2: not CelebA's attribute names (column "
                                         "40 is 'Old', expected Young)")
    attrs.write_text("\n".join(["99", *lines[1:]]) + "\n")
    assert _error("celeba", fx.root) == f"{attrs}:1: says 99 images, lists {len(lines) - 2}"
    test = fx.split("test")[0].relpath.split("/")[1]
    attrs.write_text("\n".join([str(len(lines) - 3), lines[1],
                                *(ln for ln in lines[2:] if not ln.startswith(test))]))
    partition = d / "list_eval_partition.txt"
    n = next(i for i, ln in enumerate(partition.read_text().splitlines(), 1)
             if ln.startswith(test))
    assert _error("celeba", fx.root) == (f"{attrs}: no line for '{test}' (listed in "
                                         f"{partition}:{n})")
    attrs.write_text(text)
    (d / "img_align_celeba" / test).unlink()
    assert _error("celeba", fx.root).endswith(f"names {d / 'img_align_celeba' / test}, "
                                              "which does not exist")
    partition.write_text(partition.read_text().replace(" 2\n", " 3\n", 1))
    assert "expected '<image> <0, 1 or 2>'" in _error("celeba", fx.root)
    partition.unlink()
    assert _error("celeba", fx.root) == f"{partition}: missing index file"


# ---- cluttered-digits-multilabel

def _multi(split: str, n: int = 24, **kw: Any) -> data.Split:
    return data.build("cluttered-digits-multilabel", split,
                      **{"n_train" if split == "train" else "n_test": n}, **kw)


def test_multilabel_digits_every_digit_is_a_label_with_its_box() -> None:
    from harness.data.digits import INK_THRESHOLD, generate_multi_digits, mnist_sources

    s = _multi("test")
    assert s.info.multi_label and s.info.multi_object and s.info.has_boxes
    d = generate_multi_digits(24, "test", 0)
    counts = (d["object_labels"] >= 0).sum(1)
    assert set(counts.tolist()) == {2, 3}
    _, labels, is_test = mnist_sources()
    for i in range(len(s)):
        x = s.dataset[i]
        k = int(counts[i])
        classes = d["object_labels"][i, :k].tolist()
        assert len(set(classes)) == k  # distinct classes
        assert x["labels"].tolist() == _hot(tuple(classes), 10)
        assert x["object_labels"].tolist() == [*classes, *[-1] * (3 - k)]
        src = d["source"][i, :k]
        assert is_test[src].all() and labels[src].tolist() == classes  # the test sources
        boxes = x["objects"][:k]
        assert torch.equal(boxes, torch.from_numpy(d["objects"][i, :k]))
        assert torch.isnan(x["objects"][k:]).all()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert x["label"] == classes[int(area.argmax())]
        assert torch.equal(x["bbox"], torch.cat([boxes[:, :2].min(0).values,
                                                 boxes[:, 2:].max(0).values]))
        # each box holds ink drawn over the background (the last digit's box, in full)
        back = data.denormalize(x["image"][None], s.info)[0]
        x1, y1, x2, y2 = boxes[k - 1].long().tolist()
        assert back[:, y1:y2, x1:x2].amax() > back.mean() + INK_THRESHOLD
    train = generate_multi_digits(24, "train", 0)
    assert not is_test[train["source"][train["source"] >= 0]].any()


def test_multilabel_digits_are_seeded_and_apart_from_the_single_label_ones() -> None:
    from harness.data.digits import generate_digits, generate_multi_digits

    a, b = generate_multi_digits(8, "train", 0), generate_multi_digits(8, "train", 0)
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    assert not np.array_equal(a["images"], generate_multi_digits(8, "train", 1)["images"])
    assert not np.array_equal(a["images"], generate_multi_digits(8, "test", 0)["images"])
    assert not np.array_equal(a["images"], generate_digits(8, "train", 0)["images"])
    with pytest.raises(UserError, match="generated at 64 px"):
        _multi("train", image_size=32)


def test_multilabel_digits_objects_follow_the_batch_augmentation() -> None:
    """The per-batch random crop (and a flip) moves each object as it moves a named
    box: each row equals :class:`BatchRandomCrop`'s move of that row as ``bbox``."""
    s = _multi("train", 16)
    assert isinstance(s.batch_transform, ObjectsRandomCrop)
    batch = next(iter(data.loader(s, 16, torch.device("cpu"))))
    for flip in (False, True):
        crop = ObjectsRandomCrop(s.info, flip=flip)
        torch.manual_seed(3)
        out = crop(batch)
        torch.manual_seed(3)
        plain = data.BatchRandomCrop(s.info, flip=flip)
        off = plain.offsets(16)
        flips = torch.rand(16) < 0.5 if flip else None
        assert torch.equal(out["image"], plain(batch, off, flips)["image"])
        for j in range(3):
            row = plain({**batch, "bbox": batch["objects"][:, j]}, off, flips)["bbox"]
            assert torch.allclose(out["objects"][:, j], row, atol=0, rtol=0, equal_nan=True)
        pad = torch.isnan(batch["objects"]).all(-1)
        assert torch.isnan(out["objects"][pad]).all() and not torch.isnan(
            out["objects"][~pad]).any()
        assert torch.equal(out["object_labels"], batch["object_labels"])


def test_multilabel_digits_boxes_follow_a_resize_and_crop() -> None:
    from torchvision.transforms import v2

    s = _multi("test", 8)
    tf = v2.Compose([v2.Resize(96), v2.CenterCrop(80), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(s.info.mean, s.info.std)])
    moved = s.dataset.with_transform(tf)  # type: ignore[attr-defined]
    for i in range(len(s)):
        x, y = s.dataset[i], moved[i]
        assert y["image"].shape == (3, 80, 80)
        want = (x["objects"] * 1.5 - 8).clamp(0, 80)
        assert torch.allclose(y["objects"], want, atol=1e-4, equal_nan=True)
        assert torch.equal(y["object_labels"], x["object_labels"])


# ---- the single-label default, as it was

#: the default's data are pinned, so that nothing added for multi-label data changes
#: them (its checkpoint keys and split id also hold a digest of the code, which any
#: edit of the data or training code changes, by design)
#: sha256 over the first 32 test samples of cluttered-digits (each key, sorted, and its
#: values' bytes), and over a train batch of 16 after the per-batch crop from seed 0
DEFAULT_SAMPLES = "48ee5c3df585949840a64ab3eb69a5f12a022368fb2cf2b1ada8093fc20d64cd"
DEFAULT_BATCH = "5ea9b27049b3ded21f6849f4434e143ca11523176cc88309d8d0322b03a7d8e3"


def test_the_single_label_default_s_data_are_byte_for_byte_as_before() -> None:
    cfg = config.resolve("default")
    assert cfg.dataset == "cluttered-digits"
    s = data.build("cluttered-digits", "test", n_test=32)
    h = hashlib.sha256()
    for i in range(32):
        x = s.dataset[i]
        assert "labels" not in x and "object_labels" not in x and not s.info.multi_label
        for k in sorted(x):
            h.update(k.encode())
            h.update(torch.as_tensor(x[k]).numpy().tobytes())
    assert h.hexdigest() == DEFAULT_SAMPLES
    tr = data.build("cluttered-digits", "train", n_train=16)
    batch = next(iter(data.loader(tr, 16, torch.device("cpu"))))
    torch.manual_seed(0)
    assert tr.batch_transform is not None
    out = tr.batch_transform(batch)
    h = hashlib.sha256()
    for k in sorted(out):
        h.update(k.encode())
        h.update(out[k].contiguous().numpy().tobytes())
    assert h.hexdigest() == DEFAULT_BATCH


# ---- collation, the data-randomisation test, the command line

@pytest.mark.parametrize("name", ["voc2012", "celeba", "cluttered-digits-multilabel"])
def test_batches_collate_the_multi_label_keys(name: str, tmp_path: Path) -> None:
    if name in fixtures.BUILDERS:
        fx = fixtures.BUILDERS[name](tmp_path)
        s = _build(name, fx, "train")
    else:
        s = _multi("train", 8)
    c = s.info.num_classes
    for workers in (0, 1):
        s.num_workers = workers
        batch = next(iter(data.loader(s, 4, torch.device("cpu"), dataset=s.eval_view())))
        assert batch["labels"].shape == (4, c) and batch["labels"].dtype == torch.float32
        assert batch["label"].shape == (4,)
        if s.info.has_boxes:
            k = batch["objects"].shape[1]
            assert batch["objects"].shape == (4, k, 4)
            assert batch["object_labels"].shape == (4, k)
            assert batch["object_labels"].dtype == torch.long
        with pytest.raises(TypeError):
            data.permuted_labels(s, 0)


def _main(*args: str, tmp: Path) -> int:
    return run.main([*args, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                     "--no-progress", "--device", "cpu", "--workers", "0"])


@pytest.mark.parametrize("name", ["voc2012", "celeba", "cluttered-digits-multilabel"])
def test_check_data_reads_a_multi_label_dataset(name: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dataset", name, "--check-data"]
    if name in fixtures.BUILDERS:
        fx = fixtures.BUILDERS[name](tmp_path / "data")
        args += ["--data-dir", str(fx.root)]
    else:
        args += ["--set", "dataset_kwargs.n_train=40", "--set", "dataset_kwargs.n_test=20"]
    assert _main(*args, tmp=tmp_path) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "classes per image" in out
    assert ("objects per image" in out) == (name != "celeba")
    if name == "voc2012":
        assert "train: 9 images" in out and "1-3 objects per image" in out
        assert "labels: 1-" in out


@pytest.mark.parametrize("name", ["voc2012", "celeba", "cluttered-digits-multilabel"])
def test_methods_without_multi_label_targets_are_refused_in_one_line(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A method that trains on ``label`` alone, asked for by name on a multi-label
    dataset: ``--dry-run`` and a run stop before any training with one line naming the
    methods that take multi-label targets."""
    args = ["--dataset", name, "--methods", "baseline,abn-amb", "--preset", "smoke"]
    if name in fixtures.BUILDERS:
        fx = fixtures.BUILDERS[name](tmp_path / "data")
        args += ["--data-dir", str(fx.root)]
    for extra in (["--dry-run"], []):
        assert _main(*args, *extra, tmp=tmp_path) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: method 'abn-amb' does not take multi-label "
                                  f"targets, which dataset {name!r} has; methods that do: "
                                  "baseline, cam, gradcam, abn, abn-multitask, discattn-ch, "
                                  "discattn-px, "
                                  "discattn-gradcam")
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir())


@pytest.mark.parametrize("name,sizes", [("voc2012", "5717 train / 5823 test"),
                                        ("celeba", "162770 train / 19962 test")])
def test_dry_run_without_the_data_knows_it_is_multi_label(
        name: str, sizes: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTNBENCH_DATA", raising=False)
    assert _main("--dataset", name, "--methods", "abn-cot", "--dry-run", tmp=tmp_path) == 2
    got = capsys.readouterr()
    assert "official sizes" in got.out and "does not take multi-label targets" in got.err
    assert data.DATASETS.entry(name).meta["official"] == tuple(
        int(v) for v in sizes.replace(" train / ", " ").replace(" test", "").split())


def test_the_listing_names_the_multi_label_datasets(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    run.print_registries()
    out = capsys.readouterr().out
    assert "cluttered-digits   embedded (the default), boxes\n" in out
    assert "cluttered-digits-multilabel embedded, boxes, multi-label" in out
    assert "voc2012            read from --data-dir, boxes, multi-label" in out
    assert "celeba             read from --data-dir, no boxes, multi-label" in out


def test_the_dataset_contract_checks_the_multi_label_keys() -> None:
    from harness.testing import _check_multi_label

    s = _multi("test", 8)
    good = next(x for x in (s.dataset[i] for i in range(8)) if (x["object_labels"] < 0).any())
    _check_multi_label("x", good, s.info)
    k = int((good["object_labels"] >= 0).sum())
    broken = [{**good, "labels": good["labels"].double()},
              {**good, "labels": good["labels"] * 2},
              {**good, "object_labels": good["object_labels"][:2]},
              {**good, "object_labels": torch.where(good["object_labels"] < 0, 0,
                                                    good["object_labels"])},
              {**good, "labels": torch.where(torch.arange(10) == good["object_labels"][k - 1],
                                             0.0, good["labels"])}]
    for sample in broken:
        with pytest.raises(AssertionError):
            _check_multi_label("x", sample, s.info)

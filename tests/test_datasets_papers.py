"""ImageNet, SVHN, Caltech-256 and CompCars against tiny fixtures in their published
layouts: what the loaders find, torchvision's own readers on the same files, one-line
errors naming the file, the Caltech-256 split, and the command line."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch

from harness import data, run
from harness.data.files import ImageFiles
from harness.errors import UserError
from tests import dataset_fixtures as fixtures
from tests.dataset_fixtures import Fixture

PHOTO = ("imagenet", "caltech256", "compcars", "compcars-make")


def _records(s: data.Split, fx: Fixture) -> list[tuple[str, int, tuple]]:
    assert isinstance(s.dataset, ImageFiles)
    return [(r.path.relative_to(fx.dataset_dir).as_posix(), r.label,
             tuple(tuple(float(v) for v in b) for b in r.boxes)) for r in s.dataset.records]


def _build(name: str, fx: Fixture | Path, split: str, **kw: Any) -> data.Split:
    root = fx.root if isinstance(fx, Fixture) else fx
    return data.build(name, split, data_dir=root, image_size=64, **kw)


def _error(name: str, root: Path, split: str = "test", **kw: Any) -> str:
    with pytest.raises(UserError) as err:
        _build(name, root, split, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("name", PHOTO)
def test_the_loader_finds_exactly_the_fixtures_images_labels_and_boxes(
        name: str, tmp_path: Path) -> None:
    fx = fixtures.BUILDERS[name](tmp_path)
    for split in ("train", "test"):
        s = _build(name, fx, split)
        assert _records(s, fx) == [(im.relpath, im.label, im.boxes) for im in fx.split(split)]
        assert s.info.num_classes == {"imagenet": 1000, "caltech256": 256, "compcars": 431,
                                      "compcars-make": 75}[name]


def test_imagenet_classes_boxes_and_multi_objects(tmp_path: Path) -> None:
    fx = fixtures.make_imagenet(tmp_path)
    train, test = _build("imagenet", fx, "train"), _build("imagenet", fx, "test")
    # partial train boxes: the split has boxes, the images without an XML have a NaN box
    assert train.info.has_boxes and test.info.multi_object
    unboxed = [i for i, im in enumerate(fx.split("train")) if not im.boxes]
    assert unboxed and all(torch.isnan(train.eval_view()[i]["bbox"]).all() for i in unboxed)
    assert sum(len(im.boxes) == 2 for im in fx.split("test")) == 1
    assert test.eval_view()[1]["objects"].isfinite().all(dim=1).sum() == 2
    from harness.data.imagenet import synsets

    wnids, names = synsets(fx.dataset_dir / "LOC_synset_mapping.txt")
    assert wnids[:3] == ["n01440764", "n01443537", "n01484850"] and names[1] == \
        "goldfish, Carassius auratus" and len(names) == 1000


def test_torchvision_image_folder_reads_the_imagenet_train_tree_alike(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    fx = fixtures.make_imagenet(tmp_path)
    tv = ImageFolder(str(fx.dataset_dir / "ILSVRC" / "Data" / "CLS-LOC" / "train"))
    ours = _build("imagenet", fx, "train")
    assert [(Path(p).relative_to(fx.dataset_dir).as_posix(), y) for p, y in tv.samples] == [
        (r, lab) for r, lab, _ in _records(ours, fx)]


def _tv_svhn(root: Path, split: str) -> Any:
    from torchvision.datasets import SVHN

    unchecked = type("Unchecked", (SVHN,), {"_check_integrity": lambda self: True})
    return unchecked(str(root), split=split)


def test_svhn_is_torchvisions_reading_of_the_mat_files(tmp_path: Path) -> None:
    fx = fixtures.make_svhn(tmp_path)
    tv = {s: _tv_svhn(fx.root, s) for s in ("train", "extra", "test")}
    full = data.build("svhn", "train", data_dir=fx.root)
    alone = data.build("svhn", "train", data_dir=fx.root, extra=False)
    test = data.build("svhn", "test", data_dir=fx.root)
    both = np.concatenate([tv["train"].data, tv["extra"].data])
    for ours, (images, labels) in [(full, (both, np.concatenate([tv["train"].labels,
                                                                 tv["extra"].labels]))),
                                   (alone, (tv["train"].data, tv["train"].labels)),
                                   (test, (tv["test"].data, tv["test"].labels))]:
        ds = ours.dataset
        assert torch.equal(ds.images, torch.from_numpy(images))  # type: ignore[attr-defined]
        assert ds.labels.tolist() == labels.tolist()  # type: ignore[attr-defined]
    assert full.dataset.labels.tolist() == [im.label for im in fx.split("train")]  # type: ignore[attr-defined]
    assert 0 in test.dataset.labels.tolist()  # type: ignore[attr-defined]  # y = 10
    assert len(full) == len(alone) * 3 // 2 and full.fingerprint != alone.fingerprint
    # ABN's CIFAR augmentation (per batch), no boxes
    assert isinstance(full.batch_transform, data.BatchRandomCrop) and full.batch_transform.flip
    assert not test.info.has_boxes and test.info.num_classes == 10
    back = data.denormalize(test.dataset[0]["image"][None], test.info)[0]
    assert torch.allclose(back * 255, torch.from_numpy(tv["test"].data[0]).float(), atol=1e-3)


def test_caltech256_samples_are_among_torchvisions(tmp_path: Path) -> None:
    from torchvision.datasets import Caltech256

    fx = fixtures.make_caltech256(tmp_path / "caltech256")
    tv = Caltech256(str(tmp_path))
    tv_samples = {(f"{tv.categories[y]}/{y + 1:03d}_{i:04d}.jpg", y)
                  for y, i in zip(tv.y, tv.index, strict=True)}
    assert tv.categories[-1] == "257.clutter"
    ours = {s: {(r, lab) for r, lab, _ in _records(_build("caltech256", fx, s), fx)}
            for s in ("train", "test")}
    kept = {(p, y) for p, y in tv_samples if not p.startswith("257.")}
    assert ours["train"] | ours["test"] <= kept and not ours["train"] & ours["test"]
    assert len(kept - ours["train"] - ours["test"]) == 3 + 0 + 1  # the spare images


def test_caltech256_split_is_deterministic_disjoint_per_class_and_seeded(
        tmp_path: Path) -> None:
    fx = fixtures.make_caltech256(tmp_path)
    first = {s: _records(_build("caltech256", fx, s), fx) for s in ("train", "test")}
    again = {s: _records(_build("caltech256", fx, s), fx) for s in ("train", "test")}
    assert first == again
    counts = {s: np.bincount([lab for _, lab, _ in first[s]]).tolist() for s in first}
    assert counts == {"train": [60, 60, 60], "test": [25, 25, 25]}
    assert not {r for r, *_ in first["train"]} & {r for r, *_ in first["test"]}
    assert not any(r.startswith("257.") for s in first.values() for r, *_ in s)
    other = _records(_build("caltech256", fx, "train", split_seed=1), fx)
    assert other != first["train"] and len(other) == 180
    fps = {seed: _build("caltech256", fx, "test", split_seed=seed).fingerprint
           for seed in (0, 1)}
    assert fps[0] != fps[1]
    thirty = _records(_build("caltech256", fx, "train", train_per_class=30), fx)
    assert np.bincount([lab for _, lab, _ in thirty]).tolist() == [30, 30, 30]
    # the documented draw (the fixture's ``caltech_split``) for 30 per class
    fx30 = fixtures.make_caltech256(tmp_path / "thirty", per_class=(30, 25))
    assert _records(_build("caltech256", fx30, "train", train_per_class=30), fx30) == [
        (im.relpath, im.label, ()) for im in fx30.split("train")]
    # the file system's order does not matter: the same names copied in another order
    moved = tmp_path / "copy" / "256_ObjectCategories"
    for cls in sorted(fx.dataset_dir.iterdir(), reverse=True):
        for f in sorted(cls.iterdir(), reverse=True):
            (moved / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, moved / cls.name / f.name)
    copy = _build("caltech256", moved.parent, "test")
    assert [(r.path.relative_to(moved).as_posix(), r.label)
            for r in copy.dataset.records] == [(r, lab) for r, lab, _ in first["test"]]  # type: ignore[attr-defined]
    assert copy.fingerprint == _build("caltech256", fx, "test").fingerprint


def test_caltech256_options_are_checked(tmp_path: Path) -> None:
    fx = fixtures.make_caltech256(tmp_path)
    with pytest.raises(UserError, match="unexpected keyword argument 'bogus'"):
        _build("caltech256", fx, "test", bogus=1)
    with pytest.raises(UserError, match="train_per_class"):
        _build("caltech256", fx, "test", train_per_class=0)
    few = fx.dataset_dir / "002.american-flag"
    for f in sorted(few.iterdir())[:3]:
        f.unlink()
    msg = _error("caltech256", fx.root)
    assert msg == (f"{few}: 82 images, fewer than train_per_class + test_per_class = 60 + 25")
    (fx.dataset_dir / "banana").mkdir()
    assert "banana" in _error("caltech256", fx.root) and "<001-256>.<name>" in \
        _error("caltech256", fx.root)


def test_imagenet_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    fx = fixtures.make_imagenet(tmp_path)
    d = fx.dataset_dir
    annos = d / "ILSVRC" / "Annotations" / "CLS-LOC"
    sol = d / "LOC_val_solution.csv"
    # the solution file disagreeing with an XML
    text = sol.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("ILSVRC2012_val_00000003"))
    wnid = row.split(",")[1].split()[0]
    other = next(w for w, _ in fixtures.IMAGENET_CLASSES if w != wnid)
    sol.write_text(text.replace(row, row.replace(wnid, other)))
    line = text.splitlines().index(row) + 1
    assert _error("imagenet", fx.root).startswith(f"{sol}:{line}: ILSVRC2012_val_00000003 is "
                                                   f"{other}, its XML")
    sol.unlink()  # without it, the XML alone decides
    assert len(_build("imagenet", fx, "test")) == len(fx.split("test"))
    xml = annos / "val" / "ILSVRC2012_val_00000002.xml"
    xml.write_text(xml.read_text().replace("</annotation>", "<object><name>n12345678</name>"
                                           "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax>"
                                           "<ymax>3</ymax></bndbox></object></annotation>"))
    assert _error("imagenet", fx.root) == (f"{xml}: object name 'n12345678' is not a wnid of "
                                           "LOC_synset_mapping.txt")
    xml.unlink()
    assert _error("imagenet", fx.root) == f"{xml}: missing annotation file"
    train_xml = next((annos / "train").rglob("*.xml"))
    train_xml.write_text(train_xml.read_text().replace(train_xml.parent.name, "n01443537")
                         if train_xml.parent.name != "n01443537" else
                         train_xml.read_text().replace("n01443537", "n01440764"))
    assert _error("imagenet", fx.root, "train").startswith(f"{train_xml}: an object named")
    mapping = d / "LOC_synset_mapping.txt"
    mapping.write_text("\n".join(mapping.read_text().splitlines()[:999]) + "\n")
    assert _error("imagenet", fx.root) == f"{mapping}: 999 wnids, ILSVRC2012 has 1000"


def test_svhn_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    fx = fixtures.make_svhn(tmp_path, extra=False)
    extra = fx.root / "extra_32x32.mat"
    assert _error("svhn", fx.root, "train").startswith(f"{extra}: missing (extra=True")
    assert len(data.build("svhn", "train", data_dir=fx.root, extra=False)) == 30
    test = fx.root / "test_32x32.mat"
    m = scipy.io.loadmat(test)
    scipy.io.savemat(test, {"X": m["X"], "y": np.where(np.arange(len(m["y"]))[:, None] == 4,
                                                        11, m["y"])})
    assert _error("svhn", fx.root) == f"{test}: y(5) = 11, labels must be 1..10"
    scipy.io.savemat(test, {"X": m["X"][:, :, :2], "y": m["y"]})
    assert _error("svhn", fx.root).startswith(f"{test}: X must be uint8 32 x 32 x 3 x N")
    scipy.io.savemat(test, {"X": m["X"]})
    assert _error("svhn", fx.root).startswith(f"{test}: no variable 'y'")
    test.unlink()
    assert _error("svhn", fx.root).startswith(f"{test}: missing")


def test_compcars_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    fx = fixtures.make_compcars(tmp_path)
    d = fx.dataset_dir / "data"
    im = fx.split("train")[0]
    label = d / "label" / Path(im.relpath).relative_to("data/image").with_suffix(".txt")
    label.write_text(label.read_text().replace("\n1\n", "\n2\n"))
    assert _error("compcars", fx.root, "train") == (
        f"{label}: says 2 box(es), holds 1 'x1 y1 x2 y2' line(s)")
    label.write_text("3\n")
    assert _error("compcars", fx.root, "train").startswith(f"{label}: expected a viewpoint")
    label.unlink()
    assert _error("compcars", fx.root, "train") == f"{label}: missing label file"
    listing = d / "train_test_split" / "classification" / "test.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(["audi/q5/2014/x.jpg", *lines]) + "\n")
    assert _error("compcars-make", fx.root).startswith(
        f"{listing}:1: expected '<make id>/<model id>/<year>/<name>.jpg'")
    listing.write_text("\n".join(["999/1/2014/x.jpg", *lines]) + "\n")
    mat = d / "misc" / "make_model_name.mat"
    assert _error("compcars-make", fx.root) == (
        f"{mat}: make_names has 163 entries, no make id 999")
    scipy.io.savemat(mat, {"make_names": fixtures._cell(["a"])})
    assert _error("compcars", fx.root).startswith(f"{mat}: no variable 'model_names'")


def test_compcars_model_and_maker_share_images(tmp_path: Path) -> None:
    model = fixtures.make_compcars(tmp_path)
    make = fixtures.BUILDERS["compcars-make"](tmp_path)
    assert [im.relpath for im in model.images] == [im.relpath for im in make.images]
    assert model.classes == ("Audi A4L", "Audi Q5", "BMW 3 Series")
    assert make.classes == ("BMW", "Audi")
    s = _build("compcars-make", make, "test")
    by_path = {r: lab for r, lab, _ in _records(s, make)}
    assert all(by_path[im.relpath] == (0 if im.relpath.split("/")[2] == "5" else 1)
               for im in make.split("test"))


# ---- the command line

def _main(*args: str, tmp: Path) -> int:
    return run.main([*args, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                     "--no-progress", "--device", "cpu", "--workers", "0"])


@pytest.mark.parametrize("name", [*PHOTO, "svhn"])
def test_check_data_on_every_new_layout(name: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fx = fixtures.BUILDERS[name](tmp_path / "data")
    assert _main("--dataset", name, "--data-dir", str(fx.root), "--check-data",
                 tmp=tmp_path) == 0
    out = capsys.readouterr().out
    n_train, n_test = len(fx.split("train")), len(fx.split("test"))
    assert f"train: {n_train} images" in out and f"test: {n_test} images" in out
    assert "problems: none" in out
    assert ("box area" in out) == (name not in ("svhn", "caltech256"))


@pytest.mark.parametrize("name,sizes,classes", [
    ("imagenet", "1281167 train / 50000 test", 1000), ("svhn", "604388 train / 26032 test", 10),
    ("caltech256", "15360 train / 6400 test", 256),
    ("compcars", "36451 train / 15626 test", 431),
    ("compcars-make", "36451 train / 15626 test", 75)])
def test_dry_run_without_the_data_uses_the_official_sizes(
        name: str, sizes: str, classes: int, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTNBENCH_DATA", raising=False)
    assert _main("--dataset", name, "--methods", "baseline", "--dry-run", tmp=tmp_path) == 0
    out = capsys.readouterr().out
    assert "official sizes" in out and f"{sizes} images, {classes} classes" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["svhn", "compcars"])
def test_a_smoke_run_on_svhn_and_compcars(name: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    fx = fixtures.BUILDERS[name](tmp_path / "data", per_class=(6, 4))  # type: ignore[call-arg]
    assert _main("--dataset", name, "--data-dir", str(fx.root), "--preset", "smoke",
                 "--methods", "baseline,abn", "--explainers", "native", tmp=tmp_path) == 0
    df = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert set(df["method"]) >= {"baseline", "abn"} and (df["dataset"] == name).all()
    assert df["top1"].between(0, 1).all() and df["deletion_auc"].notna().all()
    assert ("pointing_game" in df) == (name == "compcars")

"""The datasets read from disk, against tiny fixtures in their published layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import data
from harness.data.files import DataError
from harness.errors import UserError
from tests import dataset_fixtures as fixtures
from tests.dataset_fixtures import Fixture

BOXED = ("cub200-2011", "cub200-2010", "stanford-dogs", "stanford-cars", "folder", "compcars",
         "compcars-make", "voc2012")
#: with boxes on some images only (the others have a drawn object but no box)
PARTLY_BOXED = ("imagenet",)
SIZE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fixture]:
    root = tmp_path_factory.mktemp("datasets")
    return {name: make(root / name) for name, make in fixtures.BUILDERS.items()}


def _build(fx: Fixture, split: str, **kw: object) -> data.Split:
    return data.build(fx.name, split, data_dir=fx.root, image_size=SIZE, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(fixtures.BUILDERS))
def test_every_dataset_loads_its_published_layout(built: dict[str, Fixture], name: str) -> None:
    fx = built[name]
    for split in ("train", "test"):
        s = _build(fx, split)
        want = fx.split(split)
        assert len(s) == len(want)
        samples = [s.eval_view()[i] for i in range(len(s))]
        assert [x["label"] for x in samples] == [w.label for w in want]  # official order
        assert [x["index"] for x in samples] == list(range(len(want)))
        for x in samples:  # every mode (grey, RGBA, CMYK) arrives as normalised RGB
            assert x["image"].shape == (3, SIZE, SIZE) and x["image"].dtype == torch.float32
            assert x["bbox"].shape == (4,)
        assert s.info.image_size == (SIZE, SIZE)
        assert s.info.has_boxes == (name in BOXED + PARTLY_BOXED)
        assert s.fingerprint is not None and len(s.fingerprint) == 16
    # the dataset's own folder is accepted as well as the folder it was extracted into
    own = data.build(name, "test", data_dir=fx.dataset_dir, image_size=SIZE)
    assert own.fingerprint == _build(fx, "test").fingerprint


def test_class_counts_are_the_datasets() -> None:
    assert {n: data.DATASETS.entry(n).meta.get("num_classes") for n in (
        "cub200-2011", "cub200-2010", "stanford-dogs", "stanford-cars", "cifar10", "cifar100")} \
        == {"cub200-2011": 200, "cub200-2010": 200, "stanford-dogs": 120,
            "stanford-cars": 196, "cifar10": 10, "cifar100": 100}


def test_cifar_pixels_and_labels(built: dict[str, Fixture]) -> None:
    """CIFAR's images are the pickled rows (row-major RGB planes) and its training
    augmentation is ABN's: 4 px zero padding, random crop, random flip, per batch."""
    import pickle

    fx = built["cifar10"]
    s = data.build("cifar10", "test", data_dir=fx.root)
    with open(fx.dataset_dir / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    want = torch.from_numpy(np.asarray(raw[b"data"], np.uint8).reshape(-1, 3, 32, 32))
    back = data.denormalize(torch.stack([s.dataset[i]["image"] for i in range(len(s))]), s.info)
    assert torch.allclose(back, want.float() / 255, atol=1e-5)
    assert [s.dataset[i]["label"] for i in range(len(s))] == list(raw[b"labels"])
    tr = data.build("cifar10", "train", data_dir=fx.root)
    assert isinstance(tr.batch_transform, data.BatchRandomCrop) and tr.batch_transform.flip
    assert s.info.num_classes == 10 and not s.info.has_boxes
    assert data.build("cifar100", "test", data_dir=built["cifar100"].root).info.num_classes == 100


def _object_box(image: torch.Tensor, info: data.DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The drawn object's pixels (far from the grey background) and their bounding box."""
    rgb = data.denormalize(image[None], info)[0]
    mask = (rgb - 128 / 255).abs().sum(0) > 0.75  # red or white objects: 1.5; grey: 0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return mask, torch.full((4,), float("nan"))
    return mask, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


#: voc2012 draws three objects side by side: a crop may leave a sliver of one (under a
#: pixel wide) that the union box counts and no pixel shows; its boxes are checked against
#: the transforms' arithmetic in test_datasets_multilabel.py
PIXEL_CHECKED = tuple(n for n in BOXED if n != "voc2012")


@pytest.mark.parametrize("name", PIXEL_CHECKED)
@pytest.mark.parametrize("train_crop", ["random-resized", "random", "none"])
def test_boxes_follow_the_drawn_object_through_the_transforms(
        built: dict[str, Fixture], name: str, train_crop: str) -> None:
    """After every transform (train: random crops and flips; test: resize + centre
    crop) the sample's box is the box of the object's pixels in the transformed image,
    and each of several objects' boxes is filled with object pixels."""
    fx = built[name]
    torch.manual_seed(0)
    for split in ("train", "test"):
        s = _build(fx, split, train_crop=train_crop)
        views = [s.dataset, s.eval_view()] if split == "train" else [s.dataset]
        for view in views:
            for i in range(len(s)):
                for _ in range(3 if view is s.dataset and split == "train" else 1):
                    x = view[i]
                    mask, seen = _object_box(x["image"], s.info)
                    box = x["bbox"]
                    area = 0.0 if torch.isnan(box).any() else float(
                        (box[2] - box[0]).clamp_min(0) * (box[3] - box[1]).clamp_min(0))
                    if area < 4:  # no object, or cropped away
                        assert mask.sum() <= 4 * max(area, 1), (name, split, i)
                        continue
                    assert torch.allclose(seen, box, atol=1.6), (name, split, i, seen, box)
                    for obj in x.get("objects", box[None]):
                        if torch.isnan(obj).any() or (obj[2] - obj[0]) * (obj[3] - obj[1]) < 4:
                            continue
                        x1, y1, x2, y2 = obj.round().long().tolist()
                        inner = mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
                        if inner.numel():
                            assert inner.float().mean() > 0.95, (name, split, i, obj)


def test_several_objects_are_kept_and_their_union_is_the_target(
        built: dict[str, Fixture]) -> None:
    fx = built["stanford-dogs"]
    s = _build(fx, "train", train_crop="none", flip=False)
    (i,) = [k for k, im in enumerate(fx.split("train")) if len(im.boxes) == 2]
    x = s.dataset[i]
    assert s.info.multi_object and x["objects"].shape == (2, 4)
    h, w = fx.split("train")[i].size
    scale = torch.tensor([SIZE / w, SIZE / h, SIZE / w, SIZE / h])
    want = torch.tensor(fx.split("train")[i].boxes) * scale
    assert torch.allclose(x["objects"], want, atol=1e-4)
    assert torch.allclose(x["bbox"], torch.cat([want[:, :2].min(0).values,
                                               want[:, 2:].max(0).values]), atol=1e-4)
    single = next(k for k, im in enumerate(fx.split("train")) if len(im.boxes) == 1)
    assert torch.isnan(s.dataset[single]["objects"][1]).all()  # padding rows


def test_original_size_is_the_region_the_test_image_shows(built: dict[str, Fixture]) -> None:
    """``orig_size``: the original pixels the model input covers, where the pointing
    game's 15 px apply (the whole image when resized, the centre crop's side when
    cropped)."""
    fx = built["cub200-2011"]
    whole = _build(fx, "test", test_crop="none")
    crop = _build(fx, "test", test_crop="center", resize=80)
    for i, im in enumerate(fx.split("test")):
        h, w = im.size
        assert whole.dataset[i]["orig_size"].tolist() == [h, w]
        side = round(SIZE * min(h, w) / 80)
        assert crop.dataset[i]["orig_size"].tolist() == [side, side]


def test_the_python_entry_point_and_display(built: dict[str, Fixture]) -> None:
    fx = built["cub200-2011"]
    s = data.build("cub200-2011", "test", data_dir=fx.dataset_dir, image_size=64)
    images = torch.stack([s.dataset[i]["image"] for i in range(2)])
    shown = data.denormalize(images, s.info)
    assert shown.shape == (2, 3, 64, 64) and 0 <= shown.min() and shown.max() <= 1


def test_subsets_are_fixed_and_in_index_order(built: dict[str, Fixture]) -> None:
    fx = built["cub200-2011"]
    a = _build(fx, "train", n_train=4)
    b = _build(fx, "train", n_train=4)
    assert len(a) == 4 and a.fingerprint == b.fingerprint
    assert a.fingerprint != _build(fx, "train").fingerprint
    paths = [r.path for r in a.dataset.records]  # type: ignore[attr-defined]
    order = [r.path for r in _build(fx, "train").dataset.records]  # type: ignore[attr-defined]
    assert paths == sorted(paths, key=order.index)


def test_workers_decode_in_other_processes(built: dict[str, Fixture]) -> None:
    fx = built["stanford-cars"]
    s = data.build("stanford-cars", "test", data_dir=fx.root, image_size=SIZE, num_workers=2)
    batches = list(data.loader(s, 4, torch.device("cpu"), dataset=s.eval_view()))
    one = list(data.loader(data.build("stanford-cars", "test", data_dir=fx.root,
                                      image_size=SIZE), 4, torch.device("cpu"),
                           dataset=s.eval_view()))
    assert [b["label"].tolist() for b in batches] == [b["label"].tolist() for b in one]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, one, strict=True))


# --------------------------------------------------------------------------------------
# bad data: one line naming the file
# --------------------------------------------------------------------------------------


def _copy(fx: Fixture, tmp: Path) -> Fixture:
    root = tmp / "data"
    shutil.copytree(fx.root, root)
    return Fixture(fx.name, root, root / fx.dataset_dir.relative_to(fx.root), fx.classes,
                   fx.images)


def _edit(path: Path, line: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 3 // 4])  # the header stays readable


def _junk(path: Path) -> None:
    path.write_bytes(b"this is not an image")


# (mutation of a CUB-200-2011 copy, split to build, the file the message names, its words)
CUB_FAULTS = {
    "missing index file": (lambda d: (d / "image_class_labels.txt").unlink(), "train",
                           "image_class_labels.txt", "missing index file"),
    "index names a missing image": (
        lambda d: next((d / "images").rglob("*.jpg")).unlink(), "train", "images.txt:",
        "does not exist"),
    "unreadable image": (lambda d: _junk(sorted((d / "images").rglob("*.jpg"))[0]), "train",
                         ".jpg", "not a readable image"),
    "box outside the image": (lambda d: _edit(d / "bounding_boxes.txt", 1,
                                              "1 10.0 10.0 900.0 20.0"), "train",
                              "bounding_boxes.txt (image id 1)", "lies outside"),
    "box with x2 <= x1": (lambda d: _edit(d / "bounding_boxes.txt", 1, "1 10.0 10.0 0.0 20.0"),
                          "train", "bounding_boxes.txt (image id 1)", "x2 > x1"),
    "label outside the classes": (lambda d: _edit(d / "image_class_labels.txt", 1, "1 201"),
                                  "train", "images.txt:1", "outside the 200 classes"),
    "empty split": (lambda d: (d / "train_test_split.txt").write_text(
        "".join(f"{i} 1\n" for i in range(1, 16))), "test", "cub200-2011", "split is empty"),
    "malformed index line": (lambda d: _edit(d / "train_test_split.txt", 2, "2 1 extra"),
                             "train", "train_test_split.txt:2", "expected an id"),
}


def _first_train_image(fx: Fixture) -> Path:
    return fx.dataset_dir / fx.split("train")[0].relpath


@pytest.mark.parametrize("fault", list(CUB_FAULTS))
def test_bad_cub_data_is_one_line_naming_the_file(built: dict[str, Fixture], tmp_path: Path,
                                                  fault: str) -> None:
    mutate, _, where, words = CUB_FAULTS[fault]
    fx = _copy(built["cub200-2011"], tmp_path)
    mutate(fx.dataset_dir)
    errors = []
    for sp in ("train", "test"):  # the faulty line is in one of the splits
        try:
            _build(fx, sp)
        except DataError as err:
            errors.append(str(err))
    assert errors, fault
    assert all("\n" not in m for m in errors)
    assert any(where in m and words in m for m in errors), errors


def test_a_corrupt_image_is_reported_when_decoded(built: dict[str, Fixture],
                                                 tmp_path: Path) -> None:
    """A truncated JPEG has a readable header, so the split builds; decoding it names
    the file (in the main process and, as one line, from a worker process)."""
    from harness.errors import message

    fx = _copy(built["cub200-2011"], tmp_path)
    bad = _first_train_image(fx)
    _truncate(bad)
    s = _build(fx, "train")
    with pytest.raises(DataError, match=f"{bad.name}: cannot decode"):
        s.dataset[0]
    s.num_workers = 2
    with pytest.raises(DataError) as err:
        list(data.loader(s, 4, torch.device("cpu")))
    assert message(err.value).startswith(str(bad)) and "\n" not in message(err.value)


def test_other_layouts_bad_files(built: dict[str, Fixture], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    with pytest.raises(UserError, match="--data-dir"):
        data.build("cub200-2011", "test")
    with pytest.raises(UserError, match="no such directory"):
        data.build("cub200-2011", "test", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="no cub200-2011 here"):
        data.build("cub200-2011", "test", data_dir=tmp_path)

    def case(name: str, sub: str) -> Fixture:
        return _copy(built[name], tmp_path / sub)

    fx = case("cub200-2010", "a")  # a missing .mat annotation
    mat = next((fx.root / "annotations-mat").rglob("*.mat"))
    mat.unlink()
    with pytest.raises(DataError, match=f"{mat.name}: missing annotation file"):
        _build(fx, "train") if any(
            mat.stem in im.relpath for im in fx.split("train")) else _build(fx, "test")
    fx = case("stanford-dogs", "b")  # malformed XML
    xml = next(p for p in (fx.root / "Annotation").rglob("*") if p.is_file())
    xml.write_text("<annotation><object>")
    with pytest.raises(DataError, match=f"{xml.name}: not valid XML"):
        _build(fx, "train") if any(
            xml.name in im.relpath for im in fx.split("train")) else _build(fx, "test")
    fx = case("stanford-cars", "c")  # the separately published test labels are missing
    (fx.root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match=r"cars_test_annos_withlabels.mat: missing"):
        _build(fx, "test")
    _build(fx, "train")  # the train split does not need them
    fx = case("cifar10", "d")
    (fx.dataset_dir / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        data.build("cifar10", "train", data_dir=fx.root)
    fx = case("cifar100", "e")
    (fx.dataset_dir / "train").write_bytes(b"junk")
    with pytest.raises(DataError, match="cifar-100-python: unreadable"):
        data.build("cifar100", "train", data_dir=fx.root)
    fx = case("folder", "f")
    (fx.root / "boxes.csv").write_text("file,x,y,w,h\n")
    with pytest.raises(DataError, match=r"boxes.csv:1: the header must be"):
        _build(fx, "train")
    (fx.root / "boxes.csv").write_text("path,x1,y1,x2,y2\ntrain/cat/nothing.jpg,1,1,5,5\n")
    with pytest.raises(DataError, match=r"nothing.jpg names no image"):
        _build(fx, "train")
    (fx.root / "boxes.csv").write_text("path,x1,y1,x2,y2\ntrain/cat/cat_000.jpg,1,1,a,5\n")
    with pytest.raises(DataError, match=r"boxes.csv:2: the coordinates must be numbers"):
        _build(fx, "train")
    (fx.root / "boxes.csv").unlink()
    (fx.root / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match="class 'zebra' has no folder"):
        _build(fx, "test")


def test_folder_without_boxes_has_none(built: dict[str, Fixture], tmp_path: Path) -> None:
    fx = fixtures.make_folder(tmp_path / "plain", with_boxes=False)
    s = _build(fx, "test")
    assert not s.info.has_boxes and torch.isnan(s.dataset[0]["bbox"]).all()
    assert s.info.num_classes == 3


# --------------------------------------------------------------------------------------
# conventions as literal known answers, workers, EXIF
# --------------------------------------------------------------------------------------


def test_box_conventions_on_literal_annotations(built: dict[str, Fixture],
                                                tmp_path: Path) -> None:
    """Each layout's convention written out by hand: CUB-2011 x, y, w, h (0-based
    corner); CUB-2010 / VOC / Cars 1-based inclusive pixel indices."""
    import scipy.io

    from harness.data import cub, stanford

    fx = _copy(built["cub200-2011"], tmp_path / "a")
    lines = (fx.dataset_dir / "bounding_boxes.txt").read_text().splitlines()
    lines[0] = "1 3.0 4.0 10.0 5.0"
    (fx.dataset_dir / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    recs = {r.box_source.split("id ")[-1].rstrip(")"): r for split in ("train", "test")
            for r in cub.read_cub2011(fx.dataset_dir, split)[0]}
    assert recs["1"].boxes.tolist() == [[3.0, 4.0, 13.0, 9.0]]

    fx = _copy(built["cub200-2010"], tmp_path / "b")
    first = fx.split("train")[0]
    mat = (fx.root / "annotations-mat" / first.relpath[len("images/"):]).with_suffix(".mat")
    scipy.io.savemat(mat, {"bbox": {"left": 1.0, "top": 2.0, "right": 10.0, "bottom": 20.0}})
    assert cub.read_cub2010(fx.root, "train")[0][0].boxes.tolist() == [[0.0, 1.0, 10.0, 20.0]]

    fx = _copy(built["stanford-dogs"], tmp_path / "c")
    first = fx.split("train")[0]
    xml = fx.root / "Annotation" / first.relpath[len("Images/"):-len(".jpg")]
    xml.write_text("<annotation><object><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax>"
                   "<ymax>20</ymax></bndbox></object></annotation>")
    assert stanford.read_dogs(fx.root, "train")[0][0].boxes.tolist() == [[0, 1, 10, 20]]

    fx = _copy(built["stanford-cars"], tmp_path / "d")
    annos = np.empty((1, 1), dtype=[(f, object) for f in (
        "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
    annos[0, 0] = (1, 2, 10, 20, 3, "00001.jpg")
    scipy.io.savemat(fx.root / "devkit" / "cars_train_annos.mat", {"annotations": annos})
    (rec,), _ = stanford.read_cars(fx.root, "train")
    assert rec.boxes.tolist() == [[0.0, 1.0, 10.0, 20.0]] and rec.label == 2


def test_augmentation_does_not_depend_on_the_worker_count(built: dict[str, Fixture]) -> None:
    """Each sample's random crop and flip are drawn from (epoch seed, index): the same
    batches with 0 or 2 decoding processes, and again for the same seed."""
    fx = built["stanford-dogs"]
    cpu = torch.device("cpu")

    def epoch(workers: int, seed: int) -> list[torch.Tensor]:
        s = _build(fx, "train", num_workers=workers)
        s.dataset.reseed(seed)  # type: ignore[attr-defined]
        return [b["image"] for b in data.loader(s, 4, cpu, persistent=False)]

    a, b, c = epoch(0, 7), epoch(2, 7), epoch(0, 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_folder_photos_follow_their_exif_orientation(tmp_path: Path) -> None:
    """A phone photo stored 40 x 60 with orientation 6 (turn 90 degrees) is a 60 x 40
    picture, and its boxes are drawn on the picture."""
    from PIL import Image

    for split in ("train", "test"):
        folder = tmp_path / split / "cat"
        folder.mkdir(parents=True)
        img = Image.new("RGB", (60, 40), (128, 128, 128))
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(folder / "a.jpg", exif=exif)
    (tmp_path / "boxes.csv").write_text("path,x1,y1,x2,y2\ntest/cat/a.jpg,0,0,40,60\n")
    s = data.build("folder", "test", data_dir=tmp_path, image_size=32, test_crop="none")
    assert s.dataset.sizes == [(60, 40)]  # type: ignore[attr-defined]
    assert s.dataset[0]["orig_size"].tolist() == [60, 40]

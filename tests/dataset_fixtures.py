"""Tiny datasets in the on-disk layouts of the official archives, for loader tests.

Each ``make_*`` builder writes a few images into ``root`` (the folder the official archives were
extracted into) and returns a :class:`Fixture` saying what a loader should find there. Images are
uniform grey (128, 128, 128) with one solid rectangle per object covering exactly its box: pure
red in colour images (find it with ``R - G > 128``), white (255) in ``"L"`` images. JPEGs use
quality 95 without chroma subsampling, so decoded edges are within a pixel. ``FixtureImage.boxes``
are xyxy pixels of the image file with x2/y2 exclusive (the object covers columns x1 .. x2 - 1);
``dataset_dir / relpath`` is the image file. Per dataset:

* ``cub200-2011``: ``dataset_dir = root / "CUB_200_2011"``. Index files name images relative to
  ``images/`` (``relpath`` adds that prefix); ``bounding_boxes.txt`` holds ``x y width height``
  (floats, 0-based corner): ``boxes = (x, y, x + width, y + height)``.
* ``cub200-2010``: ``images.tgz``, ``lists.tgz`` and ``annotations.tgz`` unpack ``images/``,
  ``lists/`` and ``annotations-mat/`` straight into ``root``: ``dataset_dir = root``.
  ``lists/{train,test,files}.txt`` name images relative to ``images/``. Each
  ``annotations-mat/<class>/<stem>.mat`` has the struct ``bbox`` (``left, top, right, bottom``,
  doubles; ``loadmat(f)["bbox"][0][0]``), a uint8 mask ``seg`` of the image's size,
  ``wikipedia_url`` and ``flickr_url``. MATLAB 1-based inclusive:
  ``boxes = (left - 1, top - 1, right, bottom)``.
* ``stanford-dogs``: ``images.tar``, ``annotation.tar`` and ``lists.tar`` unpack ``Images/``,
  ``Annotation/`` and ``{file,train,test}_list.mat`` into ``root``: ``dataset_dir = root``. The
  lists hold ``file_list`` and ``annotation_list`` (cell columns: object arrays (N, 1) whose
  ``item[0][0]`` is the path relative to ``Images/`` / ``Annotation/``) and ``labels`` (float64,
  (N, 1), 1-based), sorted by class then name. Annotations are VOC XML without extension, one
  ``<object>`` per dog, 1-based inclusive: ``boxes = (xmin - 1, ymin - 1, xmax, ymax)``.
  ``classes`` are the ``Images/`` folder names (``n02085620-Chihuahua``, ...).
* ``stanford-cars``: ``cars_train/``, ``cars_test/`` and ``devkit/`` in ``root``, and the
  separately published ``cars_test_annos_withlabels.mat`` beside them in ``root`` (torchvision's
  ``StanfordCars`` reads it there, below its ``root / "stanford_cars"``): ``dataset_dir = root``,
  ``relpath = "cars_train/00001.jpg"``. ``annotations`` is a struct row with fields ``bbox_x1,
  bbox_y1, bbox_x2, bbox_y2, class, fname`` (no ``class`` in ``devkit/cars_test_annos.mat``;
  uint8/uint16; 1-based class); ``devkit/cars_meta.mat`` holds the cell row ``class_names``. The
  devkit README says "Min/Max x-value of the bounding box, in pixels" (MATLAB, 1-based inclusive):
  ``boxes = (bbox_x1 - 1, bbox_y1 - 1, bbox_x2, bbox_y2)``.
* ``cifar10`` / ``cifar100``: ``dataset_dir = root / "cifar-10-batches-py"`` or
  ``root / "cifar-100-python"``; protocol-2 pickles whose keys and strings are Python 2 ``str``
  like the originals (``encoding="latin1"`` gives ``"data"``, ``encoding="bytes"`` ``b"data"``).
  ``relpath = f"{batch_file}#{row}"``, train order ``data_batch_1`` .. ``data_batch_5``. Each
  32x32 image has a red rectangle but ``boxes = ()``; ``classes`` are all real (fine) names.
* ``folder``: ``dataset_dir = root``, ``{train,test}/<class>/*`` in ``ImageFolder`` order, and
  with ``with_boxes`` a ``boxes.csv`` (``path,x1,y1,x2,y2``, path relative to root, one row per
  object, integer pixels like ``boxes``); without it ``boxes = ()`` though objects are drawn.
* ``imagenet``: Kaggle's ImageNet Object Localization Challenge unpacks ``ILSVRC/`` and
  ``LOC_synset_mapping.txt`` / ``LOC_val_solution.csv`` into ``root``: ``dataset_dir = root``.
  The mapping holds 1000 ``<wnid> <names>`` lines in index order (here three real wnids, then
  made-up ``n99...`` ones). Images: ``ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG`` and
  ``ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<8 digits>.JPEG``; VOC XML (``<annotation>`` with
  ``folder``, ``filename`` (the stem), ``source/database``, ``size``, ``segmented`` and per object
  ``name`` (the wnid), ``pose``, ``truncated``, ``difficult``, ``bndbox``) in
  ``ILSVRC/Annotations/CLS-LOC/val/<stem>.xml`` for every validation image and
  ``.../train/<wnid>/<stem>.xml`` for every other training image (the others have
  ``boxes = ()``). VOC boxes are 1-based inclusive: ``boxes = (xmin - 1, ymin - 1, xmax, ymax)``.
  ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, rows in no particular order, the
  string repeating ``<wnid> xmin ymin xmax ymax`` (the XML's numbers). The test split is the
  validation set, by name; train is by class folder, then name.
* ``svhn``: ``dataset_dir = root`` with ``train_32x32.mat``, ``test_32x32.mat`` and
  ``extra_32x32.mat``: ``X`` uint8 (32, 32, 3, N), ``y`` uint8 (N, 1) in 1..10, 10 standing for the
  digit 0 (``label = y % 10``). ``relpath = f"{file}#{column}"``; the train split is train then
  extra. No boxes.
* ``caltech256``: ``256_ObjectCategories.tar`` unpacks ``256_ObjectCategories/`` into ``root``:
  ``dataset_dir = root / "256_ObjectCategories"``, ``<NNN>.<name>/<NNN>_<NNNN>.jpg`` with
  ``NNNN`` from 0001, and ``257.clutter/`` (never in a split). ``classes`` are the names after the
  dot; the label is ``NNN - 1``. There is no official split: the fixture's is the documented draw
  (``caltech_split``) for its ``seed`` and ``per_class``. No boxes.
* ``compcars`` / ``compcars-make``: ``data.zip`` unpacks ``data/`` into ``root``:
  ``dataset_dir = root``, ``relpath = "data/image/<make id>/<model id>/<year>/<name>.jpg"``
  (``<year>`` may be ``unknown``), ``data/train_test_split/classification/{train,test}.txt``
  listing paths relative to ``data/image/`` (in no particular order), one
  ``data/label/<same path>.txt`` per image (viewpoint, box count, then ``x1 y1 x2 y2`` 1-based
  inclusive: ``boxes = (x1 - 1, y1 - 1, x2, y2)``) and ``data/misc/make_model_name.mat`` with cell
  columns ``make_names`` and ``model_names`` indexed by id. Labels index the distinct model (or
  make) ids of the split files, ascending; ``classes`` are their names.
* ``voc2012``: ``VOCtrainval_11-May-2012.tar`` unpacks ``VOCdevkit/VOC2012/`` into ``root``:
  ``dataset_dir = root / "VOCdevkit" / "VOC2012"``, ``relpath = "JPEGImages/<id>.jpg"``, ids
  ``<year>_<6 digits>``. ``ImageSets/Main/{train,val,trainval}.txt`` list the ids (train split:
  ``train``, test split: ``val``) and ``ImageSets/Main/<class>_<set>.txt`` say ``<id> <mark>``
  with the mark -1 (no object of the class), 1 (an object) or 0 (only difficult ones), right
  aligned to two characters. ``Annotations/<id>.xml``: ``folder``, ``filename``, ``source``,
  ``size``, ``segmented`` and per object ``name``, ``pose``, ``truncated``, ``occluded``,
  ``bndbox`` (1-based inclusive: ``boxes = (xmin - 1, ymin - 1, xmax, ymax)``), ``difficult``.
  Multi-label: ``labels`` (the classes, sorted), ``object_labels`` and ``difficult`` per box;
  ``label`` is the largest box's class (the first on a tie).
* ``celeba``: ``dataset_dir = root / "celeba"`` (torchvision's ``root`` is ``root``),
  ``relpath = "img_align_celeba/<NNNNNN>.jpg"`` (178 x 218 px). ``list_attr_celeba.txt``: the
  count, the 40 names, then ``<image>`` and 40 values -1 / 1, each right aligned to two
  characters; ``list_eval_partition.txt``: ``<image> <0, 1 or 2>`` (train, validation, test);
  ``list_bbox_celeba.txt`` (count, ``image_id x_1 y_1 width height``, rows),
  ``list_landmarks_align_celeba.txt`` (count, the 10 coordinate names, rows) and
  ``identity_CelebA.txt`` (``<image> <identity>``) hold random values. ``labels`` are the
  attributes an image has (1), ``label`` the first of them (0 for none); ``boxes = ()``.
* ``diagset10x``: DiagSet-A as its authors publish it (the layout
  ``diagset-a-container/container.py`` reads): ``dataset_dir = root / "DiagSet-A"`` with
  ``partitions/DiagSet-A.2/{train,validation,test}.csv`` (a ``scan_id`` column, scans in
  no particular order), ``distributions/S/10x/<scan>.json`` (``{label: count}`` for all
  nine labels) and ``blobs/S/10x/<scan>/<label>/<k>.npy``, uint8 ``[n, H, W, 3]`` random
  patches (40 x 40 here; 256 x 256 in the dataset), one folder per label and scan (empty
  when the scan has no patch of it). Labels ``BG T N A R1 R2 R3 R4 R5``; ``classes`` are
  all but ``BG``, whose patches are in no split, nor are the validation scans'.
  ``relpath = "blobs/S/10x/<scan>/<label>/<k>.npy#<row>"``; each split by scan id, label
  (that order), blob name, row. No boxes.

``python -m tests.dataset_fixtures`` builds every fixture and re-reads it independently.
"""

from __future__ import annotations

import csv
import pickle
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io
from PIL import Image

Box = tuple[float, float, float, float]
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
DOG_CLASSES = ("n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog")
CAR_CLASSES = ("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012")
FOLDER_CLASSES = ("bird", "cat", "dog")
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
CIFAR100_CLASSES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
CIFAR100_COARSE = """aquatic_mammals fish flowers food_containers fruit_and_vegetables
household_electrical_devices household_furniture insects large_carnivores
large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores
medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1
vehicles_2""".split()
CIFAR10_USED = (0, 3, 9)
CIFAR100_USED = {3: 8, 30: 0, 99: 13}  # fine label -> its official coarse label


@dataclass(frozen=True)
class FixtureImage:
    """One image of a fixture, as a loader should report it."""

    relpath: str
    split: str
    label: int
    boxes: tuple[Box, ...]
    size: tuple[int, int]
    mode: str
    #: multi-label datasets: every class of the image (sorted), each box's class and its
    #: ``difficult`` mark (VOC)
    labels: tuple[int, ...] = ()
    object_labels: tuple[int, ...] = ()
    difficult: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Fixture:
    """A dataset written to disk: where it is and what it holds."""

    name: str
    root: Path
    dataset_dir: Path
    classes: tuple[str, ...]
    images: tuple[FixtureImage, ...]

    def split(self, name: str) -> list[FixtureImage]:
        """The images of split ``name`` ("train" or "test"), in official order."""
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}")
        return [im for im in self.images if im.split == name]


def _paint(rng: random.Random, path: Path | None, mode: str = "RGB", n_obj: int = 1,
           size: tuple[int, int] | None = None) -> tuple[tuple[int, int], tuple[Box, ...], Any]:
    """Draws ``n_obj`` side-by-side objects on grey; saves to ``path`` (JPEG unless .png)."""
    h, w = size or (0, 0)
    while size is None and abs(h - w) < 8:
        h, w = rng.randint(40, 120), rng.randint(80 if n_obj > 1 else 40, 120)
    margin, col, boxes = 1 if size else 2, w // max(n_obj, 1), []
    for i in range(n_obj):
        bw, bh = rng.randint(max(6, col // 4), col // 2), rng.randint(max(6, h // 4), h // 2)
        x1 = rng.randint(i * col + margin, (i + 1) * col - margin - bw)
        y1 = rng.randint(margin, h - margin - bh)
        boxes.append((x1, y1, x1 + bw, y1 + bh))
    img = Image.new("L", (w, h), 128) if mode == "L" else Image.new("RGB", (w, h), (128,) * 3)
    for b in boxes:
        img.paste(255 if mode == "L" else (255, 0, 0), b)
    img = img.convert(mode)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".png":
            img.save(path)
        else:
            img.save(path, quality=95, subsampling=0)
    return (h, w), tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in boxes), img


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def blank_png(path: Path, width: int, height: int) -> Path:
    """Writes a black 1-bit greyscale PNG of any size, row by row: a few KB even for a
    decompression bomb (16000 x 16000, over twice PIL's ``Image.MAX_IMAGE_PIXELS``) that
    ``Image.new`` would first build in memory (a byte per pixel)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    pack = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed bits
    idat = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _cell(strings: list[str], column: bool = True) -> np.ndarray:
    """A MATLAB cell array of strings: an object array of shape (N, 1) or (1, N)."""
    out = np.empty((len(strings), 1) if column else (1, len(strings)), dtype=object)
    out.flat[:] = strings
    return out


#: (train, test) images per class of the builders' defaults
PER_CLASS = (3, 2)


def _splits(rng: random.Random, per_class: tuple[int, int] = PER_CLASS) -> list[str]:
    """``per_class`` train and test images of a class, interleaved."""
    n_train, n_test = per_class
    return rng.sample(["train"] * n_train + ["test"] * n_test, n_train + n_test)


def make_cub2011(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes CUB-200-2011 (3 classes of 3 train + 2 test images, one greyscale).

    Args:
        root: Folder ``CUB_200_2011.tgz`` was extracted into.

    Returns:
        The fixture, images in ``images.txt`` (id) order.
    """
    rng, ds = random.Random(2011), Path(root) / "CUB_200_2011"
    rows, images = [], []
    for label, cls in enumerate(CUB_CLASSES):
        stem = "_".join(p.capitalize() for p in cls[4:].split("_"))
        for k, split in enumerate(_splits(rng, per_class)):
            name = f"{cls}/{stem}_{rng.randint(1, 140):04d}_{rng.randint(1, 900000)}.jpg"
            mode = "L" if (label, k) == (1, 0) else "RGB"
            size, boxes, _ = _paint(rng, ds / "images" / name, mode)
            x1, y1, x2, y2 = boxes[0]
            rows.append((name, label + 1, int(split == "train"),
                         f"{x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}"))
            images.append(FixtureImage(f"images/{name}", split, label, boxes, size, mode))
    for col, fname in enumerate(["images", "image_class_labels", "train_test_split",
                                 "bounding_boxes"]):
        _write(ds / f"{fname}.txt", [f"{i} {row[col]}" for i, row in enumerate(rows, 1)])
    _write(ds / "classes.txt", [f"{i} {cls}" for i, cls in enumerate(CUB_CLASSES, 1)])
    return Fixture("cub200-2011", Path(root), ds, CUB_CLASSES, tuple(images))


def make_cub2010(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes Caltech-UCSD Birds 200 (2010): 3 classes of 3 train + 2 test images.

    Args:
        root: Folder ``images.tgz``, ``lists.tgz`` and ``annotations.tgz`` were extracted into.

    Returns:
        The fixture, each split in the order of ``lists/<split>.txt``.
    """
    rng, ds = random.Random(2010), Path(root)
    per: dict[str, list[FixtureImage]] = {"train": [], "test": []}
    for label, cls in enumerate(CUB_CLASSES):
        for split in _splits(rng, per_class):
            stem = f"{cls[4:]}_{rng.randint(1, 60):04d}_{rng.randint(10**8, 4 * 10**9)}"
            size, boxes, _ = _paint(rng, ds / "images" / cls / f"{stem}.jpg")
            x1, y1, x2, y2 = (int(v) for v in boxes[0])
            seg = np.zeros(size, np.uint8)
            seg[y1:y2, x1:x2] = 1
            bbox = {"left": x1 + 1.0, "top": y1 + 1.0, "right": x2 * 1.0, "bottom": y2 * 1.0}
            (ds / "annotations-mat" / cls).mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(ds / "annotations-mat" / cls / f"{stem}.mat", {
                "bbox": bbox, "seg": seg, "wikipedia_url": f"http://en.wikipedia.org/wiki/{cls[4:]}",
                "flickr_url": f"http://www.flickr.com/photos/{stem.rsplit('_', 1)[1]}"})
            per[split].append(FixtureImage(f"images/{cls}/{stem}.jpg", split, label, boxes, size,
                                           "RGB"))
    for split, ims in per.items():
        _write(ds / "lists" / f"{split}.txt", [im.relpath[7:] for im in ims])
    _write(ds / "lists" / "files.txt", sorted(im.relpath[7:] for im in per["train"] + per["test"]))
    _write(ds / "lists" / "classes.txt", list(CUB_CLASSES))
    return Fixture("cub200-2010", Path(root), ds, CUB_CLASSES, tuple(per["train"] + per["test"]))


def _xml(tag: str, body: Any, depth: int = 0) -> str:
    """Tab-indented XML as in the Stanford Dogs annotations; a list body holds (tag, body)."""
    pad = "\t" * depth
    if not isinstance(body, list):
        return f"{pad}<{tag}>{body}</{tag}>\n"
    return f"{pad}<{tag}>\n{''.join(_xml(t, b, depth + 1) for t, b in body)}{pad}</{tag}>\n"


def make_stanford_dogs(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes Stanford Dogs (3 breeds of 3 train + 2 test images, one with two dogs).

    Args:
        root: Folder ``images.tar``, ``annotation.tar`` and ``lists.tar`` were extracted into.

    Returns:
        The fixture, each split in the order of ``<split>_list.mat``.
    """
    rng, ds = random.Random(120), Path(root)
    per: dict[str, list[FixtureImage]] = {"train": [], "test": []}
    for label, cls in enumerate(DOG_CLASSES):
        wnid, breed = cls.split("-", 1)
        splits = _splits(rng, per_class)
        stems = sorted(f"{wnid}_{n}" for n in rng.sample(range(1, 13000), len(splits)))
        for k, (split, stem) in enumerate(zip(splits, stems, strict=True)):
            n_obj = 2 if label == 1 and k == splits.index("train") else 1
            (h, w), boxes, _ = _paint(rng, ds / "Images" / cls / f"{stem}.jpg", n_obj=n_obj)
            objects = [("object", [("name", breed), ("pose", "Unspecified"), ("truncated", 0),
                                   ("difficult", 0), ("bndbox", [
                                       ("xmin", int(b[0]) + 1), ("ymin", int(b[1]) + 1),
                                       ("xmax", int(b[2])), ("ymax", int(b[3]))])]) for b in boxes]
            _write(ds / "Annotation" / cls / stem, [_xml("annotation", [
                ("folder", wnid[1:]), ("filename", stem),
                ("source", [("database", "ImageNet database")]),
                ("size", [("width", w), ("height", h), ("depth", 3)]), ("segment", 0),
                *objects]).rstrip("\n")])
            per[split].append(FixtureImage(f"Images/{cls}/{stem}.jpg", split, label, boxes,
                                           (h, w), "RGB"))
    every = sorted(per["train"] + per["test"], key=lambda im: im.relpath)
    for name, ims in [*per.items(), ("file", every)]:
        scipy.io.savemat(ds / f"{name}_list.mat", {
            "file_list": _cell([im.relpath[7:] for im in ims]),
            "annotation_list": _cell([im.relpath[7:-4] for im in ims]),
            "labels": np.array([[im.label + 1.0] for im in ims])})
    return Fixture("stanford-dogs", Path(root), ds, DOG_CLASSES, tuple(per["train"] + per["test"]))


def _uint(v: int) -> np.ndarray:
    return np.array([[v]], dtype=np.uint8 if v < 256 else np.uint16)


def _car_annotations(ims: list[FixtureImage], with_class: bool) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", *(["class"] if with_class else []),
              "fname"]
    out = np.empty((1, len(ims)), dtype=[(f, object) for f in fields])
    for j, im in enumerate(ims):
        x1, y1, x2, y2 = (int(v) for v in im.boxes[0])
        cls = [_uint(im.label + 1)] if with_class else []
        out[0, j] = (_uint(x1 + 1), _uint(y1 + 1), _uint(x2), _uint(y2), *cls, im.relpath[-9:])
    return out


def make_stanford_cars(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes Stanford Cars (3 classes of 3 train + 2 test images, one greyscale).

    Args:
        root: Folder the three archives and ``cars_test_annos_withlabels.mat`` went into.

    Returns:
        The fixture, each split in annotation (file name) order.
    """
    rng, ds = random.Random(196), Path(root)
    images = []
    for split, n in [("train", per_class[0]), ("test", per_class[1])]:
        labels = rng.sample([c for c in range(len(CAR_CLASSES)) for _ in range(n)], 3 * n)
        for i, label in enumerate(labels, 1):
            rel, mode = f"cars_{split}/{i:05d}.jpg", "L" if (split, i) == ("test", 2) else "RGB"
            size, boxes, _ = _paint(rng, ds / rel, mode)
            images.append(FixtureImage(rel, split, label, boxes, size, mode))
    train, test = images[: 3 * per_class[0]], images[3 * per_class[0] :]
    (ds / "devkit").mkdir(parents=True, exist_ok=True)
    for path, ims, with_class in [(ds / "devkit" / "cars_train_annos.mat", train, True),
                                  (ds / "devkit" / "cars_test_annos.mat", test, False),
                                  (ds / "cars_test_annos_withlabels.mat", test, True)]:
        scipy.io.savemat(path, {"annotations": _car_annotations(ims, with_class)})
    scipy.io.savemat(ds / "devkit" / "cars_meta.mat",
                     {"class_names": _cell(list(CAR_CLASSES), column=False)})
    return Fixture("stanford-cars", Path(root), ds, CAR_CLASSES, tuple(images))


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` with the Python 2 ``str`` opcodes, like the original CIFAR pickles."""

    dispatch: ClassVar[dict[type, Callable[..., None]]] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256  # type: ignore[attr-defined]
                    else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[bytes] = save_bytes


def _dump(path: Path, content: dict[bytes, Any]) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(content)


def make_cifar(root: Path, which: str, scale: int = 1) -> Fixture:
    """Writes the CIFAR-10 or CIFAR-100 pickles; only three classes occur in the labels.

    Args:
        root: Folder the ``cifar-*-python.tar.gz`` archive was extracted into.
        which: ``"cifar10"`` (two rows in each of ``data_batch_1`` .. ``data_batch_5``, three in
            ``test_batch``) or ``"cifar100"`` (six rows in ``train``, four in ``test``).
        scale: multiplies every batch's rows.

    Returns:
        The fixture, rows in file order.
    """
    if which not in ("cifar10", "cifar100"):
        raise ValueError(f"unknown CIFAR variant {which!r}")
    c10 = which == "cifar10"
    rng = random.Random(10 if c10 else 100)
    ds = Path(root) / ("cifar-10-batches-py" if c10 else "cifar-100-python")
    ds.mkdir(parents=True, exist_ok=True)
    used, names = list(CIFAR10_USED if c10 else CIFAR100_USED), (
        CIFAR10_CLASSES if c10 else CIFAR100_CLASSES)
    batches = [(f"data_batch_{i}", "train", 2, f"training batch {i} of 5") for i in range(1, 6)]
    batches = [*batches, ("test_batch", "test", 3, "testing batch 1 of 1")] if c10 else [
        ("train", "train", 6, "training batch 1 of 1"), ("test", "test", 4, "testing batch 1 of 1")]
    images: list[FixtureImage] = []
    for fname, split, n0, batch_label in batches:
        n = n0 * scale
        labels = [used[(i + len(images)) % 3] for i in range(n)]
        data = np.stack([np.asarray(_paint(rng, None, size=(32, 32))[2]).transpose(2, 0, 1).ravel()
                         for _ in range(n)])
        files = [f"{names[lb]}_s_{rng.randint(1, 99999):06d}.png".encode() for lb in labels]
        _dump(ds / fname, {b"batch_label": batch_label.encode(), b"labels": labels, b"data": data,
                           b"filenames": files} if c10 else {
            b"filenames": files, b"batch_label": batch_label.encode(), b"fine_labels": labels,
            b"coarse_labels": [CIFAR100_USED[lb] for lb in labels], b"data": data})
        images += [FixtureImage(f"{fname}#{r}", split, lb, (), (32, 32), "RGB")
                   for r, lb in enumerate(labels)]
    encoded = [s.encode() for s in names]
    _dump(ds / ("batches.meta" if c10 else "meta"), {
        b"num_cases_per_batch": 10000, b"label_names": encoded, b"num_vis": 3072} if c10 else {
        b"fine_label_names": encoded, b"coarse_label_names": [s.encode() for s in CIFAR100_COARSE]})
    return Fixture(which, Path(root), ds, tuple(names), tuple(images))


def make_folder(root: Path, with_boxes: bool = True,
                per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes ``root/{train,test}/<class>/*`` (3 classes of 3 train + 2 test) and ``boxes.csv``.

    Holds an RGBA PNG (train/cat), a CMYK JPEG (test/dog), a two-object image (train/dog) and
    an image without any object (train/bird).

    Args:
        root: The dataset folder.
        with_boxes: Also write ``root/boxes.csv``.

    Returns:
        The fixture, in ``torchvision.datasets.ImageFolder`` order.
    """
    rng, ds = random.Random(7), Path(root)
    special = {("train", "cat", 1): ("RGBA", 1, "png"), ("test", "dog", 0): ("CMYK", 1, "jpg"),
               ("train", "dog", 2): ("RGB", 2, "jpg"), ("train", "bird", 0): ("RGB", 0, "png")}
    images, rows = [], []
    for split, n in [("train", per_class[0]), ("test", per_class[1])]:
        for label, cls in enumerate(FOLDER_CLASSES):
            for k in range(n):
                mode, n_obj, ext = special.get((split, cls, k), ("RGB", 1, "jpg"))
                rel = f"{split}/{cls}/{cls}_{k:03d}.{ext}"
                size, boxes, _ = _paint(rng, ds / rel, mode, n_obj)
                rows += [[rel, *(int(v) for v in b)] for b in boxes]
                images.append(FixtureImage(rel, split, label, boxes if with_boxes else (), size,
                                           mode))
    if with_boxes:
        with open(ds / "boxes.csv", "w", newline="") as f:
            csv.writer(f).writerows([["path", "x1", "y1", "x2", "y2"], *rows])
    return Fixture("folder", ds, ds, FOLDER_CLASSES, tuple(images))


IMAGENET_CLASSES = (("n01440764", "tench, Tinca tinca"),
                    ("n01443537", "goldfish, Carassius auratus"),
                    ("n01484850", "great white shark, white shark, man-eater, man-eating shark, "
                                  "Carcharodon carcharias"))


def imagenet_synsets() -> list[tuple[str, str]]:
    """The fixture's 1000 (wnid, names): three real ones first, then made-up wnids that
    sort after them."""
    return [*IMAGENET_CLASSES, *((f"n99{i:06d}", f"class {i}") for i in range(3, 1000))]


def _voc(folder: str, stem: str, size: tuple[int, int], objects: list[tuple[str, Box]]) -> str:
    """An ILSVRC CLS-LOC annotation: VOC XML, boxes 1-based inclusive."""
    return _xml("annotation", [
        ("folder", folder), ("filename", stem),
        ("source", [("database", "ILSVRC_2012")]),
        ("size", [("width", size[1]), ("height", size[0]), ("depth", 3)]), ("segmented", 0),
        *(("object", [("name", name), ("pose", "Unspecified"), ("truncated", 0),
                      ("difficult", 0),
                      ("bndbox", [("xmin", int(b[0]) + 1), ("ymin", int(b[1]) + 1),
                                  ("xmax", int(b[2])), ("ymax", int(b[3]))])])
          for name, b in objects)])


def make_imagenet(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes Kaggle's ImageNet Object Localization tree: 3 of the 1000 classes, with
    ``per_class`` train and validation images each; XML for every validation image (one
    with two objects) and for every other training image.

    Args:
        root: Folder the Kaggle archive was extracted into.

    Returns:
        The fixture: train images by class, then name; validation images by name.
    """
    rng, ds = random.Random(2012), Path(root)
    synsets = imagenet_synsets()
    _write(ds / "LOC_synset_mapping.txt", [f"{w} {n}" for w, n in synsets])
    data, annos = ds / "ILSVRC" / "Data" / "CLS-LOC", ds / "ILSVRC" / "Annotations" / "CLS-LOC"
    images: list[FixtureImage] = []
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        stems = sorted(f"{wnid}_{n}" for n in rng.sample(range(1, 40000), per_class[0]))
        for k, stem in enumerate(stems):
            mode = "L" if (label, k) == (2, 0) else "RGB"
            size, boxes, _ = _paint(rng, data / "train" / wnid / f"{stem}.JPEG", mode)
            if k % 2 == 0:
                (annos / "train" / wnid).mkdir(parents=True, exist_ok=True)
                (annos / "train" / wnid / f"{stem}.xml").write_text(
                    _voc(wnid, stem, size, [(wnid, b) for b in boxes]))
            images.append(FixtureImage(f"ILSVRC/Data/CLS-LOC/train/{wnid}/{stem}.JPEG", "train",
                                       label, boxes if k % 2 == 0 else (), size, mode))
    labels = [k for k in range(3) for _ in range(per_class[1])]
    rng.shuffle(labels)
    rows, val = [], []
    for i, label in enumerate(labels):
        stem, wnid = f"ILSVRC2012_val_{i + 1:08d}", IMAGENET_CLASSES[label][0]
        size, boxes, _ = _paint(rng, data / "val" / f"{stem}.JPEG", n_obj=1 + (i == 1))
        (annos / "val").mkdir(parents=True, exist_ok=True)
        (annos / "val" / f"{stem}.xml").write_text(_voc("val", stem, size,
                                                       [(wnid, b) for b in boxes]))
        rows.append([stem, " ".join(f"{wnid} {int(b[0]) + 1} {int(b[1]) + 1} {int(b[2])} "
                                    f"{int(b[3])}" for b in boxes)])
        val.append(FixtureImage(f"ILSVRC/Data/CLS-LOC/val/{stem}.JPEG", "test", label, boxes,
                                size, "RGB"))
    rng.shuffle(rows)  # the published file is not in image order
    with open(ds / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "PredictionString"], *rows])
    return Fixture("imagenet", ds, ds, tuple(n for _, n in synsets), tuple(images + val))


#: the 10 SVHN classes are the digits; y holds 10 for the digit 0
SVHN_CLASSES = tuple(str(d) for d in range(10))


def make_svhn(root: Path, per_class: tuple[int, int] = PER_CLASS, extra: bool = True) -> Fixture:
    """Writes ``train_32x32.mat`` (10 x ``per_class[0]`` digits), ``test_32x32.mat``
    (10 x ``per_class[1]``) and with ``extra`` ``extra_32x32.mat`` (5 x ``per_class[0]``):
    ``X`` uint8 32 x 32 x 3 x N, ``y`` uint8 N x 1 in 1..10 (10: the digit 0), as
    torchvision's ``SVHN`` reads them.

    Returns:
        The fixture: train then extra images (``relpath = f"{file}#{column}"``), then test.
    """
    rng, ds = random.Random(32), Path(root)
    ds.mkdir(parents=True, exist_ok=True)
    images: list[FixtureImage] = []
    files = [("train_32x32.mat", "train", 10 * per_class[0]),
             ("extra_32x32.mat", "train", 5 * per_class[0]) if extra else None,
             ("test_32x32.mat", "test", 10 * per_class[1])]
    for fname, split, n in [f for f in files if f is not None]:
        ys = [rng.randint(1, 10) for _ in range(n)]
        x = np.stack([np.asarray(_paint(rng, None, size=(32, 32))[2]) for _ in range(n)], axis=3)
        scipy.io.savemat(ds / fname, {"X": x, "y": np.array(ys, np.uint8)[:, None]})
        images += [FixtureImage(f"{fname}#{i}", split, y % 10, (), (32, 32), "RGB")
                   for i, y in enumerate(ys)]
    return Fixture("svhn", ds, ds, SVHN_CLASSES, tuple(images))


CALTECH_CLASSES = ("001.ak47", "002.american-flag", "003.backpack")


def caltech_split(n: int, number: int, seed: int, per_class: tuple[int, int]
                  ) -> tuple[list[int], list[int]]:
    """The documented draw: the class's sorted names permuted by
    ``default_rng([seed, number])``, the first ``per_class[0]`` train, the next
    ``per_class[1]`` test (indices into the sorted names, ascending)."""
    order = np.random.default_rng([seed, number]).permutation(n).tolist()
    return sorted(order[:per_class[0]]), sorted(order[per_class[0]:sum(per_class)])


def make_caltech256(root: Path, per_class: tuple[int, int] = (60, 25), seed: int = 0,
                    spare: tuple[int, int, int] = (3, 0, 1)) -> Fixture:
    """Writes ``256_ObjectCategories/`` with 3 classes of ``sum(per_class) + spare[k]``
    images and ``257.clutter``; the fixture's split is the draw of ``split_seed=seed``
    with ``train_per_class, test_per_class = per_class``.

    Returns:
        The fixture: each split by class, then name (clutter and unused images absent).
    """
    rng, ds = random.Random(256), Path(root) / "256_ObjectCategories"
    per: dict[str, list[FixtureImage]] = {"train": [], "test": []}
    for label, cls in enumerate([*CALTECH_CLASSES, "257.clutter"]):
        n = sum(per_class) + (spare[label] if label < 3 else -sum(per_class) + 3)
        num = cls[:3]
        for i in rng.sample(range(1, n + 1), n):  # written out of order
            _paint(rng, ds / cls / f"{num}_{i:04d}.jpg", size=(24, 32))
        if label == 3:
            continue
        train, test = caltech_split(n, label + 1, seed, per_class)
        for split, picked in (("train", train), ("test", test)):
            per[split] += [FixtureImage(f"{cls}/{num}_{i + 1:04d}.jpg", split, label, (),
                                        (24, 32), "RGB") for i in picked]
    return Fixture("caltech256", Path(root), ds, tuple(c[4:] for c in CALTECH_CLASSES),
                   tuple(per["train"] + per["test"]))


#: (make id, model id, year) of the fixture's CompCars models; make / model names by id
COMPCARS_MODELS = ((78, 12, "2014"), (5, 163, "2011"), (78, 1, "unknown"))
COMPCARS_MAKES = {5: "BMW", 78: "Audi"}
COMPCARS_MODEL_NAMES = {1: "Audi A4L", 12: "Audi Q5", 163: "BMW 3 Series"}


def make_compcars(root: Path, per_class: tuple[int, int] = PER_CLASS,
                  task: str = "model") -> Fixture:
    """Writes CompCars' web-nature ``data/``: 3 models of 2 makers with ``per_class``
    train and test images, their label files, the classification split files (lines in
    a shuffled order) and ``misc/make_model_name.mat`` (cell columns ``make_names``,
    163, and ``model_names``, 200, indexed by id).

    Args:
        root: Folder ``data.zip`` was extracted into.
        task: ``"model"`` (labels: model ids ascending) or ``"make"`` (make ids ascending).

    Returns:
        The fixture, each split in the order of its split file.
    """
    rng, ds = random.Random(431), Path(root)
    d = ds / "data"
    ids = sorted({m[1] if task == "model" else m[0] for m in COMPCARS_MODELS})
    entries = []
    for make, model, year in COMPCARS_MODELS:
        for split in _splits(rng, per_class):
            rel = f"{make}/{model}/{year}/{rng.getrandbits(56):014x}.jpg"
            size, boxes, _ = _paint(rng, d / "image" / rel)
            x1, y1, x2, y2 = (int(v) for v in boxes[0])
            _write(d / "label" / Path(rel).with_suffix(".txt"),
                   [str(rng.choice([-1, 1, 2, 3, 4, 5])), "1", f"{x1 + 1} {y1 + 1} {x2} {y2}"])
            entries.append(FixtureImage(rel, split, ids.index(model if task == "model" else make),
                                        boxes, size, "RGB"))
    rng.shuffle(entries)
    for split in ("train", "test"):
        _write(d / "train_test_split" / "classification" / f"{split}.txt",
               [im.relpath for im in entries if im.split == split])
    makes = [COMPCARS_MAKES.get(i, f"make {i}") for i in range(1, 164)]
    models = [COMPCARS_MODEL_NAMES.get(i, f"model {i}") for i in range(1, 201)]
    (d / "misc").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(d / "misc" / "make_model_name.mat",
                     {"make_names": _cell(makes), "model_names": _cell(models)})
    names = COMPCARS_MODEL_NAMES if task == "model" else COMPCARS_MAKES
    images = [FixtureImage(f"data/image/{im.relpath}", im.split, im.label, im.boxes, im.size,
                           im.mode) for im in entries]
    return Fixture("compcars" if task == "model" else "compcars-make", ds, ds,
                   tuple(names[i] for i in ids),
                   tuple(im for split in ("train", "test") for im in images if im.split == split))


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
#: the classes the VOC fixture's objects are drawn from
VOC_USED = (7, 11, 14)  # cat, dog, person


def make_voc2012(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes PASCAL VOC 2012 (``VOCtrainval_11-May-2012.tar``): ``3 * per_class`` train and
    val images of one to three objects each (cats, dogs and people; one image with two
    objects of a class, some objects marked difficult, one class of one image difficult
    only).

    Args:
        root: Folder the archive was extracted into (``VOCdevkit/VOC2012`` below it).

    Returns:
        The fixture: the train split is ``train.txt``, the test split ``val.txt``, each
        in id order. ``label`` is the class of the largest object (the first on a tie).
    """
    rng, ds = random.Random(2012_05), Path(root) / "VOCdevkit" / "VOC2012"
    n_train, n_test = (3 * k for k in per_class)
    splits = ["train"] * n_train + ["test"] * n_test
    ids = sorted(f"{2007 + n % 5}_{n:06d}" for n in rng.sample(range(8000), len(splits)))
    rng.shuffle(splits)
    images = []
    for k, (stem, split) in enumerate(zip(ids, splits, strict=True)):
        n_obj = 1 + k % 3
        size, boxes, _ = _paint(rng, ds / "JPEGImages" / f"{stem}.jpg", n_obj=n_obj)
        classes = [rng.choice(VOC_USED) for _ in boxes]
        if k == 2:  # two objects of one class
            classes[1] = classes[0]
        difficult = [k % 4 == 3 and j == n_obj - 1 for j in range(n_obj)]
        area = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        objects = [("object", [("name", VOC_CLASSES[c]), ("pose", "Unspecified"),
                               ("truncated", 0), ("occluded", 0),
                               ("bndbox", [("xmin", int(b[0]) + 1), ("ymin", int(b[1]) + 1),
                                           ("xmax", int(b[2])), ("ymax", int(b[3]))]),
                               ("difficult", int(d))])
                   for c, b, d in zip(classes, boxes, difficult, strict=True)]
        (ds / "Annotations").mkdir(parents=True, exist_ok=True)
        (ds / "Annotations" / f"{stem}.xml").write_text(_xml("annotation", [
            ("folder", "VOC2012"), ("filename", f"{stem}.jpg"),
            ("source", [("database", "The VOC2008 Database"),
                        ("annotation", "PASCAL VOC2008"), ("image", "flickr")]),
            ("size", [("width", size[1]), ("height", size[0]), ("depth", 3)]),
            ("segmented", 0), *objects]))
        images.append(FixtureImage(f"JPEGImages/{stem}.jpg", split,
                                   classes[area.index(max(area))], boxes, size, "RGB",
                                   tuple(sorted(set(classes))), tuple(classes),
                                   tuple(difficult)))
    main = ds / "ImageSets" / "Main"
    for image_set, want in (("train", ("train",)), ("val", ("test",)),
                            ("trainval", ("train", "test"))):
        ims = [im for im in images if im.split in want]
        _write(main / f"{image_set}.txt", [Path(im.relpath).stem for im in ims])
        for c, cls in enumerate(VOC_CLASSES):  # 1: an object, 0: difficult ones only
            marks = [max((-1, *(0 if d else 1 for o, d in zip(im.object_labels, im.difficult,
                                                             strict=True) if o == c)))
                     for im in ims]
            _write(main / f"{cls}_{image_set}.txt",
                   [f"{Path(im.relpath).stem} {m:2d}" for im, m in zip(ims, marks, strict=True)])
    return Fixture("voc2012", Path(root), ds, VOC_CLASSES,
                   tuple(im for split in ("train", "test") for im in images if im.split == split))


CELEBA_ATTRIBUTES = """5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs
Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin
Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache
Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns
Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace
Wearing_Necktie Young""".split()
CELEBA_LANDMARKS = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
                    "leftmouth_y rightmouth_x rightmouth_y")


def make_celeba(root: Path, per_class: tuple[int, int] = PER_CLASS) -> Fixture:
    """Writes CelebA as torchvision reads it: ``celeba/img_align_celeba/<NNNNNN>.jpg``
    (178 x 218 px) and the five ``.txt`` files, ``3 * per_class`` images in partitions 0
    (train) and 2 (test) and two in 1 (validation, in no split), interleaved. One image has
    no attribute (all -1); the face is a red rectangle but ``boxes = ()``.

    Args:
        root: Folder holding ``celeba/`` (torchvision's ``root``).

    Returns:
        The fixture, each split in file order; ``labels`` are the attributes the image
        has and ``label`` the first of them (0 for none).
    """
    rng, ds = random.Random(202599), Path(root) / "celeba"
    n_train, n_test = (3 * k for k in per_class)
    parts = ["0"] * n_train + ["2"] * n_test + ["1"] * 2
    rng.shuffle(parts)
    images, attrs, boxes, marks, ids = [], [], [], [], []
    for k, part in enumerate(parts):
        name = f"{k + 1:06d}.jpg"
        size, _, _ = _paint(rng, ds / "img_align_celeba" / name, size=(218, 178))
        has = ([rng.random() < 0.3 for _ in CELEBA_ATTRIBUTES] if k != parts.index("0")
               else [False] * len(CELEBA_ATTRIBUTES))
        attrs.append(f"{name} " + " ".join(f"{1 if h else -1:2d}" for h in has))
        boxes.append(f"{name} {rng.randint(0, 200):5d} {rng.randint(0, 200):3d} "
                     f"{rng.randint(50, 400):3d} {rng.randint(50, 500):3d}")
        marks.append(f"{name} " + " ".join(f"{rng.randint(60, 120):3d}" for _ in range(10)))
        ids.append(f"{name} {rng.randint(1, 10177)}")
        present = tuple(j for j, h in enumerate(has) if h)
        if part != "1":
            images.append(FixtureImage(f"img_align_celeba/{name}",
                                       "train" if part == "0" else "test",
                                       present[0] if present else 0, (), size, "RGB",
                                       present))
    n = len(parts)
    _write(ds / "list_attr_celeba.txt", [str(n), " ".join(CELEBA_ATTRIBUTES), *attrs])
    _write(ds / "list_eval_partition.txt",
           [f"{k + 1:06d}.jpg {p}" for k, p in enumerate(parts)])
    _write(ds / "list_bbox_celeba.txt", [str(n), "image_id x_1 y_1 width height", *boxes])
    _write(ds / "list_landmarks_align_celeba.txt", [str(n), CELEBA_LANDMARKS, *marks])
    _write(ds / "identity_CelebA.txt", ids)
    return Fixture("celeba", Path(root), ds, tuple(CELEBA_ATTRIBUTES),
                   tuple(im for split in ("train", "test") for im in images if im.split == split))


DIAGSET_LABELS = ("BG", "T", "N", "A", "R1", "R2", "R3", "R4", "R5")
#: each partition's scans as its file lists them (one id all digits, a leading zero)
DIAGSET_SCANS = {"train": ("S0117", "0042", "S0209"), "validation": ("S0031", "S0305"),
                 "test": ("S0150", "S0088")}


def make_diagset(root: Path, per_class: tuple[int, int] = PER_CLASS, image_size: int = 40,
                 magnification: int = 10) -> Fixture:
    """Writes DiagSet-A at one magnification: ``per_class`` train and test patches of
    each of the eight classes spread at random over the partition's scans, in blobs of
    one or two patches; every scan also has ``BG`` patches, and the validation scans
    two patches of each label.

    Returns:
        The fixture (``image_size`` x ``image_size`` patches), each split in the
        reader's order.
    """
    import json

    rng, ds = np.random.default_rng(10), Path(root) / "DiagSet-A"
    level, s = f"{magnification}x", image_size
    images: list[tuple[tuple[str, int, str, int], FixtureImage]] = []
    wanted = {"train": per_class[0], "validation": 2, "test": per_class[1]}
    for part, scans in DIAGSET_SCANS.items():
        _write(ds / "partitions" / "DiagSet-A.2" / f"{part}.csv", ["scan_id", *scans])
        counts = {scan: dict.fromkeys(DIAGSET_LABELS, 0) for scan in scans}
        for lab in DIAGSET_LABELS:
            for _ in range(wanted[part] if lab != "BG" else len(scans) + 1):
                counts[scans[int(rng.integers(len(scans)))]][lab] += 1
        for scan in scans:
            _write(ds / "distributions" / "S" / level / f"{scan}.json",
                   [json.dumps(counts[scan])])
            for li, lab in enumerate(DIAGSET_LABELS):
                folder = ds / "blobs" / "S" / level / scan / lab
                folder.mkdir(parents=True, exist_ok=True)
                left, k = counts[scan][lab], 0
                while left:
                    n = min(left, int(rng.integers(1, 3)))
                    np.save(folder / f"{k}.npy", rng.integers(0, 256, (n, s, s, 3), np.uint8))
                    if lab != "BG" and part != "validation":
                        images += [((scan, li, f"{k}.npy", row), FixtureImage(
                            f"blobs/S/{level}/{scan}/{lab}/{k}.npy#{row}",
                            "train" if part == "train" else "test", li - 1, (), (s, s),
                            "RGB")) for row in range(n)]
                    left, k = left - n, k + 1
    images.sort(key=lambda item: (item[1].split != "train", item[0]))
    return Fixture("diagset10x", Path(root), ds, DIAGSET_LABELS[1:],
                   tuple(im for _, im in images))


BUILDERS: dict[str, Callable[[Path], Fixture]] = {
    "cub200-2011": make_cub2011,
    "cub200-2010": make_cub2010,
    "stanford-dogs": make_stanford_dogs,
    "stanford-cars": make_stanford_cars,
    "cifar10": partial(make_cifar, which="cifar10"),
    "cifar100": partial(make_cifar, which="cifar100"),
    "folder": make_folder,
    "imagenet": make_imagenet,
    "svhn": make_svhn,
    "caltech256": make_caltech256,
    "compcars": make_compcars,
    "compcars-make": partial(make_compcars, task="make"),
    "voc2012": make_voc2012,
    "celeba": make_celeba,
    "diagset10x": make_diagset,
}


def _read_back(fx: Fixture) -> tuple[list[str], dict[str, list[tuple[str, int, tuple]]]]:
    """Classes and per-split ``(relpath, label, boxes)`` read from the files alone."""
    import xml.etree.ElementTree as ET

    d, mat = fx.dataset_dir, scipy.io.loadmat
    out: dict[str, list[tuple[str, int, tuple]]] = {"train": [], "test": []}
    if fx.name == "cub200-2011":
        cols = [[ln.split()[1:] for ln in (d / f"{f}.txt").read_text().splitlines()] for f in (
            "images", "image_class_labels", "train_test_split", "bounding_boxes")]
        for [name], [lb], [tr], bb in zip(*cols, strict=True):
            x, y, w, h = map(float, bb)
            out["train" if tr == "1" else "test"].append(
                (f"images/{name}", int(lb) - 1, ((x, y, x + w, y + h),)))
        return [ln.split()[1] for ln in (d / "classes.txt").read_text().splitlines()], out
    if fx.name == "cub200-2010":
        classes = (d / "lists" / "classes.txt").read_text().split()
        for split in out:
            for name in (d / "lists" / f"{split}.txt").read_text().split():
                m = mat(d / "annotations-mat" / name.replace(".jpg", ".mat"))
                b = [float(m["bbox"][0][0][k][0][0]) for k in ("left", "top", "right", "bottom")]
                with Image.open(d / "images" / name) as img:
                    assert m["seg"].shape == img.size[::-1] and m["seg"].dtype == np.uint8
                out[split].append((f"images/{name}", classes.index(name.split("/")[0]),
                                   ((b[0] - 1, b[1] - 1, b[2], b[3]),)))
        return classes, out
    if fx.name == "stanford-dogs":
        for split in out:
            m = mat(d / f"{split}_list.mat")
            assert m["labels"].dtype == np.float64
            assert m["labels"].shape == m["annotation_list"].shape == (len(m["file_list"]), 1)
            for f, a, lb in zip(m["file_list"], m["annotation_list"], m["labels"], strict=True):
                xml = ET.parse(d / "Annotation" / a[0][0]).getroot()
                with Image.open(d / "Images" / f[0][0]) as img:
                    assert img.size == (int(xml.findtext("size/width", "")),
                                        int(xml.findtext("size/height", "")))
                boxes = tuple(tuple(float(o.findtext(f"bndbox/{k}", "")) - k.endswith("min")
                                    for k in ("xmin", "ymin", "xmax", "ymax"))
                              for o in xml.iter("object"))
                out[split].append((f"Images/{f[0][0]}", int(lb[0]) - 1, boxes))
        return sorted(p.name for p in (d / "Images").iterdir()), out
    if fx.name == "stanford-cars":
        assert "class" not in mat(d / "devkit" / "cars_test_annos.mat")["annotations"].dtype.names
        for split, f in [("train", d / "devkit" / "cars_train_annos.mat"),
                         ("test", d / "cars_test_annos_withlabels.mat")]:
            for a in mat(f, squeeze_me=True)["annotations"]:
                box = tuple(float(a[k]) - k.endswith("1") for k in (
                    "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
                out[split].append((f"cars_{split}/{a['fname']}", int(a["class"]) - 1, (box,)))
        return mat(d / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"].tolist(), out
    if fx.name == "imagenet":
        wnids = [ln.split()[0] for ln in (d / "LOC_synset_mapping.txt").read_text().splitlines()]
        annos = d / "ILSVRC" / "Annotations" / "CLS-LOC"
        for split, pattern in (("train", "train/*/*.JPEG"), ("test", "val/*.JPEG")):
            for p in sorted((d / "ILSVRC" / "Data" / "CLS-LOC").glob(pattern)):
                xml = annos / p.relative_to(d / "ILSVRC" / "Data" / "CLS-LOC").with_suffix(".xml")
                objs = list(ET.parse(xml).getroot().iter("object")) if xml.exists() else []
                label = (wnids.index(p.parent.name) if split == "train"
                         else wnids.index(objs[0].findtext("name", "")))
                out[split].append((p.relative_to(d).as_posix(), label, tuple(
                    tuple(float(o.findtext(f"bndbox/{k}", "")) - k.endswith("min")
                          for k in ("xmin", "ymin", "xmax", "ymax")) for o in objs)))
        names = [ln.split(" ", 1)[1] for ln in (d / "LOC_synset_mapping.txt").read_text()
                 .splitlines()]
        return names, out
    if fx.name == "caltech256":
        for label, cls in enumerate(sorted(p.name for p in d.iterdir())[:-1]):
            files = sorted(p.name for p in (d / cls).iterdir())
            train, test = caltech_split(len(files), label + 1, 0, (60, 25))
            for split, picked in (("train", train), ("test", test)):
                out[split] += [(f"{cls}/{files[i]}", label, ()) for i in picked]
        return [p.name[4:] for p in sorted(d.iterdir())][:-1], out
    if fx.name == "voc2012":
        for split, image_set in (("train", "train"), ("test", "val")):
            for stem in (d / "ImageSets" / "Main" / f"{image_set}.txt").read_text().split():
                objs = list(ET.parse(d / "Annotations" / f"{stem}.xml").getroot().iter("object"))
                boxes = tuple(tuple(float(o.findtext(f"bndbox/{k}", "")) - k.endswith("min")
                                    for k in ("xmin", "ymin", "xmax", "ymax")) for o in objs)
                areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
                names = [o.findtext("name", "") for o in objs]
                out[split].append((f"JPEGImages/{stem}.jpg",
                                   VOC_CLASSES.index(names[areas.index(max(areas))]), boxes))
        return list(VOC_CLASSES), out
    if fx.name == "celeba":
        lines = (d / "list_attr_celeba.txt").read_text().splitlines()
        has = {ln.split()[0]: [v == "1" for v in ln.split()[1:]] for ln in lines[2:]}
        for ln in (d / "list_eval_partition.txt").read_text().splitlines():
            name, part = ln.split()
            if part != "1":
                flags = has[name]
                out["train" if part == "0" else "test"].append(
                    (f"img_align_celeba/{name}", flags.index(True) if any(flags) else 0, ()))
        return lines[1].split(), out
    if fx.name.startswith("compcars"):
        col = 1 if fx.name == "compcars" else 0
        lists = {split: (d / "data" / "train_test_split" / "classification" / f"{split}.txt")
                 .read_text().split() for split in out}
        ids = sorted({int(p.split("/")[col]) for v in lists.values() for p in v})
        names = mat(d / "data" / "misc" / "make_model_name.mat", squeeze_me=True)[
            "model_names" if col else "make_names"]
        for split, paths in lists.items():
            for p in paths:
                lines = (d / "data" / "label" / p.replace(".jpg", ".txt")).read_text().split("\n")
                x1, y1, x2, y2 = map(float, lines[2].split())
                out[split].append((f"data/image/{p}", ids.index(int(p.split("/")[col])),
                                   ((x1 - 1, y1 - 1, x2, y2),)))
        return [names[i - 1] for i in ids], out
    boxes_of: dict[str, list[tuple[float, ...]]] = {}
    if (d / "boxes.csv").exists():
        with open(d / "boxes.csv") as f:
            for row in csv.DictReader(f):
                boxes_of.setdefault(row["path"], []).append(
                    tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2")))
    classes = sorted(p.name for p in (d / "train").iterdir())
    for split in out:
        for label, cls in enumerate(classes):
            for p in sorted((d / split / cls).iterdir()):
                rel = p.relative_to(d).as_posix()
                out[split].append((rel, label, tuple(boxes_of.get(rel, ()))))
    return classes, out


def _objects_match(rgb: np.ndarray, mode: str, boxes: tuple[Box, ...]) -> bool:
    """The object pixels found in ``rgb`` agree with ``boxes`` up to one pixel at the edges."""
    from scipy import ndimage

    a = rgb.astype(int)
    found = a[..., 0] > 192 if mode == "L" else a[..., 0] - a[..., 1] > 128
    want = np.zeros(found.shape, bool)
    for x1, y1, x2, y2 in boxes:
        want[int(y1):int(y2), int(x1):int(x2)] = True
    return bool((ndimage.binary_erosion(want) <= found).all()
                and (found <= ndimage.binary_dilation(want)).all())


def _check_cifar(fx: Fixture) -> None:
    c10, got = fx.name == "cifar10", []
    with open(fx.dataset_dir / ("batches.meta" if c10 else "meta"), "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    names = [s.decode() for s in meta[b"label_names" if c10 else b"fine_label_names"]]
    assert names == list(fx.classes) and len(names) == (10 if c10 else 100)
    assert c10 or len(meta[b"coarse_label_names"]) == 20
    for fname in dict.fromkeys(im.relpath.split("#")[0] for im in fx.images):
        with open(fx.dataset_dir / fname, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        labels = batch[b"labels" if c10 else b"fine_labels"]
        assert c10 or batch[b"coarse_labels"] == [CIFAR100_USED[lb] for lb in labels]
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (len(labels), 3072)
        for row, (flat, lb) in enumerate(zip(batch[b"data"], labels, strict=True)):
            rgb = flat.reshape(3, 32, 32).transpose(1, 2, 0)
            ys, xs = np.nonzero(rgb[..., 0].astype(int) - rgb[..., 1] > 128)
            box = (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
            assert _objects_match(rgb, "RGB", (box,)) and len(xs) > 20
            got.append((f"{fname}#{row}", lb))
    assert got == [(im.relpath, im.label) for im in fx.images]


def _check_svhn(fx: Fixture) -> None:
    got = []
    for fname in ("train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"):
        m = scipy.io.loadmat(fx.dataset_dir / fname)
        assert m["X"].dtype == np.uint8 and m["X"].shape[:3] == (32, 32, 3)
        assert m["y"].shape == (m["X"].shape[3], 1) and set(m["y"].ravel()) <= set(range(1, 11))
        got += [(f"{fname}#{i}", int(y) % 10) for i, y in enumerate(m["y"].ravel())]
    assert got == [(im.relpath, im.label) for im in fx.images]


def _check_diagset(fx: Fixture) -> None:
    """Re-reads the fixture as the authors' container does: a partition's scans from
    its ``scan_id`` column, each scan's blobs per label in sorted order, its
    distribution file's counts."""
    import json

    d, got = fx.dataset_dir, []
    for split, part in (("train", "train"), ("test", "test")):
        with open(d / "partitions" / "DiagSet-A.2" / f"{part}.csv", newline="") as f:
            scans = sorted(row["scan_id"] for row in csv.DictReader(f))
        for scan in scans:
            counts = json.loads((d / "distributions" / "S" / "10x" / f"{scan}.json").read_text())
            for li, lab in enumerate(DIAGSET_LABELS):
                folder = d / "blobs" / "S" / "10x" / scan / lab
                blobs = [np.load(p) for p in sorted(folder.iterdir())]
                assert sum(len(b) for b in blobs) == counts[lab], (scan, lab)
                for p, b in zip(sorted(folder.iterdir()), blobs, strict=True):
                    assert b.dtype == np.uint8 and b.ndim == 4 and b.shape[3] == 3
                    got += [(split, f"{p.relative_to(d).as_posix()}#{r}", li - 1, b.shape[1:3])
                            for r in range(len(b)) if lab != "BG"]
    assert got == [(im.split, im.relpath, im.label, im.size) for im in fx.images]


def _check(fx: Fixture, pixels: bool = True) -> None:
    """Compares ``fx`` with what independent readers find in its files."""
    if fx.name.startswith("cifar"):
        return _check_cifar(fx)
    if fx.name == "svhn":
        return _check_svhn(fx)
    if fx.name == "diagset10x":
        return _check_diagset(fx)
    classes, found = _read_back(fx)
    assert classes == list(fx.classes), (classes, fx.classes)
    for split in ("train", "test"):
        assert found[split] == [(im.relpath, im.label, im.boxes) for im in fx.split(split)], split
        for im in fx.split(split):
            h, w = im.size
            assert all(0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h for b in im.boxes)
            with Image.open(fx.dataset_dir / im.relpath) as img:
                assert (img.mode, img.size) == (im.mode, (w, h)), im
                rgb = np.asarray(img.convert("RGB"))
            # drawn, unlisted
            unboxed = not im.boxes and fx.name in ("imagenet", "caltech256", "celeba")
            assert not pixels or unboxed or _objects_match(rgb, im.mode, im.boxes), im
    return None


def _check_torchvision(tmp: Path) -> None:
    """torchvision's own readers accept the CIFAR, ImageFolder and Stanford Cars fixtures."""
    from torchvision import datasets

    def same(fx: Fixture, split: str, ds: Any, samples: list[tuple[str, int]]) -> None:
        assert ds.classes == list(fx.classes) and [
            (Path(p).relative_to(fx.dataset_dir).as_posix(), t) for p, t in samples] == [
            (im.relpath, im.label) for im in fx.split(split)], (fx.name, split)
        assert all(ds[i][0].mode == "RGB" for i in range(len(ds)))

    for which, base in [("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)]:
        fx = make_cifar(tmp / f"tv-{which}", which)  # md5 sums differ from the real files
        unchecked = type("Unchecked", (base,), {"_check_integrity": lambda self: True,
                                                "meta": {**base.meta, "md5": None}})
        for split in ("train", "test"):
            ds = unchecked(str(fx.root), train=split == "train")
            paths = [str(fx.dataset_dir / im.relpath) for im in fx.split(split)]
            same(fx, split, ds, list(zip(paths, ds.targets, strict=True)))
    fx = make_folder(tmp / "tv-folder")
    for split in ("train", "test"):
        ds = datasets.ImageFolder(str(fx.root / split))
        same(fx, split, ds, ds.samples)
    fx = make_stanford_cars(tmp / "tv-cars" / "stanford_cars")
    for split in ("train", "test"):
        ds = datasets.StanfordCars(str(tmp / "tv-cars"), split=split)
        same(fx, split, ds, ds._samples)


if __name__ == "__main__":
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        built = {}
        for name, build in BUILDERS.items():
            start = time.perf_counter()
            built[name] = build(Path(tmp) / name)
            took = time.perf_counter() - start
            assert build(Path(tmp) / f"{name}-again").images == built[name].images and took < 1
            _check(built[name])
            print(f"{name:14s} {len(built[name].images):3d} images {took * 1000:5.0f} ms  ok")
        assert any(len(im.boxes) == 2 for im in built["stanford-dogs"].images)
        modes = {im.mode for fx in built.values() for im in fx.images}
        assert modes == {"RGB", "L", "RGBA", "CMYK"}, modes
        bare = make_folder(Path(tmp) / "folder-bare", with_boxes=False)
        assert not (bare.root / "boxes.csv").exists() and all(not im.boxes for im in bare.images)
        assert all((bare.root / im.relpath).read_bytes() == (built["folder"].root / im.relpath)
                   .read_bytes() for im in bare.images)
        _check(bare, pixels=False)
        _check_torchvision(Path(tmp))
        print("torchvision CIFAR10/CIFAR100, ImageFolder and StanfordCars read the fixtures: ok")

"""Datasets read from image files on disk: records, validation, decoding and transforms.

Each dataset family module parses its own index files into :class:`Record` s (the
image's path, 0-based label, every annotated box in pixels of the image file) and
hands them to :func:`image_split`, which checks every record before any work starts,
and returns a :class:`Split` whose samples are decoded on demand (in the loader's
worker processes when ``num_workers`` > 0).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import inspect
import json
import os
import re
import sys
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.config import require
from harness.data.core import DATASETS, DatasetInfo, Split
from harness.errors import UserError, clip, shown

#: ImageNet statistics: the normalisation of every photo dataset (pretrained backbones)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: a box may overhang the image by this many pixels (annotation rounding) and is then
#: clipped to it; further out it is an error
BOX_SLACK = 1.0
#: the largest image side a photo dataset is resized to (the papers use 224-448)
MAX_SIDE = 4096
#: the ImageNet test protocol: resize the shorter side to size / 0.875, centre crop
CROP_FRACTION = 0.875
TRAIN_CROPS = ("random-resized", "random", "none")
TEST_CROPS = ("center", "none")


def _msabn_augment() -> tuple[list[v2.Transform], list[v2.Transform]]:
    """MSABN Sec. 4.2's "color jitter, gaussian blur and noise, and solarize" (on uint8,
    then on float images). The paper gives no magnitudes; chosen: jitter 0.4 / 0.4 /
    0.4 / 0.1, blur 5 px with sigma in [0.1, 2] half the time, solarize above 128 a fifth
    of the time, noise sigma 0.05 half the time."""
    return ([v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
             v2.RandomApply([v2.GaussianBlur(5, (0.1, 2.0))], p=0.5),
             v2.RandomSolarize(128, p=0.2)],
            [v2.RandomApply([v2.GaussianNoise(sigma=0.05)], p=0.5)])


def _jitter_augment() -> tuple[list[v2.Transform], list[v2.Transform]]:
    """Colour jitter alone (MSABN Sec. 4.1 on DiagSet-10x: "color jitter", no
    magnitudes given); chosen: the magnitudes of the ``msabn`` set, 0.4 / 0.4 / 0.4 /
    0.1."""
    return [v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], []


#: extra photometric training augmentations by name: (uint8 steps, float steps)
EXTRA_AUGMENT: dict[str, Callable[[], tuple[list[v2.Transform], list[v2.Transform]]]] = {
    "msabn": _msabn_augment,
    "jitter": _jitter_augment,
}


class DataError(UserError):
    """A dataset file is missing or malformed (the message names the file)."""


@dataclass(frozen=True)
class Record:
    """One image of a split.

    Attributes:
        path: the image file.
        label: 0-based class index.
        boxes: float32 ``[K,4]`` xyxy pixel boxes of the annotated objects in the image
            file (x2, y2 exclusive); ``K`` = 0 when the image has none.
        where: the index file (and line) the record comes from, for error messages.
        box_source: the file its boxes come from, for error messages.
    """

    path: Path
    label: int
    boxes: np.ndarray
    where: str = ""
    box_source: str = ""


def no_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def find_root(data_dir: Path, name: str, marker: str, subdirs: Sequence[str]) -> Path:
    """The dataset's own folder: ``data_dir`` itself when it holds ``marker``, else the
    first of ``data_dir/<subdir>`` that does.

    Raises:
        DataError: no candidate holds ``marker``.
    """
    for cand in (data_dir, *(data_dir / s for s in subdirs)):
        if (cand / marker).exists():
            return cand
    where = " or ".join(str(Path(s) / marker) for s in ("", *subdirs))
    raise DataError(f"{data_dir}: no {name} here (expected {where})")


def path_text(path: Path | str) -> str:
    """``path`` for a message: bytes of its name that are not UTF-8 (kept by Python as
    lone surrogates, which no UTF-8 stream can print) shown as ``\\xe9`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_name(path: Path) -> DataError | None:
    """The error for a file or folder whose name is not valid UTF-8 (None when it is).

    Such a name cannot be printed, stored or hashed as text (Python keeps its bad bytes
    as lone surrogates), so it is refused with the bytes escaped and a request to
    rename it."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return DataError(f"{path_text(path.parent)}: the name {shown(os.fsencode(path.name))} "
                         "is not valid UTF-8; rename it")
    return None


def read_text(path: Path, what: str = "file") -> str:
    """The text of a UTF-8 file; a leading byte-order mark (as some editors save) is
    dropped.

    Raises:
        DataError: the file is missing or unreadable, or not UTF-8 (naming the line
            and the first bad byte).
    """
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror or err})") from None
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = blob.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{blob[err.start]:02x}); "
                        "save the file as UTF-8") from None


def read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a whitespace-separated UTF-8 index file (a byte-order mark is
    allowed), with 1-based line numbers."""
    text = read_text(path, "index file")
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def id_table(path: Path, columns: int, convert: Callable[[str], Any] = str
             ) -> dict[str, list[Any]]:
    """``<id> <value> ...`` lines as id -> values (``columns`` values, converted)."""
    out: dict[str, list[Any]] = {}
    for n, parts in read_lines(path):
        if len(parts) != columns + 1:
            raise DataError(f"{path}:{n}: expected an id and {columns} value(s), got "
                            f"{shown(' '.join(parts))}")
        try:
            out[parts[0]] = [convert(p) for p in parts[1:]]
        except ValueError:
            raise DataError(f"{path}:{n}: not a number in {shown(' '.join(parts))}") from None
    return out


def voc_objects(path: Path) -> tuple[list[str], np.ndarray]:
    """Every ``<object>``'s ``<name>`` and ``<bndbox>`` of a PASCAL-VOC XML file, the
    boxes as xyxy pixel boxes: VOC's 1-based inclusive xmin..xmax become
    [xmin - 1, xmax)."""
    if not path.is_file():
        raise DataError(f"{path}: missing annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:  # a wrong encoding too: says the line and column
        raise DataError(f"{path}: not valid XML ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror or err})") from None
    names, boxes = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        try:
            vals = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: an <object> without a numeric <bndbox> "
                            "(xmin, ymin, xmax, ymax)") from None
        names.append((obj.findtext("name") or "").strip())
        boxes.append([vals[0] - 1, vals[1] - 1, vals[2], vals[3]])
    if not boxes:
        raise DataError(f"{path}: no <object> with a box")
    return names, np.array(boxes, np.float32)


def voc_boxes(path: Path) -> np.ndarray:
    """The boxes of :func:`voc_objects`."""
    return voc_objects(path)[1]


#: EXIF orientations that swap width and height (rotations by 90 degrees)
_TURNED = (5, 6, 7, 8)


@contextlib.contextmanager
def _quiet_pil() -> Iterator[None]:
    """PIL's warnings silenced: its ``DecompressionBombWarning`` (said once per file, in
    our words, by :func:`check_records`), a palette's transparency, a damaged EXIF
    block, ... would otherwise reach stderr raw, from every decode, in every loader
    worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:.3g} Mpx"


def _bomb(path: Path, err: Exception) -> DataError:
    """PIL's ``DecompressionBombError`` (an image over twice ``Image.MAX_IMAGE_PIXELS``)
    as a one-line error naming the file and its size."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    size = _megapixels(int(found.group(1))) if found else "too many pixels"
    return DataError(f"{path}: {size}, over the {_megapixels(limit)} PIL opens (a possible "
                     "decompression bomb); downscale or remove the image")


def _failure(err: Exception) -> str:
    """What PIL said, on one line (its type unless an OSError, PIL's usual one)."""
    return clip(str(err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}",
                200)


def image_size_of(path: Path, where: str = "", exif: bool = False) -> tuple[int, int]:
    """(H, W) of an image file from its header (no decoding); with ``exif``, as its
    EXIF orientation turns it.

    Raises:
        DataError: the file is missing, is not an image PIL reads, or has more pixels
            than PIL opens (twice ``Image.MAX_IMAGE_PIXELS``: a decompression bomb).
            Whatever PIL raises or warns about never escapes raw.
    """
    if not path.is_file():
        raise DataError(f"{where or path}: names {path}, which does not exist")
    try:
        with _quiet_pil(), Image.open(path) as im:
            w, h = im.size
            if exif and im.getexif().get(0x0112) in _TURNED:
                w, h = h, w
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from None
    except Exception as err:  # PIL raises many kinds on a damaged header
        raise DataError(f"{path}: not a readable image ({_failure(err)})") from None
    return h, w


#: files already warned about as large (:func:`warn_if_large`): once per process
_WARNED_LARGE: set[Path] = set()


def warn_if_large(path: Path, h: int, w: int) -> None:
    """One ``warning:`` line (once per file and process) for an image over PIL's
    decompression-bomb warning size (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx) but under
    the refusal size (twice that): it is used, but every use decodes it in full."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or h * w <= limit or path in _WARNED_LARGE:
        return
    _WARNED_LARGE.add(path)
    print(f"warning: {path_text(path)}: {w}x{h} px ({_megapixels(h * w)}), over PIL's "
          f"{_megapixels(limit)} decompression-bomb warning size; each use decodes it in "
          "full (slow, memory-hungry): consider downscaling it", file=sys.stderr)


#: while set (``collecting()``), record problems are listed here instead of raised,
#: and the records concerned are left out (``--check-data``)
_PROBLEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "problems", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    """Within the block, per-record problems are collected, not raised."""
    problems: list[str] = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)


def report(err: DataError) -> None:
    """A problem that leaves its file or folder out: raised, or within
    ``collecting()`` listed (and the caller skips what it concerns)."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise err
    problems.append(str(err))


def check_records(records: Sequence[Record], num_classes: int, split: str, name: str,
                  exif: bool = False) -> tuple[list[Record], list[tuple[int, int]]]:
    """Validate every record; returns the records and each image's (H, W).

    Raises:
        DataError: an empty split, a label outside ``[0, num_classes)``, a missing or
            unreadable image, one with more pixels than PIL opens (a decompression
            bomb), a box with x2 <= x1 or y2 <= y1, or a box outside its image by more
            than :data:`BOX_SLACK` pixels. Within ``collecting()`` the per-record
            problems are listed and those records dropped instead.

    An image in PIL's warning band (over ``Image.MAX_IMAGE_PIXELS``, under twice that)
    is kept, with one ``warning:`` line per file (:func:`warn_if_large`).
    """
    if not records:
        raise DataError(f"{name}: the {split} split is empty")
    problems = _PROBLEMS.get()
    kept, sizes = [], []
    for r in records:
        try:
            sizes.append(_check_record(r, num_classes, exif))
        except DataError as err:
            if problems is None:
                raise
            problems.append(str(err))
        else:
            kept.append(r)
    if not kept:
        raise DataError(f"{name}: no usable image in the {split} split")
    return kept, sizes


def _check_record(r: Record, num_classes: int, exif: bool = False) -> tuple[int, int]:
    if not 0 <= r.label < num_classes:
        raise DataError(f"{r.where or r.path}: label {r.label + 1} (1-based) is outside "
                        f"the {num_classes} classes")
    h, w = image_size_of(r.path, r.where, exif)
    warn_if_large(r.path, h, w)
    for box in r.boxes:
        x1, y1, x2, y2 = (float(v) for v in box)
        src = r.box_source or r.where or r.path
        if not np.isfinite(box).all() or x2 <= x1 or y2 <= y1:
            raise DataError(f"{src}: box {_fmt(box)} of {r.path.name} is "
                            "empty (needs x2 > x1 and y2 > y1)")
        if (x1 < -BOX_SLACK or y1 < -BOX_SLACK or x2 > w + BOX_SLACK
                or y2 > h + BOX_SLACK):
            raise DataError(f"{src}: box {_fmt(box)} lies outside "
                            f"{r.path.name} ({w}x{h} px)")
    return h, w


def _fmt(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"


def decode(path: Path, exif: bool = False) -> torch.Tensor:
    """uint8 ``[3,H,W]`` RGB of any image file (grey, palette, RGBA, CMYK, ...); with
    ``exif``, turned as its EXIF orientation says (as photo viewers show it).

    Runs in the loader's worker processes: PIL's warnings are silenced (the header
    check said what matters once) and whatever it raises is a one-line
    :class:`DataError` naming the file (a decompression bomb: with its size)."""
    try:
        with _quiet_pil(), Image.open(path) as im:
            im.load()
            rgb = (ImageOps.exif_transpose(im) if exif else im).convert("RGB")
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from None
    except Exception as err:  # PIL raises many kinds on damaged pixels
        raise DataError(f"{path}: cannot decode the image ({_failure(err)})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)


@dataclass(frozen=True)
class PhotoTransforms:
    """The train and test transforms of a photo dataset, as the papers use them.

    Attributes:
        train: random-resized crop (``random-resized``, the ImageNet recipe), a random
            crop of the image resized to ``resize`` (``random``), or the whole image
            resized to ``size`` x ``size`` (``none``); then an optional horizontal flip.
        test: centre crop of the image resized to ``resize`` (``center``), or the whole
            image resized to ``size`` x ``size`` (``none``).
        resize: shorter side before cropping (default ``size / 0.875``).
        vflip: training also flips top-bottom at random (images without an up, e.g.
            tissue patches).
        width: a non-square input, ``size`` (height) x ``width`` px: the whole image
            resized to it for training and testing (both crops ``none``; ABN Sec. 4.3
            resizes CompCars to 323 x 224 to keep the cars' shape). None: square.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_crop: str = "random-resized"
    test_crop: str = "center"
    resize: int | None = None
    flip: bool = True
    extra_augment: str | None = None
    width: int | None = None
    vflip: bool = False

    def __post_init__(self) -> None:
        if self.extra_augment is not None and self.extra_augment not in EXTRA_AUGMENT:
            raise UserError(f"extra_augment must be one of {', '.join(EXTRA_AUGMENT)}, got "
                            f"{self.extra_augment!r}")
        require("dataset_kwargs", "image_size", self.size, 8, MAX_SIDE, integer=True)
        if self.width is not None:
            require("dataset_kwargs", "width", self.width, 8, MAX_SIDE, integer=True)
            if (self.train_crop, self.test_crop) != ("none", "none"):
                raise UserError("width (a non-square input) resizes the whole image: it "
                                "needs train_crop: none and test_crop: none, got "
                                f"{self.train_crop} / {self.test_crop}")
        if self.train_crop not in TRAIN_CROPS:
            raise UserError(f"train_crop must be one of {', '.join(TRAIN_CROPS)}, got "
                            f"{self.train_crop!r}")
        if self.test_crop not in TEST_CROPS:
            raise UserError(f"test_crop must be one of {', '.join(TEST_CROPS)}, got "
                            f"{self.test_crop!r}")
        if self.resize is not None:
            require("dataset_kwargs", "resize", self.resize, 8, 2 * MAX_SIDE, integer=True)
        if self.resize is not None and self.resize < self.size:
            raise UserError(f"resize ({self.resize}) must be at least image_size "
                            f"({self.size})")

    @property
    def shorter(self) -> int:
        return self.resize or round(self.size / CROP_FRACTION)

    def _tail(self) -> list[v2.Transform]:
        return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def train_transform(self) -> v2.Transform:
        s = self.size
        steps: list[v2.Transform] = {
            "random-resized": [v2.RandomResizedCrop(s, antialias=True)],
            "random": [v2.Resize(self.shorter, antialias=True), v2.RandomCrop(s)],
            "none": [v2.Resize((s, self.width or s), antialias=True)],
        }[self.train_crop]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.vflip:
            steps.append(v2.RandomVerticalFlip())
        extra_u8, extra_float = (EXTRA_AUGMENT[self.extra_augment]() if self.extra_augment
                                 else ([], []))
        tail = self._tail()
        return v2.Compose(steps + extra_u8 + tail[:1] + extra_float + tail[1:])

    def test_transform(self) -> v2.Transform:
        s = self.size
        steps: list[v2.Transform] = (
            [v2.Resize(self.shorter, antialias=True), v2.CenterCrop(s)]
            if self.test_crop == "center" else [v2.Resize((s, self.width or s), antialias=True)])
        return v2.Compose(steps + self._tail())

    def region(self, h: int, w: int) -> tuple[int, int]:
        """(H, W), in pixels of an ``h`` x ``w`` image, of the region the test
        transform shows (where the pointing game's tolerance is measured)."""
        if self.test_crop == "none":
            return h, w
        side = round(self.size * min(h, w) / self.shorter)
        return min(side, h), min(side, w)


class Reseeded:
    """A dataset whose sample i is drawn with its augmentation seeded by (the pass's
    seed, i) once :meth:`reseed` is called: the same images whatever the number of
    loader workers, and a resumed training repeats the uninterrupted one. Subclasses
    implement ``_sample(i)``."""

    epoch_seed: int | None = None

    def reseed(self, seed: int) -> None:
        """Draw the next pass's augmentation of sample i from (``seed``, i)."""
        self.epoch_seed = seed

    def _sample(self, i: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.epoch_seed is None:
            return self._sample(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.epoch_seed + 1_000_003 * i) % 2**63)
            return self._sample(i)


class ImageFiles(Reseeded, Dataset[dict[str, Any]]):
    """Images decoded from files, with labels and boxes, transformed per sample.

    Samples carry ``bbox`` (the union of what the transform leaves of the image's
    objects, NaN without any),
    ``objects`` (each object, NaN rows up to ``max_objects``; only when
    ``max_objects`` > 1) and ``orig_size`` (:meth:`PhotoTransforms.region`).
    """

    def __init__(self, records: Sequence[Record], sizes: Sequence[tuple[int, int]],
                 transform: v2.Transform, photo: PhotoTransforms,
                 max_objects: int, exif: bool = False) -> None:
        self.records, self.sizes = list(records), list(sizes)
        self.transform, self.photo, self.max_objects = transform, photo, max_objects
        self.exif = exif
        #: set per epoch by the trainer: sample i's random augmentation is drawn from
        #: (seed, i), the same in any worker process and after a resume
        self.epoch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def with_transform(self, transform: v2.Transform) -> ImageFiles:
        """The same samples under another transform."""
        return ImageFiles(self.records, self.sizes, transform, self.photo, self.max_objects,
                          self.exif)

    @property
    def labels(self) -> torch.Tensor:
        """``int64 [N]``: each record's label."""
        return torch.tensor([r.label for r in self.records], dtype=torch.long)

    def with_labels(self, labels: torch.Tensor) -> ImageFiles:
        """The same images and boxes with other labels (``int64 [N]``)."""
        records = [dataclasses.replace(r, label=int(v))
                   for r, v in zip(self.records, labels.tolist(), strict=True)]
        return ImageFiles(records, self.sizes, self.transform, self.photo, self.max_objects,
                          self.exif)

    def _sample(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        raw = decode(r.path, self.exif)
        h, w = raw.shape[-2:]
        if (h, w) != self.sizes[i]:
            raise DataError(f"{r.path}: decoded as {w}x{h} px, its header said "
                            f"{self.sizes[i][1]}x{self.sizes[i][0]}")
        img = tv_tensors.Image(raw)
        sample: dict[str, Any] = {"label": r.label, "index": i,
                                  "orig_size": torch.tensor(self.photo.region(h, w))}
        k = len(r.boxes)
        if k:
            boxes = torch.from_numpy(r.boxes).clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # the slack's overhang
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            bxs = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
            img_t, box_t = self.transform(img, bxs)
            moved = box_t.as_subclass(torch.Tensor).float()
            # the union of what is left of each object (a crop may remove some)
            left = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
            keep = moved[left] if left.any() else moved[:1]  # all gone: an empty box
            sample["bbox"] = torch.cat([keep[:, :2].min(0).values, keep[:, 2:].max(0).values])
        else:
            img_t = self.transform(img)
            moved = torch.zeros((0, 4))
            sample["bbox"] = torch.full((4,), float("nan"))
        if self.max_objects > 1:
            objects = torch.full((self.max_objects, 4), float("nan"))
            objects[:k] = moved
            sample["objects"] = objects
        sample["image"] = img_t.as_subclass(torch.Tensor)
        return sample


T = TypeVar("T")


def subset(records: list[T], n: int | None, split: str) -> list[T]:
    """The first ``n`` records of a fixed random order (seed 0), in index order; all
    with ``n`` None."""
    if n is None or n >= len(records):
        return records
    if n <= 0:
        raise UserError(f"n_{split} must be positive, got {n}")
    keep = np.sort(np.random.default_rng(0).permutation(len(records))[:n])
    return [records[int(i)] for i in keep]


def fingerprint(records: Iterable[Record], sizes: Sequence[tuple[int, int]],
                root: Path, extra: dict[str, Any]) -> str:
    """A hash of the split's content: file paths relative to ``root``, labels, boxes,
    image sizes and the dataset options."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for r, size in zip(records, sizes, strict=True):
        try:
            rel = r.path.relative_to(root).as_posix()
        except ValueError:
            rel = r.path.as_posix()
        # the name's bytes: any name hashes (one that is not UTF-8 too), and a UTF-8
        # one as before
        h.update(os.fsencode(rel) + f"|{r.label}|{size}|".encode())
        h.update(np.ascontiguousarray(r.boxes, np.float32).tobytes())
    return h.hexdigest()[:16]


def image_split(records: list[Record], info: DatasetInfo, split: str, root: Path, *,
                photo: PhotoTransforms, augment: bool, n: int | None,
                multi_object: bool = False, exif: bool = False,
                options: dict[str, Any] | None = None) -> Split:
    """A checked :class:`Split` of ``records``: the ``n``-subset, validated, decoded
    per sample under the photo transforms (training ones when ``augment``); ``exif``:
    images are turned as their EXIF orientation says before anything else;
    ``options``: the reader's options (e.g. a split's seed), part of the fingerprint."""
    records, sizes = check_records(subset(records, n, split), info.num_classes, split,
                                   info.name, exif)
    max_objects = max((len(r.boxes) for r in records), default=0) if multi_object else 1
    train_tf = photo.train_transform() if split == "train" and augment else None
    test_tf = photo.test_transform()
    ds = ImageFiles(records, sizes, train_tf or test_tf, photo, max(max_objects, 1), exif)
    # the options (size, crops, subset) are in the checkpoint key already: the
    # fingerprint says which files, labels and boxes
    fp = fingerprint(records, sizes, root, {"split": split, **(options or {})})
    return Split(ds, info, eval_transform=test_tf, fingerprint=fp)


def photo_info(name: str, num_classes: int, photo: PhotoTransforms, has_boxes: bool,
               multi_object: bool = False, label_names: Sequence[str] = ()) -> DatasetInfo:
    """The :class:`DatasetInfo` of a photo dataset at ``photo.size`` px; the pointing
    game's 15 px (TorchRay) apply at the original resolution. ``label_names`` are kept
    when there is one per class."""
    return DatasetInfo(name=name, num_classes=num_classes,
                       image_size=(photo.size, photo.width or photo.size), mean=photo.mean,
                       std=photo.std,
                       has_boxes=has_boxes, pointing_tolerance=15.0,
                       multi_object=multi_object and has_boxes,
                       label_names=tuple(label_names) if len(label_names) == num_classes
                       else ())


#: a family's index reader: (dataset folder, split, **options) -> (records, class names)
Reader = Callable[..., tuple[list[Record], list[str]]]


def register_photo(name: str, *, reader: Reader, marker: str, subdirs: Sequence[str],
                   source: str, has_boxes: bool | None = True, multi_object: bool = False,
                   num_classes: int | None = None, official: tuple[int, int] | None = None,
                   exif: bool = False, version: int = 1,
                   options: dict[str, Any] | None = None,
                   multi_label: bool = False,
                   label_names: Sequence[str] | None = None) -> None:
    """Register photo dataset ``name`` read by ``reader`` from the folder holding
    ``marker`` (``data_dir`` itself or one of ``data_dir/<subdirs>``).

    Args:
        source: where the archive comes from (shown when ``data_dir`` is missing).
        has_boxes: whether the dataset has boxes; None: when any image of the split has.
        num_classes: the dataset's class count when fixed (else ``reader``'s classes).
        official: the official (train, test) sizes (``--dry-run`` without the data).
        exif: apply the images' EXIF orientation (your own photos; the published
            datasets' boxes are in the stored pixels).
        options: the reader's own keyword options and their defaults (dataset options
            beside the transforms'; part of the split's fingerprint).
        multi_label: the reader's records are
            :class:`harness.data.multilabel.MultiRecord` s, every class of each image:
            the samples carry ``labels`` (and ``object_labels``), the info says
            ``multi_label`` (:func:`harness.data.multilabel.multi_label_split`).
        label_names: the classes' names when fixed (``label_names`` in the registry
            entry: column names of per-class results).
    """
    defaults = dict(options or {})

    def factory(split: str, data_dir: Path, image_size: int = 224,
                resize: int | None = None, train_crop: str = "random-resized",
                test_crop: str = "center", flip: bool = True, augment: bool = True,
                extra_augment: str | None = None, width: int | None = None,
                n_train: int | None = None, n_test: int | None = None,
                cache_dir: Path | None = None, **chosen: Any) -> Split:
        unknown = sorted(set(chosen) - set(defaults))
        if unknown:
            raise UserError(f"bad options for dataset {name!r}: no option "
                            f"{', '.join(unknown)}")
        opts = {**defaults, **chosen}
        root = find_root(Path(data_dir), name, marker, subdirs)
        records, classes = reader(root, split, **opts)
        k = num_classes or len(classes)
        photo = PhotoTransforms(image_size, IMAGENET_MEAN, IMAGENET_STD, train_crop,
                                test_crop, resize, flip, extra_augment, width)
        boxed = any(len(r.boxes) for r in records) if has_boxes is None else has_boxes
        info = photo_info(name, k, photo, boxed, multi_object, label_names or classes)
        return image_split(records, info, split, root, photo=photo, augment=augment,
                           n=n_train if split == "train" else n_test,
                           multi_object=multi_object, exif=exif, options=opts)

    # the reader's options as keyword parameters, no others (option checks, --list)
    sig = inspect.signature(factory)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
               for k, v in defaults.items()]
    factory.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    factory.__doc__ = (f"{name}, read from disk ({source}).\n\n"
                       "Args: image_size (crop side), resize (shorter side before the "
                       "crop; default image_size / 0.875), train_crop, test_crop, flip, "
                       "augment (training transforms on the train split), extra_augment "
                       "(a named set of photometric augmentations), width (a "
                       "non-square input: image_size high, width wide, both crops none), "
                       "n_train / "
                       "n_test (a fixed random subset)"
                       + "".join(f", {k} (default {v!r})" for k, v in defaults.items())
                       + ".")
    extra: dict[str, Any] = ({} if official is None
                             else {"official": official, "num_classes": num_classes})
    registered = factory
    if multi_label:  # the factory's own text unchanged: the other datasets' keys too
        from harness.data.multilabel import multi_label_split

        registered = _finished(factory, multi_label_split)
        extra["multi_label"] = True
    if label_names is not None:
        extra["label_names"] = tuple(label_names)
    DATASETS.add(name, registered, on_disk=True, source=source, version=version,
                 test_only=("n_test",), has_boxes=has_boxes, image_size=224, **extra)


def _finished(factory: Callable[..., Split], finish: Callable[[Split], Split]
              ) -> Callable[..., Split]:
    """``factory`` followed by ``finish``, with its signature and doc."""

    def finished(**kwargs: Any) -> Split:
        return finish(factory(**kwargs))

    finished.__signature__ = inspect.signature(factory)  # type: ignore[attr-defined]
    finished.__doc__ = factory.__doc__
    return finished

"""DiagSet-A (prostate tissue patches), in the layout its authors publish and their
container (``diagset-a-container/container.py``) reads, at one magnification; the
``diagset10x`` dataset is MSABN Sec. 4.1's DiagSet-10x.

The dataset's folder ``DiagSet-A/`` holds

* ``blobs/S/<M>x/<scan_id>/<label>/<blob>.npy``: uint8 arrays ``[n, H, W, 3]`` of RGB
  patches (256 x 256 at 10x);
* ``distributions/S/<M>x/<scan_id>.json``: ``{label: count}`` of the scan's patches;
* ``partitions/DiagSet-A.2/{train,validation,test}.csv``: each partition's scans (a
  ``scan_id`` column).

The labels, in the container's order (0..8): ``BG`` scan background (no tissue),
``T`` tissue background, ``N`` normal tissue, ``A`` acquisition artifact, ``R1`` ..
``R5`` cancerous tissue of Gleason grades 1 .. 5. MSABN leaves the background out:
the classes here are the other eight, in that order (0 = ``T`` .. 7 = ``R5``), and
``BG`` folders are never read.

Patches are read from their blobs on demand (memory-mapped), never decoded from image
files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.data.core import DATASETS, Split
from harness.data.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    PhotoTransforms,
    Reseeded,
    find_root,
    photo_info,
    read_text,
    report,
    subset,
)
from harness.errors import UserError, shown

NAME = "diagset10x"
#: the published labels in the container's default numbering (0..8)
DIAGSET_LABELS = ("BG", "T", "N", "A", "R1", "R2", "R3", "R4", "R5")
#: the classes: every label but the scan background (MSABN Sec. 4.1)
DIAGSET_CLASSES = DIAGSET_LABELS[1:]
MAGNIFICATIONS = (40, 20, 10, 5)
PARTITIONS = "DiagSet-A.2"
SOURCE = ("DiagSet-A (the patches, distributions and partitions its authors publish: "
          "github.com/michalkoziarski/DiagSet)")
#: blobs kept memory-mapped at once by each process (file handles stay few)
OPEN_BLOBS = 32


@dataclass(frozen=True)
class Blob:
    """One ``.npy`` file of patches: its path, its patches' class and its shape."""

    path: Path
    label: int
    n: int
    height: int
    width: int


def read_partition(path: Path) -> list[str]:
    """The sorted, distinct scan ids of a partition file's ``scan_id`` column."""
    text = read_text(path, "partition file")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, [])
    names = [h.strip() for h in header]
    if "scan_id" not in names:
        raise DataError(f"{path}: no scan_id column (the header is "
                        f"{shown(','.join(header))})")
    col = names.index("scan_id")
    ids = set()
    for n, row in enumerate(rows, 2):
        if not any(v.strip() for v in row):
            continue
        scan = row[col].strip() if col < len(row) else ""
        if not scan or scan in (".", "..") or "/" in scan or "\\" in scan:
            raise DataError(f"{path}:{n}: {shown(scan)} is not a scan id (a folder name)")
        ids.add(scan)
    if not ids:
        raise DataError(f"{path}: lists no scan")
    return sorted(ids)


def read_distribution(path: Path) -> dict[str, int]:
    """A scan's ``{label: count}`` file; every label read must have a count."""
    text = read_text(path, "distribution file")
    try:
        counts = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(counts, dict):
        raise DataError(f"{path}: expected an object {{label: count}}")
    for k, v in counts.items():
        if k not in DIAGSET_LABELS:
            raise DataError(f"{path}: unknown label {shown(k)} (the labels are "
                            f"{', '.join(DIAGSET_LABELS)})")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{path}: the count of {k} must be a whole number >= 0, got "
                            f"{shown(v)}")
    missing = [k for k in DIAGSET_CLASSES if k not in counts]
    if missing:
        raise DataError(f"{path}: no count for label {missing[0]}")
    return counts


def blob_shape(path: Path) -> tuple[int, int, int]:
    """(n, H, W) of a blob, from its header (the file's length checked against it)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    shape, dtype = tuple(arr.shape), arr.dtype
    del arr
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or 0 in shape[1:3]:
        raise DataError(f"{path}: expected uint8 RGB patches [n, H, W, 3], got {dtype} "
                        f"[{', '.join(map(str, shape))}]")
    return shape[0], shape[1], shape[2]


def read_diagset(root: Path, split: str, magnification: int = 10,
                 add_validation: bool = False) -> list[Blob]:
    """The blobs of ``split`` (train: the ``train`` partition, with ``add_validation``
    also ``validation``; test: ``test``) by scan id (sorted), label (published order),
    blob name (sorted); ``BG`` is left out. Each scan's blobs must hold as many patches
    of each label as its distribution file says.

    Raises:
        DataError: a missing or malformed partition file, blobs folder, scan folder,
            distribution file or blob; a count that disagrees; an empty split. Within
            ``collecting()`` the problems of a scan or a blob are listed instead (and the
            scan or blob left out).
    """
    parts = ["train", "validation"] if split == "train" and add_validation else (
        ["train"] if split == "train" else ["test"])
    scans = sorted({s for p in parts
                    for s in read_partition(root / "partitions" / PARTITIONS / f"{p}.csv")})
    level = f"{magnification}x"
    blobs_dir = root / "blobs" / "S" / level
    dist_dir = root / "distributions" / "S" / level
    if not blobs_dir.is_dir():
        raise DataError(f"{blobs_dir}: missing (the patches at {level} magnification)")
    out: list[Blob] = []
    for scan in scans:
        try:
            out += _scan_blobs(blobs_dir / scan, dist_dir / f"{scan}.json")
        except DataError as err:
            report(err)
    return out


def _scan_blobs(folder: Path, dist: Path) -> list[Blob]:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing (a scan of the partition without patches)")
    counts = read_distribution(dist)
    out = []
    for label, name in enumerate(DIAGSET_CLASSES):
        sub = folder / name
        want = counts[name]
        if not sub.is_dir():
            if want:
                raise DataError(f"{sub}: missing ({dist} counts {want} {name} patches)")
            continue
        got, unread = 0, False
        for path in sorted((p for p in sub.iterdir() if p.suffix == ".npy"),
                           key=lambda p: p.name):
            try:
                n, h, w = blob_shape(path)
            except DataError as err:
                report(err)
                unread = True
                continue
            got += n
            if n:
                out.append(Blob(path, label, n, h, w))
        if got != want and not unread:
            report(DataError(f"{dist}: counts {want} {name} patches, the blobs in {sub} "
                             f"hold {got}"))
    return out


class BlobPatches(Reseeded, Dataset[dict[str, Any]]):
    """Patches of ``.npy`` blobs, read memory-mapped on demand, transformed per sample.

    Samples carry ``label``, ``index``, ``orig_size`` (:meth:`PhotoTransforms.region`)
    and a NaN ``bbox`` (no boxes).

    Args:
        blobs: the blob files.
        blob_of / row_of: ``[N]`` each sample's blob (index into ``blobs``) and its
            index within the blob.
        labels: ``int64 [N]``, each sample's class.
    """

    def __init__(self, blobs: list[Blob], blob_of: np.ndarray, row_of: np.ndarray,
                 labels: torch.Tensor, transform: v2.Transform,
                 photo: PhotoTransforms) -> None:
        self.blobs, self.blob_of, self.row_of = blobs, blob_of, row_of
        self._labels, self.transform, self.photo = labels, transform, photo
        #: set per epoch by the trainer: sample i's random augmentation is drawn from
        #: (seed, i), the same in any worker process and after a resume
        self.epoch_seed: int | None = None
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own maps
        return {**self.__dict__, "_open": OrderedDict()}

    def __len__(self) -> int:
        return len(self.blob_of)

    @property
    def labels(self) -> torch.Tensor:
        """``int64 [N]``: each sample's label."""
        return self._labels

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Each sample's (H, W)."""
        hw = [(b.height, b.width) for b in self.blobs]
        return [hw[k] for k in self.blob_of.tolist()]

    def with_transform(self, transform: v2.Transform) -> BlobPatches:
        """The same samples under another transform."""
        return BlobPatches(self.blobs, self.blob_of, self.row_of, self._labels, transform,
                           self.photo)

    def with_labels(self, labels: torch.Tensor) -> BlobPatches:
        """The same patches with other labels (``int64 [N]``)."""
        return BlobPatches(self.blobs, self.blob_of, self.row_of,
                           torch.as_tensor(labels, dtype=torch.long), self.transform,
                           self.photo)

    def patch(self, i: int) -> np.ndarray:
        """Sample i's uint8 ``[H,W,3]`` pixels as stored."""
        k = int(self.blob_of[i])
        arr = self._open.get(k)
        if arr is None:
            path = self.blobs[k].path
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise DataError(f"{path}: not a readable .npy array ({err})") from None
            if tuple(arr.shape[:3]) != (self.blobs[k].n, self.blobs[k].height,
                                         self.blobs[k].width):
                raise DataError(f"{path}: changed since the split was read (now "
                                f"[{', '.join(map(str, arr.shape))}])")
            self._open[k] = arr
            if len(self._open) > OPEN_BLOBS:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(k)
        return np.array(arr[int(self.row_of[i])])  # a copy: out of the map, writable

    def _sample(self, i: int) -> dict[str, Any]:
        raw = torch.from_numpy(np.ascontiguousarray(self.patch(i))).permute(2, 0, 1)
        h, w = raw.shape[-2:]
        image = self.transform(tv_tensors.Image(raw)).as_subclass(torch.Tensor)
        return {"label": int(self._labels[i]), "index": i,
                "orig_size": torch.tensor(self.photo.region(h, w)),
                "bbox": torch.full((4,), float("nan")), "image": image}

    def read_all(self) -> Iterator[str | None]:
        """Each blob read in full (``--check-data``): its problem, or None."""
        for b in self.blobs:
            try:
                arr = np.load(b.path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                yield f"{b.path}: not a readable .npy array ({err})"
                continue
            yield (None if arr.shape[:3] == (b.n, b.height, b.width) else
                   f"{b.path}: read as [{', '.join(map(str, arr.shape))}], its header said "
                   f"[{b.n}, {b.height}, {b.width}, 3]")


def diagset(split: str, data_dir: Path, image_size: int = 224, resize: int | None = None,
            train_crop: str = "random", test_crop: str = "center", flip: bool = True,
            vflip: bool = True, augment: bool = True, extra_augment: str | None = None,
            magnification: int = 10, add_validation: bool = False,
            n_train: int | None = None, n_test: int | None = None,
            cache_dir: Path | None = None) -> Split:
    """DiagSet-A's patches at ``magnification`` (default 10: MSABN's DiagSet-10x), the
    eight classes without the scan background (T, N, A, R1..R5). Train: the ``train``
    partition (MSABN reports train / validation / test apart and trains on train),
    with ``add_validation`` train + validation (as the container's example); test: the
    ``test`` partition. Patches in order of scan id, label, blob name, index in the
    blob. No boxes.

    Transforms as the photo datasets (ImageNet mean / std): the default ``resize``
    (image_size / 0.875 = 256 at 224) leaves a 256 px patch as it is, so training takes
    a random 224 crop (MSABN; the container's) and testing the centre 224 crop (the
    container's evaluation); horizontal ``flip`` and vertical ``vflip`` (MSABN);
    ``extra_augment: jitter`` adds colour jitter (MSABN, magnitudes chosen).

    The registry's official sizes (``--dry-run`` without the data) are the paper's
    132,882 / 30,086 images at 10x; whether they count the background patches the
    paper does not say."""
    if magnification not in MAGNIFICATIONS:
        raise UserError(f"magnification must be one of "
                        f"{', '.join(map(str, MAGNIFICATIONS))}, got {shown(magnification)}")
    photo = PhotoTransforms(image_size, IMAGENET_MEAN, IMAGENET_STD, train_crop, test_crop,
                            resize, flip, extra_augment, None, vflip)
    root = find_root(Path(data_dir), "DiagSet-A", "partitions", ("DiagSet-A",))
    blobs = read_diagset(root, split, magnification, add_validation)
    if not blobs:
        raise DataError(f"{root}: the {split} split is empty (no patch of "
                        f"{', '.join(DIAGSET_CLASSES)} at {magnification}x)")
    counts = np.array([b.n for b in blobs])
    blob_of = np.repeat(np.arange(len(blobs), dtype=np.int32), counts)
    row_of = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
    keep = np.array(subset(list(range(len(blob_of))), n_train if split == "train"
                           else n_test, split), dtype=np.int64)
    blob_of, row_of = blob_of[keep], row_of[keep]
    labels = torch.tensor([blobs[k].label for k in blob_of.tolist()], dtype=torch.long)
    info = photo_info(NAME, len(DIAGSET_CLASSES), photo, has_boxes=False)
    train_tf = photo.train_transform() if split == "train" and augment else None
    test_tf = photo.test_transform()
    ds = BlobPatches(blobs, blob_of, row_of, labels, train_tf or test_tf, photo)
    # which files, their shapes and labels, which patches (the transforms' options are
    # in the checkpoint key already)
    h = hashlib.sha256(json.dumps({"split": split, "magnification": magnification,
                                   "add_validation": add_validation and split == "train"}
                                  ).encode())
    for b in blobs:
        h.update(f"{b.path.relative_to(root).as_posix()}|{b.label}|{b.n}|{b.height}|"
                 f"{b.width}|".encode())
    h.update(blob_of.tobytes() + row_of.tobytes())
    return Split(ds, info, eval_transform=test_tf, fingerprint=h.hexdigest()[:16])


DATASETS.add(NAME, diagset, on_disk=True, source=SOURCE, version=1, test_only=("n_test",),
             has_boxes=False, official=(132882, 30086), num_classes=len(DIAGSET_CLASSES),
             label_names=DIAGSET_CLASSES, image_size=224)

"""``folder``: your own images, as class folders, with optional boxes."""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from harness.data.files import (
    DataError,
    Record,
    no_boxes,
    path_text,
    read_text,
    register_photo,
    report,
    utf8_name,
)
from harness.errors import shown

BOXES_HEADER = ["path", "x1", "y1", "x2", "y2"]


def _bad_link(p: Path) -> DataError | None:
    """The error for a symlink that loops (to itself, or to a folder holding it, which
    would read the dataset inside itself) or leads nowhere; None for a usable one (a
    class folder or an image kept elsewhere)."""
    try:
        target = p.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        return DataError(f"{path_text(p)}: a symlink that loops back to itself; remove it")
    except OSError as err:
        if err.errno == errno.ELOOP:  # Python >= 3.13
            return DataError(f"{path_text(p)}: a symlink that loops back to itself; "
                             "remove it")
        return DataError(f"{path_text(p)}: a symlink to {path_text(os.readlink(p))}, which "
                         "does not exist")
    here = p.parent.resolve()
    if target == here or target in here.parents:
        return DataError(f"{path_text(p)}: a symlink to {path_text(target)}, a folder that "
                         "holds it (a loop); link a class folder instead")
    return None


def _usable(p: Path) -> bool:
    """Whether entry ``p`` of a split or class folder can be read; a symlink that loops
    or leads nowhere, or a name that is not UTF-8, is reported (see ``report``)."""
    err = _bad_link(p) if p.is_symlink() else None
    err = err or utf8_name(p)
    if err is not None:
        report(err)
        return False
    return True


def _class_dirs(split_dir: Path) -> list[str]:
    """The class folders of ``split_dir``, sorted (hidden ones left out)."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing (folder datasets need train/<class>/ and "
                        "test/<class>/)")
    return [p.name for p in sorted(split_dir.iterdir())
            if not p.name.startswith(".") and (p.is_dir() or p.is_symlink())
            and _usable(p) and p.is_dir()]


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS


def _images(class_dir: Path) -> list[Path]:
    """The image files directly inside ``class_dir``, sorted (other files are
    ignored)."""
    return [p for p in sorted(class_dir.iterdir())
            if _is_image(p) and (p.is_file() or p.is_symlink()) and _usable(p)
            and p.is_file()]


def _no_images(class_dir: Path) -> DataError:
    return DataError(f"{path_text(class_dir)}: a class folder with no images (no .jpg, "
                     ".png, ... file directly inside it); add its images or remove it")


def read_boxes(path: Path) -> dict[str, list[list[float]]]:
    """``boxes.csv`` rows as relative path -> boxes (xyxy pixels, x2 and y2 exclusive).
    The file is UTF-8 (a byte-order mark is allowed)."""
    out: dict[str, list[list[float]]] = {}
    rows = csv.reader(io.StringIO(read_text(path, "boxes file"), newline=""))
    try:
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != BOXES_HEADER:
            raise DataError(f"{path}:1: the header must be {','.join(BOXES_HEADER)}, got "
                            f"{shown(','.join(header or []))}")
        for row in rows:
            n = rows.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != 5:
                raise DataError(f"{path}:{n}: expected 5 fields (path,x1,y1,x2,y2), got "
                                f"{len(row)}")
            try:
                box = [float(v) for v in row[1:]]
            except ValueError:
                raise DataError(f"{path}:{n}: the coordinates must be numbers, got "
                                f"{shown(','.join(row[1:]))}") from None
            out.setdefault(Path(row[0].strip()).as_posix(), []).append(box)
    except csv.Error as err:
        raise DataError(f"{path}:{rows.line_num}: not valid CSV ({err})") from None
    return out


def read_folder(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """``train/<class>/*`` and ``test/<class>/*`` (any image format PIL reads; classes
    are the train folders, sorted), optional ``boxes.csv`` (``path,x1,y1,x2,y2``, path
    relative to the folder, one row per object; UTF-8).

    A train class folder without images is an error (it would be a class the model
    learns from nothing); an empty test folder of a train class is not (the classes
    come from train, and a test split may lack some). Symlinked class folders and images
    are read where they lead; a symlink that loops (to itself, or to a folder holding
    it) or leads nowhere is an error, as is a file or folder name that is not UTF-8.
    Within ``collecting()`` (``--check-data``) these are listed, and the entries
    concerned left out (an empty class is kept: the class count stays the one
    training would see).
    """
    train_dir = root / "train"
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"{train_dir}: no class folders")
    index = {c: k for k, c in enumerate(classes)}
    split_dir = root / split
    present = classes if split == "train" else _class_dirs(split_dir)
    for c in present:
        if c not in index:
            raise DataError(f"{split_dir / c}: class {shown(c)} has no folder in "
                            f"{train_dir}")
    files = {c: _images(split_dir / c) for c in present}
    for c in classes:  # checked from either split: both are built with these classes
        if not (files[c] if split == "train" else
                any(_is_image(p) and p.is_file() for p in (train_dir / c).iterdir())):
            report(_no_images(train_dir / c))
    boxes_csv = root / "boxes.csv"
    boxes = read_boxes(boxes_csv) if boxes_csv.is_file() else {}
    out = []
    for c in present:
        for p in files[c]:
            rel = p.relative_to(root).as_posix()
            b = boxes.get(rel)
            out.append(Record(p, index[c], no_boxes() if b is None
                              else np.array(b, np.float32),
                              where=str(p), box_source=f"{boxes_csv} ({rel})"))
    if boxes:
        known = {r.path.relative_to(root).as_posix() for r in out}
        other = root / ("test" if split == "train" else "train")
        for rel in boxes:
            if rel not in known and not (root / rel).is_relative_to(other):
                if not (root / rel).is_file():
                    raise DataError(f"{boxes_csv}: {rel} names no image under {root}")
    return out, classes


register_photo("folder", reader=read_folder, marker="train", subdirs=(),
               has_boxes=None, multi_object=True, exif=True,
               source="your own images: DIR/train/<class>/*, DIR/test/<class>/*, optional "
                      "DIR/boxes.csv")

"""``folder``: your own images, as class folders, with optional boxes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from harness.data.files import DataError, Record, no_boxes, register_photo

BOXES_HEADER = ["path", "x1", "y1", "x2", "y2"]


def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing (folder datasets need train/<class>/ and "
                        "test/<class>/)")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir()
                  and not p.name.startswith("."))


def read_boxes(path: Path) -> dict[str, list[list[float]]]:
    """``boxes.csv`` rows as relative path -> boxes (xyxy pixels, x2 and y2 exclusive)."""
    out: dict[str, list[list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != BOXES_HEADER:
            raise DataError(f"{path}:1: the header must be {','.join(BOXES_HEADER)}, got "
                            f"{','.join(header or [])!r}")
        for n, row in enumerate(rows, 2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 5:
                raise DataError(f"{path}:{n}: expected 5 fields (path,x1,y1,x2,y2), got "
                                f"{len(row)}")
            try:
                box = [float(v) for v in row[1:]]
            except ValueError:
                raise DataError(f"{path}:{n}: the coordinates must be numbers, got "
                                f"{','.join(row[1:])!r}") from None
            out.setdefault(Path(row[0].strip()).as_posix(), []).append(box)
    return out


def read_folder(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """``train/<class>/*`` and ``test/<class>/*`` (any image format PIL reads; classes
    are the train folders, sorted), optional ``boxes.csv`` (``path,x1,y1,x2,y2``, path
    relative to the folder, one row per object)."""
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders")
    index = {c: k for k, c in enumerate(classes)}
    split_dir = root / split
    for c in _class_dirs(split_dir):
        if c not in index:
            raise DataError(f"{split_dir / c}: class {c!r} has no folder in "
                            f"{root / 'train'}")
    boxes_csv = root / "boxes.csv"
    boxes = read_boxes(boxes_csv) if boxes_csv.is_file() else {}
    out = []
    for c in _class_dirs(split_dir):
        for p in sorted((split_dir / c).iterdir()):
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS:
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

"""Caltech-UCSD Birds: CUB-200-2011 and CUB-200 (2010), in their published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.files import DataError, Record, id_table, read_lines, register_photo
from harness.data.matfiles import load_mat
from harness.errors import shown


def read_cub2011(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """``CUB_200_2011/``: ``images.txt`` (id, path under ``images/``),
    ``image_class_labels.txt`` (1-based), ``train_test_split.txt`` (1 = train),
    ``bounding_boxes.txt`` (x, y, width, height in pixels; the box is
    [x, x + width) x [y, y + height)) and ``classes.txt``."""
    images = id_table(root / "images.txt", 1)
    labels = id_table(root / "image_class_labels.txt", 1, int)
    is_train = id_table(root / "train_test_split.txt", 1, int)
    boxes = id_table(root / "bounding_boxes.txt", 4, float)
    classes = [v[0] for v in id_table(root / "classes.txt", 1).values()]
    want = 1 if split == "train" else 0
    out = []
    for i, (img_id, (rel,)) in enumerate(images.items(), 1):
        for table, fname in ((labels, "image_class_labels.txt"),
                             (is_train, "train_test_split.txt"),
                             (boxes, "bounding_boxes.txt")):
            if img_id not in table:
                raise DataError(f"{root / fname}: no line for image id {img_id} "
                                f"({rel}, images.txt:{i})")
        if is_train[img_id][0] not in (0, 1):
            raise DataError(f"{root / 'train_test_split.txt'}: image id {img_id}: "
                            f"is_training_image must be 0 or 1, got {is_train[img_id][0]}")
        if is_train[img_id][0] != want:
            continue
        x, y, w, h = boxes[img_id]
        out.append(Record(root / "images" / rel, labels[img_id][0] - 1,
                          np.array([[x, y, x + w, y + h]], np.float32),
                          where=f"{root / 'images.txt'}:{i}",
                          box_source=f"{root / 'bounding_boxes.txt'} (image id {img_id})"))
    return out, classes


def read_cub2010(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """CUB-200 (2010): ``images/<class>/<file>.jpg``, ``lists/{train,test}.txt``
    (``<class>/<file>.jpg`` per line), ``lists/classes.txt`` and
    ``annotations-mat/<class>/<stem>.mat`` whose ``bbox`` struct holds left, top,
    right, bottom: 1-based inclusive pixel indices, i.e. the box
    [left - 1, right) x [top - 1, bottom)."""
    classes = [p[0] for _, p in read_lines(root / "lists" / "classes.txt")]
    index = {c: k for k, c in enumerate(classes)}
    listing = root / "lists" / f"{split}.txt"
    out = []
    for n, parts in read_lines(listing):
        rel = parts[0]
        cls = rel.split("/")[0]
        if cls not in index:
            raise DataError(f"{listing}:{n}: class folder {shown(cls)} is not in "
                            f"{root / 'lists' / 'classes.txt'}")
        mat = root / "annotations-mat" / Path(rel).with_suffix(".mat")
        bb = load_mat(mat, "bbox")
        try:
            box = [float(getattr(bb, f)) for f in ("left", "top", "right", "bottom")]
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{mat}: 'bbox' needs numeric fields left, top, right, "
                            "bottom") from None
        out.append(Record(root / "images" / rel, index[cls],
                          np.array([[box[0] - 1, box[1] - 1, box[2], box[3]]], np.float32),
                          where=f"{listing}:{n}", box_source=str(mat)))
    return out, classes


register_photo("cub200-2011", reader=read_cub2011, marker="images.txt",
               subdirs=("CUB_200_2011",), num_classes=200, official=(5994, 5794),
               source="CUB_200_2011.tgz from the Caltech Vision Lab page of "
                      "Caltech-UCSD Birds-200-2011")
register_photo("cub200-2010", reader=read_cub2010, marker="lists/classes.txt",
               subdirs=("CUB_200_2010", "CUB-200"), num_classes=200, official=(3000, 3033),
               source="images.tgz, lists.tgz and annotations.tgz of Caltech-UCSD Birds 200 "
                      "(2010), extracted into one folder")

"""PASCAL VOC 2012 (classification / detection) in its published layout: a multi-label
dataset, every object's class and box from the XML annotations."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from harness.data.files import DataError, Record, read_lines, register_photo, voc_objects
from harness.data.multilabel import MultiRecord, present
from harness.errors import shown

#: the 20 classes in the standard (devkit) order
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
#: the image set each split reads (the test set's annotations are not public)
IMAGE_SETS = {"train": "train", "test": "val"}


def difficult_marks(path: Path) -> np.ndarray:
    """bool ``[K]``: each ``<object>``'s ``<difficult>`` of a VOC XML file (in the order
    of :func:`harness.data.files.voc_objects`; a missing mark is 0), read after
    ``voc_objects`` has checked the file."""
    root = ET.parse(path).getroot()
    return np.array([(obj.findtext("difficult") or "0").strip() == "1"
                     for obj in root.iter("object")], bool)


def read_voc2012(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """``VOCdevkit/VOC2012``: the ids of ``ImageSets/Main/{train,val}.txt`` (train
    split: train; test split: val), the images ``JPEGImages/<id>.jpg`` and the
    annotations ``Annotations/<id>.xml``.

    Every ``<object>`` is kept, its box (1-based inclusive) and its class; objects
    marked ``difficult`` are kept too (``object_difficult`` marks them): the class of
    an image's difficult objects is present in ``labels``, as the object is in the
    image. The VOC classification protocol's ground truth instead says 0 (ignored when
    scoring) for a class the image has only difficult objects of; that pair is the
    class's objects all marked difficult. ``label`` is the class of the largest object
    (box area; the first in the XML on a tie).
    """
    index = {c: k for k, c in enumerate(VOC_CLASSES)}
    listing = root / "ImageSets" / "Main" / f"{IMAGE_SETS[split]}.txt"
    out: list[Record] = []
    for n, parts in read_lines(listing):
        if len(parts) != 1:
            raise DataError(f"{listing}:{n}: expected one image id, got "
                            f"{shown(' '.join(parts))}")
        stem = parts[0]
        xml = root / "Annotations" / f"{stem}.xml"
        names, boxes = voc_objects(xml)
        odd = next((name for name in names if name not in index), None)
        if odd is not None:
            raise DataError(f"{xml}: object name {shown(odd)} is not one of the 20 VOC "
                            "classes")
        classes = np.array([index[name] for name in names], np.int64)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        out.append(MultiRecord(root / "JPEGImages" / f"{stem}.jpg",
                               int(classes[int(np.argmax(area))]), boxes,
                               where=f"{listing}:{n}", box_source=str(xml),
                               present=present(classes, len(VOC_CLASSES)),
                               object_labels=classes, difficult=difficult_marks(xml)))
    return out, list(VOC_CLASSES)


register_photo("voc2012", reader=read_voc2012, marker="ImageSets/Main",
               subdirs=("VOCdevkit/VOC2012", "VOC2012"), has_boxes=True, multi_object=True,
               num_classes=len(VOC_CLASSES), official=(5717, 5823), multi_label=True,
               label_names=VOC_CLASSES,
               source="VOCtrainval_11-May-2012.tar of PASCAL VOC 2012 (the folder holding "
                      "VOCdevkit/)")

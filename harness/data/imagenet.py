"""ImageNet (ILSVRC2012 classification) in the layout of Kaggle's "ImageNet Object
Localization Challenge", the distribution that holds the validation boxes as XML.

ABN Sec. 4.1 and the discriminative-attention paper (Sec. 4, Table 4) train on the
1,281,167 training images and test on the 50,000 validation images: here the test
split is the validation set.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from harness.data.files import (
    DataError,
    Record,
    no_boxes,
    read_text,
    register_photo,
    voc_objects,
)
from harness.errors import shown

IMAGENET_CLASSES = 1000
MAPPING = "LOC_synset_mapping.txt"
SOLUTION = "LOC_val_solution.csv"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def synsets(path: Path) -> tuple[list[str], list[str]]:
    """``LOC_synset_mapping.txt``: one ``<wnid> <names>`` line per class, in the
    standard index order; returns the wnids and the names text."""
    wnids, names = [], []
    for n, line in enumerate(read_text(path, "synset mapping").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, text = line.strip().partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise DataError(f"{path}:{n}: expected '<wnid> <names>', got {shown(line)}")
        wnids.append(wnid)
        names.append(text.strip() or wnid)
    if len(set(wnids)) != len(wnids):
        dup = next(w for w in wnids if wnids.count(w) > 1)
        raise DataError(f"{path}: wnid {dup} is listed twice")
    if len(wnids) != IMAGENET_CLASSES:
        raise DataError(f"{path}: {len(wnids)} wnids, ILSVRC2012 has {IMAGENET_CLASSES}")
    return wnids, names


def val_solution(path: Path) -> dict[str, tuple[int, list[str]]]:
    """``LOC_val_solution.csv`` (``ImageId,PredictionString``; the string repeats
    ``<wnid> xmin ymin xmax ymax``) as image id -> (line, the objects' wnids)."""
    out: dict[str, tuple[int, list[str]]] = {}
    rows = csv.reader(io.StringIO(read_text(path, "solution file"), newline=""))
    header = next(rows, None)
    if header is None or [h.strip() for h in header] != ["ImageId", "PredictionString"]:
        raise DataError(f"{path}:1: the header must be ImageId,PredictionString")
    for row in rows:
        if not row:
            continue
        parts = row[1].split() if len(row) == 2 else []
        if not parts or len(parts) % 5:
            raise DataError(f"{path}:{rows.line_num}: expected ImageId,'<wnid> xmin ymin "
                            "xmax ymax ...'")
        out[row[0].strip()] = (rows.line_num, parts[::5])
    return out


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing image folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_imagenet(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """The Kaggle tree: ``LOC_synset_mapping.txt`` (the 1000 wnids in the standard
    index order and their names), ``ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG``
    (the class is the folder), ``ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<8
    digits>.JPEG`` and the VOC-style XML of ``ILSVRC/Annotations/CLS-LOC/`` (every
    validation image, a subset of the training images).

    Validation labels are the ``<name>`` of the image's XML objects (all objects of one
    image name one class); ``LOC_val_solution.csv``, when present, must say the same.
    Every object's box is kept (VOC, 1-based inclusive). A training image without an
    XML file has no box; the train split's ``has_boxes`` says whether any has.
    """
    wnids, names = synsets(root / MAPPING)
    index = {w: k for k, w in enumerate(wnids)}
    data, annos = root / "ILSVRC" / "Data" / "CLS-LOC", root / "ILSVRC" / "Annotations" / "CLS-LOC"
    out = []
    if split == "train":
        train = data / "train"
        if not train.is_dir():
            raise DataError(f"{train}: missing image folder")
        for folder in sorted(p for p in train.iterdir() if p.is_dir()):
            if folder.name not in index:
                raise DataError(f"{folder}: wnid {shown(folder.name)} is not in "
                                f"{root / MAPPING}")
            xml_dir = annos / "train" / folder.name
            xmls = {p.stem for p in xml_dir.glob("*.xml")} if xml_dir.is_dir() else set()
            for img in _images(folder):
                boxes = no_boxes()
                if img.stem in xmls:
                    xml = xml_dir / f"{img.stem}.xml"
                    objs, boxes = voc_objects(xml)
                    other = [o for o in objs if o != folder.name]
                    if other:
                        raise DataError(f"{xml}: an object named {shown(other[0])} in class "
                                        f"folder {folder.name}")
                out.append(Record(img, index[folder.name], boxes, where=str(img),
                                  box_source=str(xml_dir / f"{img.stem}.xml")))
        return out, names
    solution = val_solution(root / SOLUTION) if (root / SOLUTION).is_file() else None
    for img in _images(data / "val"):
        xml = annos / "val" / f"{img.stem}.xml"
        objs, boxes = voc_objects(xml)
        if len(set(objs)) != 1 or objs[0] not in index:
            odd = next((o for o in objs if o not in index), None)
            several = ", ".join(sorted(set(objs)))
            raise DataError(f"{xml}: " + (f"object name {shown(odd)} is not a wnid of "
                                          f"{MAPPING}" if odd is not None else
                                          f"objects of several classes ({several})"))
        if solution is not None:
            line, listed = solution.get(img.stem, (0, []))
            if not line:
                raise DataError(f"{root / SOLUTION}: no row for {img.stem}")
            if set(listed) != {objs[0]}:
                raise DataError(f"{root / SOLUTION}:{line}: {img.stem} is "
                                f"{' '.join(sorted(set(listed)))}, its XML {xml.name} says "
                                f"{objs[0]}")
        out.append(Record(img, index[objs[0]], boxes, where=str(img), box_source=str(xml)))
    return out, names


register_photo("imagenet", reader=read_imagenet, marker=MAPPING,
               subdirs=("imagenet-object-localization-challenge", "imagenet", "ImageNet"),
               has_boxes=None, multi_object=True, num_classes=IMAGENET_CLASSES,
               official=(1281167, 50000),
               source="imagenet_object_localization_patched2019.tar.gz and the LOC_*.csv / "
                      "LOC_synset_mapping.txt files of Kaggle's ImageNet Object Localization "
                      "Challenge, in one folder")

"""Stanford Dogs and Stanford Cars, in their published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.files import DataError, Record, register_photo, voc_boxes
from harness.data.matfiles import cell_strings, load_mat

DOGS_CLASSES = 120


def read_dogs(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """Stanford Dogs: ``{train,test}_list.mat`` (``file_list`` under ``Images/``,
    ``annotation_list`` under ``Annotation/``, ``labels`` 1..120); each annotation is a
    VOC XML file that may hold several objects. Class names are the breed folders."""
    listing = root / f"{split}_list.mat"
    files, annos, labels = load_mat(listing, "file_list", "annotation_list", "labels")
    files = cell_strings(files, listing, "file_list")
    annos = cell_strings(annos, listing, "annotation_list")
    labels = np.atleast_1d(np.asarray(labels)).astype(float).ravel()
    if not len(files) == len(annos) == len(labels):
        raise DataError(f"{listing}: file_list, annotation_list and labels differ in length "
                        f"({len(files)}, {len(annos)}, {len(labels)})")
    names: dict[int, str] = {}
    out = []
    for i, (f, a, lab) in enumerate(zip(files, annos, labels, strict=True), 1):
        if lab != int(lab):
            raise DataError(f"{listing}: labels[{i}] = {lab} is not an integer")
        k = int(lab) - 1
        names.setdefault(k, f.split("/")[0])
        xml = root / "Annotation" / a
        out.append(Record(root / "Images" / f, k, voc_boxes(xml),
                          where=f"{listing} (entry {i})", box_source=str(xml)))
    return out, [names.get(k, str(k + 1)) for k in range(DOGS_CLASSES)]


def read_cars(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """Stanford Cars: ``devkit/cars_meta.mat`` (``class_names``), the ``annotations``
    structs of ``devkit/cars_train_annos.mat`` and of ``cars_test_annos_withlabels.mat``
    (beside ``devkit/`` or inside it), images in ``cars_train/`` / ``cars_test/``.
    Boxes are 1-based inclusive pixel indices: [bbox_x1 - 1, bbox_x2) x
    [bbox_y1 - 1, bbox_y2). Classes are 1-based."""
    classes = cell_strings(load_mat(root / "devkit" / "cars_meta.mat", "class_names"),
                       root / "devkit" / "cars_meta.mat", "class_names")
    if split == "train":
        annos_path, images = root / "devkit" / "cars_train_annos.mat", root / "cars_train"
    else:
        images = root / "cars_test"
        cands = [root / "cars_test_annos_withlabels.mat",
                 root / "devkit" / "cars_test_annos_withlabels.mat"]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise DataError(f"{cands[0]}: missing; the test labels are published separately "
                            "as cars_test_annos_withlabels.mat (devkit/cars_test_annos.mat "
                            "has no classes)")
        annos_path = found[0]
    annos = np.atleast_1d(load_mat(annos_path, "annotations"))
    out = []
    for i, a in enumerate(annos, 1):
        try:
            x1, y1, x2, y2 = (float(getattr(a, f)) for f in
                              ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
            label, fname = int(getattr(a, "class")), str(a.fname)
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{annos_path}: annotations({i}) needs fields bbox_x1, bbox_y1, "
                            "bbox_x2, bbox_y2, class, fname") from None
        out.append(Record(images / fname, label - 1,
                          np.array([[x1 - 1, y1 - 1, x2, y2]], np.float32),
                          where=f"{annos_path} (annotations({i}))"))
    return out, classes


register_photo("stanford-dogs", reader=read_dogs, marker="train_list.mat",
               subdirs=("StanfordDogs", "stanford-dogs", "stanford_dogs"),
               num_classes=DOGS_CLASSES, multi_object=True, official=(12000, 8580),
               source="images.tar, annotation.tar and lists.tar of the Stanford Dogs "
                      "Dataset, extracted into one folder")
register_photo("stanford-cars", reader=read_cars, marker="devkit/cars_meta.mat",
               subdirs=("stanford_cars", "stanford-cars", "StanfordCars"),
               num_classes=196, official=(8144, 8041),
               source="cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
                      "cars_test_annos_withlabels.mat of the Stanford Cars Dataset, in one "
                      "folder")

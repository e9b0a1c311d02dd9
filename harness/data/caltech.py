"""Caltech-256 in its published layout, with the random per-class split of the
discriminative-attention paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.config import require
from harness.data.files import DataError, Record, no_boxes, register_photo
from harness.errors import shown

CALTECH_CLASSES = 256
CLUTTER = "257.clutter"
SUFFIXES = (".jpg", ".jpeg")


def _class_folders(root: Path) -> list[tuple[int, str, Path]]:
    """(1-based class number, name, folder) of ``<NNN>.<name>`` folders, clutter out."""
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name == CLUTTER or p.name.startswith("."):
            continue
        num, _, name = p.name.partition(".")
        if not (num.isdigit() and name) or not 1 <= int(num) <= CALTECH_CLASSES:
            raise DataError(f"{p}: expected a class folder '<001-256>.<name>', got "
                            f"{shown(p.name)}")
        out.append((int(num), name, p))
    if not out:
        raise DataError(f"{root}: no class folders")
    return out


def read_caltech256(root: Path, split: str, split_seed: int = 0,
                    train_per_class: int = 60, test_per_class: int = 25
                    ) -> tuple[list[Record], list[str]]:
    """``256_ObjectCategories/<NNN>.<name>/<NNN>_<NNNN>.jpg``; the class is ``NNN - 1``
    and ``257.clutter`` is left out (discriminative attention Sec. 4: 256 classes).

    Caltech-256 has no official split; as the paper (after Griffin et al.), each class
    draws ``test_per_class`` (25) test and ``train_per_class`` (30 or 60) training
    images at random: its image names, sorted, are permuted by
    ``numpy.random.default_rng([split_seed, NNN])``; the first ``train_per_class`` are
    the training images, the next ``test_per_class`` the test images (disjoint, and
    independent of the file system's order and of the other classes). The rest are
    unused. A split lists its images by class, then name.
    """
    for key, val in (("split_seed", split_seed), ("train_per_class", train_per_class),
                     ("test_per_class", test_per_class)):
        require("dataset_kwargs", key, val, 0 if key == "split_seed" else 1, 2**31 - 1,
                integer=True)
    names = [str(k + 1) for k in range(CALTECH_CLASSES)]
    need = train_per_class + test_per_class
    out = []
    for num, name, folder in _class_folders(root):
        names[num - 1] = name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        if len(files) < need:
            raise DataError(f"{folder}: {len(files)} images, fewer than train_per_class + "
                            f"test_per_class = {train_per_class} + {test_per_class}")
        order = np.random.default_rng([split_seed, num]).permutation(len(files))
        picked = (order[:train_per_class] if split == "train"
                  else order[train_per_class:need])
        out += [Record(files[int(i)], num - 1, no_boxes(), where=str(files[int(i)]))
                for i in np.sort(picked)]
    return out, names


register_photo("caltech256", reader=read_caltech256, marker="001.ak47",
               subdirs=("256_ObjectCategories",), has_boxes=False,
               num_classes=CALTECH_CLASSES, official=(256 * 60, 256 * 25),
               options={"split_seed": 0, "train_per_class": 60, "test_per_class": 25},
               source="256_ObjectCategories.tar of the Caltech-256 Object Category Dataset")

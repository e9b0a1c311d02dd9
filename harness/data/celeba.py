"""CelebA (the aligned and cropped faces) in its published layout: a multi-label
dataset of 40 binary face attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.files import DataError, Record, no_boxes, read_lines, register_photo
from harness.data.multilabel import MultiRecord
from harness.errors import shown

#: the 40 attributes in the column order of ``list_attr_celeba.txt``
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young")
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
#: the partition each split reads: 0 train, 1 validation (unused), 2 test
PARTITIONS = {"train": 0, "test": 2}


def attributes(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """``list_attr_celeba.txt``: the image count, the 40 attribute names (which must be
    :data:`CELEBA_ATTRIBUTES`), then ``<image> <40 values of -1 or 1>`` lines; returns
    image -> (line, float32 ``[40]`` with 1 for 1 and 0 for -1)."""
    lines = read_lines(path)
    if len(lines) < 2 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise DataError(f"{path}:1: expected the image count, then the attribute names")
    names = tuple(lines[1][1])
    if names != CELEBA_ATTRIBUTES:
        wrong = next((f"column {k + 1} is {shown(a)}, expected {b}" for k, (a, b) in
                      enumerate(zip(names, CELEBA_ATTRIBUTES, strict=False)) if a != b),
                     f"{len(names)} names, CelebA has {len(CELEBA_ATTRIBUTES)}")
        raise DataError(f"{path}:{lines[1][0]}: not CelebA's attribute names ({wrong})")
    out: dict[str, tuple[int, np.ndarray]] = {}
    for n, parts in lines[2:]:
        values = parts[1:]
        if len(values) != len(names) or any(v not in ("1", "-1") for v in values):
            raise DataError(f"{path}:{n}: expected an image and {len(names)} values of -1 "
                            f"or 1, got {shown(' '.join(parts))}")
        out[parts[0]] = (n, (np.array(values, np.int8) == 1).astype(np.float32))
    if int(lines[0][1][0]) != len(out):
        raise DataError(f"{path}:1: says {lines[0][1][0]} images, lists {len(out)}")
    return out


def read_celeba(root: Path, split: str) -> tuple[list[Record], list[str]]:
    """``celeba/`` as torchvision reads it: ``img_align_celeba/<image>``,
    ``list_eval_partition.txt`` (``<image> <0, 1 or 2>``: train, validation, test) and
    ``list_attr_celeba.txt``. The train split is partition 0, the test split partition
    2 (the official test set); the validation partition is not used. Images in the
    partition file's order.

    ``labels`` are the 40 attributes (1 = the face has it). ``label`` is the first
    attribute the image has, in column order (0 when it has none; ``labels`` tells).
    The aligned images have no boxes: ``list_bbox_celeba.txt`` boxes the faces of the
    in-the-wild images, in their pixels, and a box made up from the aligned landmarks
    would be a guess of ours (the alignment puts every face at nearly the same place
    anyway); ``list_bbox_celeba.txt``, ``list_landmarks_align_celeba.txt`` and
    ``identity_CelebA.txt`` are not read.
    """
    listing = root / PARTITION
    rows = read_lines(listing)
    attrs = attributes(root / ATTRIBUTES)
    want = PARTITIONS[split]
    out: list[Record] = []
    for n, parts in rows:
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{listing}:{n}: expected '<image> <0, 1 or 2>', got "
                            f"{shown(' '.join(parts))}")
        if int(parts[1]) != want:
            continue
        found = attrs.get(parts[0])
        if found is None:
            raise DataError(f"{root / ATTRIBUTES}: no line for {shown(parts[0])} (listed in "
                            f"{listing}:{n})")
        has = found[1]
        out.append(MultiRecord(root / IMAGES / parts[0], int(np.argmax(has)), no_boxes(),
                               where=f"{listing}:{n}", present=has))
    return out, list(CELEBA_ATTRIBUTES)


register_photo("celeba", reader=read_celeba, marker=ATTRIBUTES, subdirs=("celeba",),
               has_boxes=False, num_classes=len(CELEBA_ATTRIBUTES),
               official=(162770, 19962), multi_label=True, label_names=CELEBA_ATTRIBUTES,
               source="CelebA's img_align_celeba.zip, list_attr_celeba.txt and "
                      "list_eval_partition.txt, in one folder celeba/ (as torchvision "
                      "reads it)")

"""SVHN (Street View House Numbers), the cropped 32 x 32 digits of the ``.mat``
files, as ABN Sec. 4.1 uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.cifar import memory_split
from harness.data.core import DATASETS, Split
from harness.data.files import DataError
from harness.data.matfiles import load_mat

#: per-channel mean / std of SVHN's train split (the values commonly used with it)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
SOURCE = ("train_32x32.mat, test_32x32.mat and extra_32x32.mat of SVHN's format 2 "
          "(cropped digits), in one folder")
SUBDIRS = ("svhn", "SVHN")


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` (``uint8`` 32 x 32 x 3 x N) as ``uint8 [N,3,32,32]`` and ``y`` (N x 1,
    1..10, where 10 is the digit 0) as ``int64 [N]`` digits 0..9."""
    if not path.is_file():
        raise DataError(f"{path}: missing (svhn reads {SOURCE})")
    x, y = load_mat(path, "X", "y")
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(f"{path}: X must be uint8 32 x 32 x 3 x N, got {x.dtype} "
                        f"{' x '.join(map(str, x.shape))}")
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: {len(y)} labels in y for {x.shape[3]} images in X")
    bad = np.flatnonzero((y < 1) | (y > 10) | (y != np.round(y)))
    if len(bad):
        raise DataError(f"{path}: y({bad[0] + 1}) = {y[bad[0]]}, labels must be 1..10")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images, torch.from_numpy(y.astype(np.int64) % 10)


def svhn(split: str, data_dir: Path, image_size: int = 32, augment: bool = True,
         extra: bool = True, n_train: int | None = None, n_test: int | None = None,
         cache_dir: Path | None = None) -> Split:
    """SVHN from ``train_32x32.mat``, ``test_32x32.mat`` and, with ``extra`` (default,
    as ABN Sec. 4.1: 73,257 + 531,131 = 604,388 training images), ``extra_32x32.mat``
    appended to the training images; 26,032 test images; 10 classes, the digits.
    32 px (``image_size`` resizes), ABN's CIFAR augmentation on the train split
    (4 px zero padding, random crop, flip). No boxes."""
    data_dir = Path(data_dir)
    root = next((data_dir / s for s in SUBDIRS if (data_dir / s / "test_32x32.mat").is_file()),
                data_dir)
    if split == "train":
        parts = [read_mat(root / "train_32x32.mat")]
        if extra:
            if not (root / "extra_32x32.mat").is_file():
                raise DataError(f"{root / 'extra_32x32.mat'}: missing (extra=True trains on "
                                "train + extra as ABN; give extra=False to train on "
                                "train_32x32.mat alone)")
            parts.append(read_mat(root / "extra_32x32.mat"))
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
    else:
        images, labels = read_mat(root / "test_32x32.mat")
    if len(labels) == 0:
        raise DataError(f"{root}: the {split} split is empty")
    return memory_split("svhn", images, labels, 10, split, image_size=image_size,
                        augment=augment, n=n_train if split == "train" else n_test,
                        mean=SVHN_MEAN, std=SVHN_STD)


DATASETS.add("svhn", svhn, on_disk=True, in_memory=True, source=SOURCE, version=1,
             test_only=("n_test",), has_boxes=False, official=(604388, 26032),
             num_classes=10, image_size=32)

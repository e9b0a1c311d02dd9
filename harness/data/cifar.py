"""CIFAR-10 and CIFAR-100 from their python pickle folders, via torchvision's readers."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torchvision import datasets as tvd
from torchvision.transforms import v2

from harness.config import require
from harness.data.core import (
    DATASETS,
    BatchRandomCrop,
    BoxedImages,
    DatasetInfo,
    Split,
    make_transform,
)
from harness.data.files import DataError, subset

#: per-channel statistics of the CIFAR training images (as in the ABN reference code)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _reader(base: type[tvd.CIFAR10]) -> type[tvd.CIFAR10]:
    """``base`` reading the pickles without checking their MD5 sums (which pin one
    byte-exact copy of the files) and with the class names from the meta pickle."""

    class Reader(base):  # type: ignore[misc,valid-type]
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            with open(path, "rb") as f:
                names = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.classes = list(names)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Reader


def memory_split(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 split: str, *, image_size: int, augment: bool, n: int | None,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 label_names: tuple[str, ...] = ()) -> Split:
    """A split of 32 x 32 in-memory images (``uint8 [N,3,32,32]``, ``int64 [N]``
    labels): the ``n``-subset, resized when ``image_size`` is not 32, and on the train
    split with ``augment`` ABN Sec. 4.1's augmentation (4 px zero padding, random
    32 x 32 crop, random horizontal flip, run per batch on the device); the classes
    named ``label_names`` (:attr:`DatasetInfo.label_names`)."""
    keep = subset(list(range(len(labels))), n, split)
    images, labels = images[keep], labels[keep]
    require("dataset_kwargs", "image_size", image_size, 8, 1024, integer=True)
    info = DatasetInfo(name=name, num_classes=num_classes,
                       image_size=(image_size, image_size), mean=mean, std=std,
                       has_boxes=False, label_names=label_names)
    tf: v2.Transform = make_transform(info, train=False)
    if image_size != 32:
        tf = v2.Compose([v2.Resize((image_size, image_size), antialias=True), tf])
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    batch_tf = BatchRandomCrop(info, pad=4, flip=True) if split == "train" and augment else None
    return Split(BoxedImages(images, labels, {}, tf), info, batch_transform=batch_tf,
                 eval_transform=tf, fingerprint=digest.hexdigest()[:16])


def _cifar(name: str, base: type[tvd.CIFAR10], num_classes: int, folder: str,
           source: str) -> None:
    reader = _reader(base)

    def factory(split: str, data_dir: Path, image_size: int = 32, augment: bool = True,
                n_train: int | None = None, n_test: int | None = None,
                cache_dir: Path | None = None) -> Split:
        data_dir = Path(data_dir)
        root = data_dir.parent if data_dir.name == folder else data_dir
        files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
        for f in files:
            if not (root / folder / f).is_file():
                raise DataError(f"{root / folder / f}: missing ({name} expects the python "
                                f"version's folder {folder}/ in --data-dir)")
        try:
            ds = reader(str(root), train=split == "train", download=False)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError) as err:
            raise DataError(f"{root / folder}: unreadable {name} pickles "
                            f"({type(err).__name__}: {err})") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
        if len(ds.classes) != num_classes:
            raise DataError(f"{root / folder / base.meta['filename']}: {len(ds.classes)} "
                            f"class names, expected {num_classes}")
        if len(labels) == 0:
            raise DataError(f"{root / folder}: the {split} split is empty")
        bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
        if len(bad):
            raise DataError(f"{root / folder}: {split} image {int(bad[0])} has label "
                            f"{int(labels[bad[0]])}, outside the {num_classes} classes")
        return memory_split(name, images, labels, num_classes, split, image_size=image_size,
                            augment=augment, n=n_train if split == "train" else n_test,
                            mean=CIFAR_MEAN, std=CIFAR_STD,
                            label_names=tuple(str(c) for c in ds.classes))

    factory.__doc__ = (f"{name} from ``{folder}/`` ({source}): the official split, "
                       "32 px (image_size resizes), train augmentation as ABN Sec. 4.1.")
    DATASETS.add(name, factory, on_disk=True, in_memory=True, source=source, version=1,
                 test_only=("n_test",), has_boxes=False, official=(50000, 10000),
                 num_classes=num_classes, image_size=32)




_cifar("cifar10", tvd.CIFAR10, 10, "cifar-10-batches-py",
       "cifar-10-python.tar.gz from the CIFAR page of the University of Toronto")
_cifar("cifar100", tvd.CIFAR100, 100, "cifar-100-python",
       "cifar-100-python.tar.gz from the CIFAR page of the University of Toronto")

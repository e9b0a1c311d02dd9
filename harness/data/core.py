"""The dataset foundation: the registry, the sample format, splits, transforms, loaders.

Every dataset yields ``{"image": float[3,H,W], "label": int, "bbox": float[4],
"index": int}`` plus optional extras: other named boxes (``distractor_bbox``), every
annotated object (``objects``: float[K,4], NaN rows padding to the split's most
objects) and, in pixels of the original image, the size of the region the test
transform shows (``orig_size``: int[2], H and W: the whole image when it is resized,
the centre crop's side when cropped).

A multi-label dataset (``DatasetInfo.multi_label``) names every class an image holds:
its samples also carry ``labels`` (float32[C], 1.0 for each class present, 0.0 for
the others: the target of multi-label and multi-task training) and, when it has
boxes, ``object_labels`` (int64[K]: the class of each row of ``objects``, -1 on the
NaN padding rows), so that a class's boxes are the rows of ``objects`` whose
``object_labels`` is that class. A row keeps its class when a transform crops its box
away (the box is then empty, x2 <= x1 or y2 <= y1). ``label`` stays one class index,
for code that needs one: each dataset says which (the class of the largest object for
``voc2012`` and ``cluttered-digits-multilabel``; for ``celeba``, whose classes are
attributes, the first attribute the image has in the file's column order, 0 when it
has none). Single-label datasets carry neither key.
Boxes are xyxy in pixels of the transformed image (NaN when a dataset has none) and
follow the image through every transform via ``torchvision.transforms.v2`` and
``tv_tensors``. This module imports nothing from ``methods``, ``metrics`` or
``reports``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.errors import UserError, shown_path
from harness.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that methods, metrics and reports need.

    Attributes:
        pointing_tolerance: pointing-game tolerance in pixels of this dataset's images
            (of the original images when the samples carry ``orig_size``).
        extra_boxes: names of the optional per-sample boxes besides ``bbox``.
        multi_object: samples carry ``objects``, every annotated box (``bbox`` is
            their union).
        multi_label: samples carry ``labels``, every class the image holds (and, with
            ``multi_object``, ``object_labels``, each object's class); ``label`` is one
            of them (see the module's doc).
        label_names: each class's name, by label, where the dataset names its classes
            (a folder dataset's class folders, a published dataset's class list); empty
            otherwise. Reports show them instead of class numbers.
    """

    name: str
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_boxes: bool
    extra_boxes: tuple[str, ...] = ()
    pointing_tolerance: float = 15.0
    multi_object: bool = False
    multi_label: bool = False
    label_names: tuple[str, ...] = ()


@dataclass
class Split:
    """A dataset split and its info.

    Attributes:
        batch_transform: applied by the trainer to each collated training batch on its
            device (random augmentation done for the whole batch at once, see
            :class:`BatchRandomCrop`); None: the samples are final.
        eval_transform: the deterministic test-time transform; ``eval_view()`` gives the
            split's samples under it (a method's analysis of its training images).
        num_workers: decoding worker processes of the split's loaders (0: in process).
        fingerprint: a hash of what the split's samples are (files, labels, boxes) for
            datasets read from disk, part of every checkpoint key; None for generated
            datasets, whose options identify them.
    """

    dataset: Dataset[dict[str, Any]]
    info: DatasetInfo
    batch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    eval_transform: v2.Transform | None = None
    num_workers: int = 0
    fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def eval_view(self) -> Dataset[dict[str, Any]]:
        """The samples without augmentation (the test-time transform)."""
        tf = self.eval_transform or make_transform(self.info, train=False)
        return self.dataset.with_transform(tf)  # type: ignore[attr-defined,no-any-return]


def permuted_labels(split: Split, seed: int) -> Split:
    """``split`` with its labels permuted once over the samples (each image gets the
    label of another, the class counts unchanged) by a permutation drawn from ``seed``:
    the data-randomisation test's training split (Adebayo et al., NeurIPS 2018, Sec.
    3.2). Images, boxes and augmentation are the split's own. Its fingerprint names the
    original split, the seed and the labels, so a model trained on it has its own
    checkpoint key.

    Raises:
        TypeError: a dataset that cannot give its labels (``labels`` and
            ``with_labels``).
    """
    ds = split.dataset
    if not (hasattr(ds, "labels") and hasattr(ds, "with_labels")):
        raise TypeError(f"{type(ds).__name__} cannot permute its labels (it has no "
                        "labels / with_labels)")
    labels = torch.as_tensor(ds.labels, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    shuffled = labels[perm]
    digest = hashlib.sha256(f"{split.fingerprint}:labels permuted:{seed}:".encode())
    digest.update(shuffled.numpy().tobytes())
    return dataclasses.replace(split, dataset=ds.with_labels(shuffled),
                               fingerprint=digest.hexdigest()[:16])


def loader(split: Split, batch_size: int, device: torch.device, *, shuffle: bool = False,
           drop_last: bool = False, generator: torch.Generator | None = None,
           dataset: Dataset[dict[str, Any]] | None = None,
           persistent: bool = True,
           batch_sampler: Sampler[list[int]] | None = None) -> DataLoader[dict[str, Any]]:
    """The one way batches are drawn from a split: ``split.num_workers`` decoding
    processes and pinned memory on CUDA.

    Args:
        dataset: another view of the split's samples (e.g. ``split.eval_view()``).
        persistent: keep the workers alive between passes (training passes False: each
            epoch's workers then get the dataset with that epoch's augmentation seed).
        batch_sampler: yields each batch's indices (then ``batch_size``, ``shuffle``
            and ``drop_last`` are the sampler's business; ``generator`` still seeds the
            workers, drawn before the sampler's first batch as a shuffling loader does).
    """
    workers = split.num_workers
    ds = split.dataset if dataset is None else dataset
    rank = distributed_rank()
    common: dict[str, Any] = dict(generator=generator, num_workers=workers,
                                  worker_init_fn=functools.partial(_rank_worker_seed, rank)
                                  if rank and workers else None,
                                  persistent_workers=persistent and workers > 0,
                                  pin_memory=device.type == "cuda")
    if batch_sampler is not None:
        return DataLoader(ds, batch_sampler=batch_sampler, **common)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      **common)


def distributed_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    from harness import distributed

    return distributed.current().rank


def _rank_worker_seed(rank: int, worker_id: int) -> None:
    """Under torchrun, rank r's decoding workers draw other random numbers than rank
    0's (the loaders share the shuffling generator, hence the workers' base seed);
    rank 0 keeps a single process's seeds."""
    torch.manual_seed((torch.initial_seed() + rank * 1_000_003) % 2**63)


DatasetFactory = Callable[..., Split]
DATASETS: Registry[DatasetFactory] = Registry("dataset")


class BoxedImages(Dataset[dict[str, Any]]):
    """In-memory uint8 images with labels and boxes, transformed per sample.

    Args:
        images: ``uint8 [N,3,H,W]``.
        labels: ``int64 [N]``.
        boxes: name -> ``float [N,4]`` xyxy pixel boxes (``"bbox"`` first); may be empty.
        transform: a ``torchvision.transforms.v2`` transform taking (image, *boxes).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 boxes: dict[str, torch.Tensor], transform: v2.Transform) -> None:
        self.images, self.labels, self.boxes, self.transform = images, labels, boxes, transform
        self.canvas = (int(images.shape[-2]), int(images.shape[-1]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def with_transform(self, transform: v2.Transform) -> BoxedImages:
        """The same samples under another transform (e.g. the train split unaugmented)."""
        return BoxedImages(self.images, self.labels, self.boxes, transform)

    def with_labels(self, labels: torch.Tensor) -> BoxedImages:
        """The same images and boxes with other labels (``int64 [N]``)."""
        return BoxedImages(self.images, labels, self.boxes, self.transform)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The samples ``indices`` for a DataLoader batch. A photometric transform
        (ToDtype / Normalize steps, which act on each value alone) runs once on the
        stacked images instead of once per image — the same values, bit for bit, at a
        fraction of the per-sample dispatch cost; any other transform runs per sample."""
        if moves_pixels(self.transform):
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.transform(tv_tensors.Image(self.images[idx])).as_subclass(torch.Tensor)
        boxes = {n: b[idx].float() for n, b in self.boxes.items()}
        out = []
        for j, i in enumerate(indices):
            sample: dict[str, Any] = {"label": int(self.labels[i]), "index": i,
                                      **{n: b[j] for n, b in boxes.items()},
                                      "image": images[j]}
            if "bbox" not in sample:
                sample["bbox"] = torch.full((4,), float("nan"))
            out.append(sample)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = tv_tensors.Image(self.images[i])
        names = list(self.boxes)
        sample: dict[str, Any] = {"label": int(self.labels[i]), "index": i}
        if names and moves_pixels(self.transform):
            # all of the sample's boxes as one BoundingBoxes (one row each): faster
            bxs = tv_tensors.BoundingBoxes(torch.stack([self.boxes[n][i] for n in names]),
                                           format="XYXY", canvas_size=self.canvas)
            img_t, box_t = self.transform(img, bxs)
            for n, b in zip(names, box_t.as_subclass(torch.Tensor), strict=True):
                sample[n] = b.float()
        else:  # a photometric transform leaves the boxes where they are
            img_t = self.transform(img)
            for n in names:
                sample[n] = self.boxes[n][i].float()
        sample["image"] = img_t.as_subclass(torch.Tensor)
        if "bbox" not in sample:
            sample["bbox"] = torch.full((4,), float("nan"))
        return sample


#: transforms that change pixel values only (boxes need not go through them)
_PHOTOMETRIC = (v2.ToDtype, v2.Normalize)


def moves_pixels(transform: v2.Transform) -> bool:
    """Whether ``transform`` may move pixels (anything but ToDtype / Normalize steps)."""
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    return not all(isinstance(t, _PHOTOMETRIC) for t in steps)


class BatchRandomCrop:
    """``v2.RandomCrop(size, padding=pad)`` (zero padding of the uint8 image) applied to
    a collated batch of normalised images at once, on the batch's device: each image
    draws its own offsets, the padding has the value a zero pixel takes after
    normalisation, and every named box is shifted and clamped to the image as v2 moves
    a sample's ``BoundingBoxes``. Per-sample v2 transforms cost ~150 us an image on the
    CPU, a third of a small model's training step; here it is one gather per batch.

    Args:
        info: the dataset's facts (normalisation, image size, box names).
        pad: padding in pixels on every side (offsets are uniform in [0, 2 pad]).
        flip: then mirror each image left-right with probability 1/2 (CIFAR's
            augmentation; boxes mirrored with it).
    """

    def __init__(self, info: DatasetInfo, pad: int = 4, flip: bool = False) -> None:
        self.pad, self.flip = pad, flip
        self.fill = [-m / s for m, s in zip(info.mean, info.std, strict=True)]
        self.boxes = ("bbox", *info.extra_boxes)

    def offsets(self, n: int) -> torch.Tensor:
        """``[n,2]`` (top, left) offsets into the padded images, from the global RNG."""
        return torch.randint(0, 2 * self.pad + 1, (n, 2))

    def __call__(self, batch: dict[str, Any], offsets: torch.Tensor | None = None,
                 flips: torch.Tensor | None = None) -> dict[str, Any]:
        """Crop (and flip) the batch; ``offsets`` ``[B,2]`` and ``flips`` bool ``[B]``
        default to random draws from the global RNG."""
        x = batch["image"]
        b, c, h, w = x.shape
        off = (self.offsets(b) if offsets is None else offsets).to(x.device)
        if self.flip and flips is None:
            flips = torch.rand(b) < 0.5
        p = self.pad
        fill = torch.tensor(self.fill, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        rows = (off[:, 0, None] + torch.arange(h, device=x.device))[:, :, None]  # [B,H,1]
        cols = (off[:, 1, None] + torch.arange(w, device=x.device))[:, None, :]  # [B,1,W]
        if flips is not None:  # mirrored images read their columns right to left
            cols = torch.where(flips.to(x.device)[:, None, None], cols.flip(-1), cols)
        crop = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]
        out = {**batch, "image": crop.permute(0, 3, 1, 2).contiguous(
            memory_format=torch.channels_last)}
        shift = (p - off.flip(1)).to(torch.float32).repeat(1, 2)  # (dx, dy, dx, dy)
        size = torch.tensor([w, h, w, h], device=x.device, dtype=torch.float32)
        for name in self.boxes:
            if name in batch:
                moved = batch[name].float() + shift.to(batch[name].device)
                moved = torch.minimum(moved.clamp_min(0), size.to(moved.device))
                if flips is not None:  # x1' = W - x2, x2' = W - x1
                    mirrored = torch.stack([w - moved[:, 2], moved[:, 1], w - moved[:, 0],
                                            moved[:, 3]], dim=1)
                    moved = torch.where(flips.to(moved.device)[:, None], mirrored, moved)
                out[name] = moved
        return out


class ObjectsRandomCrop(BatchRandomCrop):
    """:class:`BatchRandomCrop` that also moves each sample's ``objects`` (``[B,K,4]``,
    NaN padding rows stay NaN) with its image, as the named boxes move."""

    def __call__(self, batch: dict[str, Any], offsets: torch.Tensor | None = None,
                 flips: torch.Tensor | None = None) -> dict[str, Any]:
        """Crop (and flip) the batch and its objects; the random draws are
        :class:`BatchRandomCrop`'s, in its order."""
        b, _, h, w = batch["image"].shape
        off = self.offsets(b) if offsets is None else offsets
        if self.flip and flips is None:
            flips = torch.rand(b) < 0.5
        out = super().__call__(batch, off, flips)
        if "objects" in batch:
            boxes = batch["objects"].float()
            p = self.pad
            shift = (p - off.flip(1)).to(torch.float32).repeat(1, 2)[:, None, :]
            size = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
            moved = torch.minimum((boxes + shift.to(boxes.device)).clamp_min(0), size)
            if flips is not None:  # x1' = W - x2, x2' = W - x1
                mirrored = torch.stack([w - moved[..., 2], moved[..., 1], w - moved[..., 0],
                                        moved[..., 3]], dim=-1)
                moved = torch.where(flips.to(moved.device)[:, None, None], mirrored, moved)
            out["objects"] = moved
        return out


class LabelledObjects(Dataset[dict[str, Any]]):
    """In-memory uint8 images holding several labelled objects each: a multi-label
    dataset's samples (``labels``, ``objects``, ``object_labels``; ``bbox`` is the
    union of what the transform leaves of the objects), transformed per sample.

    Args:
        images: ``uint8 [N,3,H,W]``.
        labels: ``int64 [N]``: each sample's ``label``.
        objects: ``float [N,K,4]`` xyxy pixel boxes, NaN rows padding.
        object_labels: ``int64 [N,K]``: each object's class, -1 on padding rows.
        num_classes: the length of ``labels`` vectors.
        transform: a ``torchvision.transforms.v2`` transform taking (image, boxes).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, objects: torch.Tensor,
                 object_labels: torch.Tensor, num_classes: int,
                 transform: v2.Transform) -> None:
        self.images, self.labels, self.objects = images, labels, objects
        self.object_labels, self.num_classes = object_labels, num_classes
        self.transform = transform
        self.canvas = (int(images.shape[-2]), int(images.shape[-1]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def with_transform(self, transform: v2.Transform) -> LabelledObjects:
        """The same samples under another transform."""
        return LabelledObjects(self.images, self.labels, self.objects, self.object_labels,
                               self.num_classes, transform)

    def __getitem__(self, i: int) -> dict[str, Any]:
        classes = self.object_labels[i]
        k = int((classes >= 0).sum())
        img = tv_tensors.Image(self.images[i])
        boxes = self.objects[i, :k].float()
        if moves_pixels(self.transform):
            img_t, box_t = self.transform(img, tv_tensors.BoundingBoxes(
                boxes, format="XYXY", canvas_size=self.canvas))
            moved = box_t.as_subclass(torch.Tensor).float()
        else:  # a photometric transform leaves the boxes where they are
            img_t, moved = self.transform(img), boxes
        objects = torch.full(tuple(self.objects.shape[1:]), float("nan"))
        objects[:k] = moved
        left = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
        keep = moved[left] if left.any() else moved[:1]
        bbox = (torch.cat([keep[:, :2].min(0).values, keep[:, 2:].max(0).values]) if k
                else torch.full((4,), float("nan")))
        present = torch.zeros(self.num_classes)
        present[classes[:k]] = 1.0
        return {"label": int(self.labels[i]), "index": i, "bbox": bbox, "labels": present,
                "objects": objects, "object_labels": classes.clone(),
                "image": img_t.as_subclass(torch.Tensor)}


def make_transform(info: DatasetInfo, train: bool, pad: int = 4) -> v2.Transform:
    """Train: random crop with ``pad`` px zero padding (CIFAR-style); both: to float, normalise."""
    steps: list[v2.Transform] = []
    if train and pad > 0:
        steps.append(v2.RandomCrop(info.image_size, padding=pad))  # clamps boxes itself
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    return v2.Compose(steps)


def denormalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Undo the dataset normalisation: float ``[B,3,H,W]`` in [0,1] for display."""
    mean = torch.tensor(info.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


#: where datasets read from disk are looked for when ``data_dir`` is not given
DATA_ENV = "ATTNBENCH_DATA"


class DataDirMissing(UserError):
    """A dataset read from disk was asked for without ``--data-dir`` (or its variable)."""


def build(name: str, split: str, cache_dir: Path | None = None, *,
          data_dir: str | Path | None = None, num_workers: int = 0,
          **kwargs: Any) -> Split:
    """Build ``split`` ("train" or "test") of the registered dataset ``name``.

    Args:
        cache_dir: where a dataset may keep derived files (e.g. generated images);
            None keeps everything in memory.
        data_dir: for datasets read from disk, the folder their archive was extracted
            into or the dataset's own folder (default ``$ATTNBENCH_DATA``); the
            embedded dataset takes none.
        num_workers: decoding worker processes of the split's loaders.
        kwargs: the dataset's options (part of the run configuration), e.g.
            ``image_size``, ``n_train``, ``n_test``.

    Raises:
        UserError: unknown dataset, bad options, or missing / malformed data files
            (one line naming the file).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    entry = DATASETS.entry(name)
    if num_workers < 0:
        raise UserError(f"--workers must be 0 or more, got {num_workers}")
    if entry.meta.get("on_disk"):
        kwargs["data_dir"] = _data_dir(name, data_dir, entry.meta)
    factory = entry.obj
    check_options(factory, f"dataset {name!r}", split=split, cache_dir=cache_dir, **kwargs)
    out = factory(split=split, cache_dir=cache_dir, **kwargs)
    out.num_workers = num_workers
    return out


def _data_dir(name: str, data_dir: str | Path | None, meta: dict[str, Any]) -> Path:
    given = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV)
    source = meta.get("source", "")
    if not given:
        raise DataDirMissing(f"dataset {name!r} is read from disk: give --data-dir DIR (or set "
                        f"${DATA_ENV}), the folder its archive was extracted into"
                        + (f" ({source})" if source else ""))
    from harness.safeio import need_dir

    option = "--data-dir" if data_dir not in (None, "") else f"${DATA_ENV}"
    path = need_dir(given, option)
    if not path.is_dir():
        raise UserError(f"{option} {shown_path(path)}: no such directory (dataset {name!r})")
    return path


def check_options(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> None:
    """Raise a one-line UserError when ``fn`` does not accept these arguments."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as err:
        raise UserError(f"bad options for {what}: {err}") from None

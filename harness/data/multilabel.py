"""Multi-label datasets read from disk: records that name every class of their image,
and the samples built from them (``labels``, ``object_labels``; the sample format is
in :mod:`harness.data.core`).

A family module's reader returns :class:`MultiRecord` s and registers with
``register_photo(..., multi_label=True)``: the split is built as any photo dataset's
(checked, subset, decoded per sample under the photo transforms), then
:func:`multi_label_split` gives it the multi-label samples, info and fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.data.core import Split
from harness.data.files import ImageFiles, PhotoTransforms, Record


def _empty_labels() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class MultiRecord(Record):
    """A :class:`Record` naming every class of its image.

    Attributes:
        present: float32 ``[C]``: 1.0 for each class the image holds, else 0.0.
        object_labels: int64 ``[K]``: the class of each of ``boxes``.
        difficult: bool ``[K]``: objects the annotators marked difficult (PASCAL VOC);
            None when the dataset has no such mark.
    """

    present: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    object_labels: np.ndarray = field(default_factory=_empty_labels)
    difficult: np.ndarray | None = None


class MultiLabelFiles(ImageFiles):
    """:class:`ImageFiles` of :class:`MultiRecord` s: the samples also carry ``labels``
    and, when ``objects`` (the dataset has boxes), ``objects`` (even with one object
    an image at most), ``object_labels`` and, where the records have the mark,
    ``object_difficult`` (bool ``[K]``, False on padding rows)."""

    def __init__(self, records: Sequence[Record], sizes: Sequence[tuple[int, int]],
                 transform: Any, photo: PhotoTransforms, max_objects: int,
                 exif: bool = False, objects: bool = True) -> None:
        super().__init__(records, sizes, transform, photo, max_objects, exif)
        self.objects = objects

    def with_transform(self, transform: Any) -> MultiLabelFiles:
        """The same samples under another transform."""
        return MultiLabelFiles(self.records, self.sizes, transform, self.photo,
                               self.max_objects, self.exif, self.objects)

    def with_labels(self, labels: torch.Tensor) -> ImageFiles:
        """Refused: a permutation of ``label`` would leave ``labels`` as they were."""
        raise TypeError("multi-label samples cannot have their labels permuted (the "
                        "data-randomisation test is single-label)")

    def _sample(self, i: int) -> dict[str, Any]:
        sample = super()._sample(i)
        r = self.records[i]
        assert isinstance(r, MultiRecord)
        sample["labels"] = torch.tensor(r.present, dtype=torch.float32)
        if self.objects:
            if "objects" not in sample:  # one row: the only object's box is the union
                sample["objects"] = sample["bbox"][None].clone()
            k, rows = len(r.boxes), len(sample["objects"])
            labels = torch.full((rows,), -1, dtype=torch.long)
            labels[:k] = torch.as_tensor(r.object_labels, dtype=torch.long)
            sample["object_labels"] = labels
            if r.difficult is not None:
                difficult = torch.zeros(rows, dtype=torch.bool)
                difficult[:k] = torch.as_tensor(r.difficult, dtype=torch.bool)
                sample["object_difficult"] = difficult
        return sample


def multi_label_split(split: Split) -> Split:
    """The multi-label form of a photo dataset's split built from
    :class:`MultiRecord` s: the same records, sizes and transforms, samples with
    ``labels`` (and ``object_labels``), ``info.multi_label`` set, and a fingerprint
    that also covers every record's classes and marks."""
    ds = split.dataset
    assert isinstance(ds, ImageFiles), type(ds).__name__
    c = split.info.num_classes
    digest = hashlib.sha256(f"{split.fingerprint}:multi-label:".encode())
    for r in ds.records:
        if not isinstance(r, MultiRecord):
            raise TypeError(f"{r.where or r.path}: a {type(r).__name__}, not a MultiRecord")
        if r.present.shape != (c,) or r.object_labels.shape != (len(r.boxes),):
            raise ValueError(f"{r.where or r.path}: {r.present.shape} labels for {c} "
                             f"classes, {r.object_labels.shape} for {len(r.boxes)} boxes")
        digest.update(np.ascontiguousarray(r.present, np.float32).tobytes())
        digest.update(np.ascontiguousarray(r.object_labels, np.int64).tobytes())
        digest.update(b"-" if r.difficult is None
                      else np.ascontiguousarray(r.difficult, np.bool_).tobytes())
    info = dataclasses.replace(split.info, multi_label=True)
    files = MultiLabelFiles(ds.records, ds.sizes, ds.transform, ds.photo, ds.max_objects,
                            ds.exif, objects=info.multi_object)
    return dataclasses.replace(split, dataset=files, info=info,
                               fingerprint=digest.hexdigest()[:16])


def present(classes: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """float32 ``[num_classes]``: 1.0 at each of ``classes``."""
    out = np.zeros(num_classes, np.float32)
    out[np.asarray(classes, np.int64)] = 1.0
    return out

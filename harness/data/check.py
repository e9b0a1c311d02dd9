"""``--check-data``: scan a dataset (open every image, check every box), summarise it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from harness.data.core import LabelledObjects, Split
from harness.data.diagset import BlobPatches
from harness.data.files import DataError, ImageFiles, collecting, decode
from harness.data.multilabel import MultiRecord
from harness.progress import bars


@dataclass
class SplitSummary:
    """What a scan of one split found."""

    name: str
    images: int = 0
    classes: int = 0
    num_classes: int = 0
    heights: tuple[int, int] = (0, 0)
    widths: tuple[int, int] = (0, 0)
    boxed: int = 0
    objects: tuple[int, int] = (0, 0)
    box_area: tuple[float, float] | None = None
    #: multi-label datasets: the fewest and most classes an image holds, and the mean
    labels_per_image: tuple[int, int, float] | None = None
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"  {self.name}: {self.images} images, {self.classes} of {self.num_classes} "
               f"classes present, {self.heights[0]}-{self.heights[1]} x "
               f"{self.widths[0]}-{self.widths[1]} px (H x W)"]
        if self.box_area is not None:
            out.append(f"    boxes: {self.boxed} images with boxes, {self.objects[0]}-"
                       f"{self.objects[1]} objects per image, box area "
                       f"{100 * self.box_area[0]:.1f}-{100 * self.box_area[1]:.1f} % of the "
                       "image")
        if self.labels_per_image is not None:
            lo, hi, mean = self.labels_per_image
            out.append(f"    labels: {lo}-{hi} classes per image (mean {mean:.2f})")
        return out


class _Decoded(Dataset[dict[str, Any]]):
    """Each record decoded in full (in the loader's workers): its size or its error."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            img = decode(self.files.records[i].path, self.files.exif)
        except DataError as err:
            return {"error": str(err)}
        return {"size": tuple(img.shape[-2:])}


def scan(build: Callable[[str], Split], num_workers: int = 0, progress: bool = True
         ) -> list[SplitSummary]:
    """Build both splits collecting (not raising) per-image problems, decode every
    image and summarise. Problems that stop a split (a missing index file) end it.
    A problem both builds meet (a train class folder without images: the test split
    is built with the train classes) is listed once, under the first."""
    out: list[SplitSummary] = []
    seen: set[str] = set()

    def new(found: list[str]) -> list[str]:
        fresh = [p for p in dict.fromkeys(found) if p not in seen]
        seen.update(fresh)
        return fresh

    for split in ("train", "test"):
        summary = SplitSummary(split)
        with collecting() as problems:
            try:
                s = build(split)
            except DataError as err:
                summary.problems += new([*problems, str(err)])
                out.append(summary)
                continue
        summary.problems += new(problems)
        out.append(summarise(s, summary, num_workers, progress))
    return out


def summarise(s: Split, summary: SplitSummary, num_workers: int = 0,
              progress: bool = True) -> SplitSummary:
    ds = s.dataset
    summary.num_classes = s.info.num_classes
    present: np.ndarray | None = None  # [N,C] of a multi-label dataset
    if isinstance(ds, ImageFiles):
        labels = np.array([r.label for r in ds.records])
        if all(isinstance(r, MultiRecord) for r in ds.records):
            present = np.stack([r.present for r in ds.records])  # type: ignore[attr-defined]
        sizes = np.array(ds.sizes)
        loader = DataLoader(_Decoded(ds), batch_size=None, num_workers=num_workers)
        for i, item in enumerate(tqdm(loader, desc=f"checking {summary.name}", leave=False,
                                      disable=not bars(progress), dynamic_ncols=True)):
            if "error" in item:
                summary.problems.append(item["error"])
            elif tuple(item["size"]) != tuple(sizes[i]):
                summary.problems.append(f"{ds.records[i].path}: decoded as "
                                        f"{item['size'][1]}x{item['size'][0]} px, its header "
                                        f"said {sizes[i][1]}x{sizes[i][0]}")
        areas, counts = [], []
        for r, (h, w) in zip(ds.records, ds.sizes, strict=True):
            counts.append(len(r.boxes))
            for b in r.boxes:
                areas.append(float((b[2] - b[0]) * (b[3] - b[1])) / (h * w))
        summary.boxed = int(sum(c > 0 for c in counts))
        if areas:
            summary.box_area = (min(areas), max(areas))
            boxed = [c for c in counts if c]
            summary.objects = (min(boxed), max(boxed))
    elif isinstance(ds, BlobPatches):  # arrays of patches on disk: each read in full
        labels = ds.labels.numpy()
        sizes = np.array(ds.sizes).reshape(-1, 2)
        for problem in tqdm(ds.read_all(), total=len(ds.blobs),
                            desc=f"checking {summary.name}", leave=False,
                            disable=not bars(progress), dynamic_ncols=True):
            if problem is not None:
                summary.problems.append(problem)
    else:  # in memory (generated, or pickled arrays)
        labels = np.array([int(v) for v in ds.labels])  # type: ignore[attr-defined]
        images: torch.Tensor = ds.images  # type: ignore[attr-defined]
        sizes = np.array([tuple(images.shape[-2:])] * len(labels))
        boxes = getattr(ds, "boxes", {}).get("bbox")
        if isinstance(ds, LabelledObjects):  # several objects an image
            valid = ds.object_labels >= 0
            objects = ds.objects[valid]
            area = ((objects[:, 2] - objects[:, 0]) * (objects[:, 3] - objects[:, 1])).numpy()
            area = area / float(sizes[0][0] * sizes[0][1])
            per = valid.sum(1)
            summary.boxed, summary.objects = int((per > 0).sum()), (int(per.min()),
                                                                    int(per.max()))
            summary.box_area = (float(area.min()), float(area.max()))
            present = np.zeros((len(labels), s.info.num_classes), np.float32)
            rows, cols = valid.nonzero(as_tuple=True)
            present[rows.numpy(), ds.object_labels[rows, cols].numpy()] = 1.0
        elif boxes is not None and len(boxes):
            area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()
            area = area / float(sizes[0][0] * sizes[0][1])
            summary.boxed, summary.objects = len(area), (1, 1)
            summary.box_area = (float(area.min()), float(area.max()))
    summary.images = len(labels)
    summary.classes = len(set(labels.tolist()))
    if present is not None and len(present):
        per_image = present.sum(1)
        summary.classes = int((present.sum(0) > 0).sum())
        summary.labels_per_image = (int(per_image.min()), int(per_image.max()),
                                    float(per_image.mean()))
    summary.heights = (int(sizes[:, 0].min()), int(sizes[:, 0].max()))
    summary.widths = (int(sizes[:, 1].min()), int(sizes[:, 1].max()))
    return summary

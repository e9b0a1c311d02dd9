"""CompCars (web-nature data), car model and car maker classification, as ABN Sec. 4.2
/ Table 3 uses it.

ABN Sec. 4.2 trains VGG16 / ResNet-101 on the classification split at 323 x 224 px and
reports "car model" and "maker" accuracy; it says the training and test images are the
same for both tasks and counts 75 makers, but not how a maker label is given. Here the
maker task is the model task's images labelled by their make id (the first folder of
each path), so ``compcars-make`` and ``compcars`` share their images. The paper's
counts (432 models, 36,451 / 15,626 images) are its figures; the model classes are
those the split files name (431 in the released split).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.data.files import DataError, Record, read_lines, read_text, register_photo
from harness.data.matfiles import cell_strings, load_mat
from harness.errors import shown

MODELS = 431
MAKERS = 75
SPLIT = Path("train_test_split") / "classification"


def _ids(listing: Path) -> list[tuple[int, str, int, int]]:
    """(line, path, make id, model id) of a split file's ``<make>/<model>/<year>/<name>``
    lines."""
    out = []
    for n, parts in read_lines(listing):
        rel = parts[0]
        bits = rel.split("/")
        if len(parts) != 1 or len(bits) != 4 or not (bits[0].isdigit() and bits[1].isdigit()):
            raise DataError(f"{listing}:{n}: expected '<make id>/<model id>/<year>/<name>.jpg'"
                            f", got {shown(' '.join(parts))}")
        out.append((n, rel, int(bits[0]), int(bits[1])))
    return out


def label_boxes(path: Path) -> np.ndarray:
    """A ``data/label/.../<name>.txt`` file: line 1 the viewpoint (-1 uncertain, 1 front,
    2 rear, 3 side, 4 front-side, 5 rear-side), line 2 the number of boxes, then one
    ``x1 y1 x2 y2`` line per box, integer pixel corners. The README gives the corners
    without their origin; they are read as 1-based inclusive corners (the convention of
    the dataset's MATLAB files): [x1 - 1, x2) x [y1 - 1, y2). On 0-based corners this
    moves each box by one pixel, within the overhang every box may have."""
    lines = [ln.split() for ln in read_text(path, "label file").splitlines() if ln.strip()]
    try:
        count = int(lines[1][0])
        boxes = [[float(v) for v in ln] for ln in lines[2:]]
        int(lines[0][0])
    except (IndexError, ValueError):
        raise DataError(f"{path}: expected a viewpoint line, a box count and 'x1 y1 x2 y2' "
                        "lines") from None
    if count < 1 or len(boxes) != count or any(len(b) != 4 for b in boxes):
        raise DataError(f"{path}: says {count} box(es), holds {len(boxes)} 'x1 y1 x2 y2' "
                        "line(s)")
    return np.array([[x1 - 1, y1 - 1, x2, y2] for x1, y1, x2, y2 in boxes], np.float32)


def _reader(task: str) -> Callable[[Path, str], tuple[list[Record], list[str]]]:
    key, limit = ("model", MODELS) if task == "model" else ("make", MAKERS)

    def read(root: Path, split: str) -> tuple[list[Record], list[str]]:
        d = root / "data"
        listings = {s: _ids(d / SPLIT / f"{s}.txt") for s in ("train", "test")}
        col = 3 if task == "model" else 2
        ids: list[int] = sorted({int(row[col]) for rows in listings.values() for row in rows})
        if len(ids) > limit:
            raise DataError(f"{d / SPLIT}: train.txt and test.txt name {len(ids)} {key} ids, "
                            f"more than the {limit} of the classification task")
        mat = d / "misc" / "make_model_name.mat"
        names = cell_strings(load_mat(mat, f"{key}_names"), mat, f"{key}_names")
        classes = []
        for i in ids:
            if not 1 <= i <= len(names):
                raise DataError(f"{mat}: {key}_names has {len(names)} entries, no {key} id {i}")
            classes.append(names[i - 1])
        index = {i: k for k, i in enumerate(ids)}
        listing = d / SPLIT / f"{split}.txt"
        out = []
        for n, rel, make, model in listings[split]:
            label = d / "label" / Path(rel).with_suffix(".txt")
            out.append(Record(d / "image" / rel, index[model if task == "model" else make],
                              label_boxes(label), where=f"{listing}:{n}",
                              box_source=str(label)))
        return out, classes

    read.__doc__ = (f"CompCars' {key} task: the images of "
                    "``data/train_test_split/classification/{train,test}.txt`` (paths under "
                    "``data/image/``, ``<make id>/<model id>/<year>/<name>.jpg``); the "
                    f"classes are the distinct {key} ids of the two files, ascending, named "
                    f"by ``{key}_names`` of ``data/misc/make_model_name.mat``; boxes from "
                    "``data/label/`` (:func:`label_boxes`).")
    return read


_SOURCE = ("data.zip of the CompCars dataset (web-nature data: data/image, data/label, "
           "data/misc, data/train_test_split), extracted")
register_photo("compcars", reader=_reader("model"), marker="data/misc/make_model_name.mat",
               subdirs=("CompCars", "compcars"), num_classes=MODELS,
               official=(36451, 15626), source=_SOURCE)
register_photo("compcars-make", reader=_reader("make"),
               marker="data/misc/make_model_name.mat", subdirs=("CompCars", "compcars"),
               num_classes=MAKERS, official=(36451, 15626), source=_SOURCE)

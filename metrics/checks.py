"""Input checks of the public metric functions: a ValueError naming the argument and
its shape, instead of a silently wrong number or a bare indexing error."""

from __future__ import annotations

import math
from typing import Any

import torch


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def maps(saliency: Any, arg: str = "saliency", n: int | None = None) -> torch.Tensor:
    """``[B,H,W]`` from a ``[B,H,W]`` or ``[B,1,H,W]`` tensor of finite values."""
    if not isinstance(saliency, torch.Tensor):
        raise ValueError(f"{arg} must be a tensor, got {type(saliency).__name__}")
    s = saliency
    if s.dim() == 2:
        raise ValueError(f"{arg} has shape {_shape(s)}, a single map without a batch "
                         "dimension: give [B,H,W] or [B,1,H,W] (e.g. map[None])")
    if s.dim() == 4:
        if s.shape[1] != 1:
            raise ValueError(f"{arg} has shape {_shape(s)}: {s.shape[1]} channels, but a "
                             "saliency map has one per image ([B,1,H,W]; reduce the "
                             "channels first)")
        s = s[:, 0]
    if s.dim() != 3:
        raise ValueError(f"{arg} has shape {_shape(saliency)}: expected [B,H,W] or [B,1,H,W]")
    if n is not None and s.shape[0] != n:
        raise ValueError(f"{arg} has {s.shape[0]} maps (shape {_shape(saliency)}) for {n} "
                         "images")
    if s.is_floating_point() and not bool(torch.isfinite(s).all()):
        bad = torch.nonzero(~torch.isfinite(s).flatten(1).all(1)).flatten()[:5].tolist()
        raise ValueError(f"{arg} has non-finite values (NaN or inf) in image(s) {bad}: a "
                         "NaN would rank as the most salient pixel")
    return s


def boxes(value: Any, n: int, arg: str = "boxes", objects: bool = False) -> torch.Tensor:
    """Float ``[B,4]`` xyxy boxes for ``n`` images (with ``objects`` also ``[B,K,4]``:
    several per image); NaN rows mean no box."""
    b = torch.as_tensor(value)
    if b.dim() not in ((2, 3) if objects else (2,)) or b.shape[-1] != 4:
        raise ValueError(f"{arg} has shape {_shape(b)}: expected [B,4]"
                         + (" (or [B,K,4])" if objects else "") + " xyxy boxes")
    if b.shape[0] != n:
        raise ValueError(f"{arg} has {b.shape[0]} rows (shape {_shape(b)}) for {n} images")
    b = b.float()
    flat = b.reshape(-1, 4)
    inverted = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])  # False where NaN
    if bool(inverted.any()):
        i = int(torch.nonzero(inverted)[0])
        where = (f"row {i}" if b.dim() == 2
                 else f"image {i // b.shape[1]}, object {i % b.shape[1]}")
        coords = ", ".join(f"{v:g}" for v in flat[i].tolist())
        raise ValueError(f"{arg} {where} is inverted ({coords}): xyxy boxes need x2 >= x1 "
                         "and y2 >= y1")
    return b


def tolerance(value: Any, arg: str = "tolerance") -> float:
    """A finite distance in pixels, 0 or more."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{arg} must be a number of pixels, got {type(value).__name__}"
                         ) from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"{arg} must be a finite number of pixels >= 0, got {t:g}")
    return t


def sizes(value: Any, n: int, arg: str = "original_sizes") -> torch.Tensor:
    """Integer ``[B,2]`` (H, W) image sizes, each at least 1 pixel."""
    t = torch.as_tensor(value)
    if tuple(t.shape) != (n, 2):
        raise ValueError(f"{arg} has shape {_shape(t)}: expected [{n}, 2] (H, W per image)")
    if n and bool((~(torch.isfinite(t.double()) & (t >= 1))).any()):
        i = int(torch.nonzero(~(torch.isfinite(t.double()) & (t >= 1)).all(1))[0])
        raise ValueError(f"{arg} row {i} is {tuple(t[i].tolist())}: sizes must be "
                         "positive (H, W in pixels)")
    return t


def classes(value: Any, n: int, num_classes: int | None = None,
            arg: str = "classes") -> torch.Tensor:
    """Integer ``[B]`` class indices in ``[0, num_classes)``."""
    c = torch.as_tensor(value)
    if c.dim() != 1 or c.shape[0] != n:
        raise ValueError(f"{arg} has shape {_shape(c)}: expected [{n}], one class per image")
    if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise ValueError(f"{arg} must hold integer class indices, got dtype {c.dtype}")
    if n and num_classes is not None and (int(c.min()) < 0 or int(c.max()) >= num_classes):
        raise ValueError(f"{arg} holds {int(c.min())}..{int(c.max())}, outside the "
                         f"{num_classes} classes (0..{num_classes - 1})")
    if n and int(c.min()) < 0:
        raise ValueError(f"{arg} holds a negative class index ({int(c.min())})")
    return c.long()


def images(value: Any, arg: str = "images") -> torch.Tensor:
    """A ``[B,C,H,W]`` image batch."""
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        shape = _shape(value) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{arg} has shape {shape}: expected [B,C,H,W]")
    return value

"""Device selection and the few device-dependent speed paths, shared by training and
evaluation.

Everywhere: channels_last memory format for models and image batches (measured on the
2-core CPU default: +15 % training and +40 % inference throughput for the CIFAR ResNets).
On CUDA only: pinned host memory, non-blocking copies and bfloat16 autocast. On CPU the
arithmetic stays float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from harness.errors import UserError


def select(name: str) -> torch.device:
    """Resolve ``--device auto|cpu|cuda[:N]``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a collated batch to ``device`` (non-blocking on CUDA)."""
    nb = device.type == "cuda"
    out = {k: v.to(device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in batch.items()}
    out["image"] = channels_last(out["image"])
    return out


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """``images`` ``[B,C,H,W]`` in channels_last memory format (values unchanged)."""
    return images.contiguous(memory_format=torch.channels_last)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in channels_last memory format."""
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders should pin host memory."""
    return device.type == "cuda"

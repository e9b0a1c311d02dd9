"""Batch norm folded into the preceding convolution, for the evaluation's forward passes.

In eval mode a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so
the pair equals one convolution with rescaled weights and a bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). The causal metrics run thousands of
forward passes per image; on the CPU the batch-norm kernels are about a quarter of
their time. :func:`folded` returns a copy of a model with every such pair fused and
the batch norm replaced by an identity; the original is untouched (explanations and
gradients keep using it).

A pair is recognised structurally, where the layer order is unambiguous:

* consecutive children of an ``nn.Sequential`` (``Conv2d``, ``BatchNorm2d``);
* attributes ``convN`` / ``bnN`` of one module (the ResNet blocks of the CIFAR and timm
  families apply ``bnN`` directly to ``convN``'s output);
* pairs a module declares in a ``FOLD_PAIRS`` class attribute of attribute names.

Only exact ``nn.BatchNorm2d`` layers are folded (timm's ``BatchNormAct2d`` also applies
an activation).
The copy's outputs equal the original's up to float rounding (tested per method).
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import TypeVar

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import Dataset

_CONV_BN = re.compile(r"^conv(\d+)$")


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Attribute names ``(conv, bn)`` of the foldable pairs directly inside ``module``."""
    children = dict(module.named_children())
    pairs: list[tuple[str, str]] = []
    if isinstance(module, nn.Sequential):
        names = list(children)
        pairs += list(itertools.pairwise(names))
    for name in children:
        m = _CONV_BN.match(name)
        if m and f"bn{m.group(1)}" in children:
            pairs.append((name, f"bn{m.group(1)}"))
    pairs += list(getattr(module, "FOLD_PAIRS", ()))
    return [(c, b) for c, b in pairs
            if isinstance(children.get(c), nn.Conv2d) and type(children.get(b)) is nn.BatchNorm2d]


M = TypeVar("M", bound=nn.Module)


def folded(model: M) -> M:
    """An eval-mode copy of ``model`` with every conv -> batch-norm pair fused. Datasets
    a module keeps (copy-replace's donor images) are shared, not copied."""
    shared = {id(v): v for m in model.modules() for v in vars(m).values()
              if isinstance(v, Dataset)}
    out = copy.deepcopy(model, memo=dict(shared)).eval()
    for module in list(out.modules()):
        for conv_name, bn_name in conv_bn_pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
    return out

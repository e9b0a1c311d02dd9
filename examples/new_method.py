"""A new attention method in one file: a spatial gate on the backbone's features.

    python -m harness.run --include examples/new_method.py --methods baseline,gradcam,abn,gate

The gate a = sigmoid(conv1x1(g)) re-weights the feature map g as ABN's attention
mechanism does, g' = (1 + a) * g, and the prediction is the backbone's head on g'. The
loss is cross-entropy plus an L1 penalty on a (the gate should pick few places); the
explanation is a, upsampled to the input. Everything else — training loop, metrics,
intervals, paired tests, caches — is attnbench's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbones import SplitBackbone
from harness.data import DatasetInfo
from methods import Method, Output, register_method
from methods.base import upsample


@register_method("gate", attention=True, description="spatial gate on the features, "
                 "L1-sparse (an example plugin)")
class SpatialGate(Method):
    name = "gate"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo, sparsity: float = 0.01):
        super().__init__(backbone, info)
        self.gate = nn.Conv2d(backbone.feat_channels, 1, kernel_size=1)
        self.sparsity = sparsity

    def forward(self, x: torch.Tensor) -> Output:
        g = self.backbone.features(x)
        a = torch.sigmoid(self.gate(g))
        logits = self.backbone.head(self.backbone.last_stage((1 + a) * g))
        return Output(logits=logits, attention=a)

    def loss(self, out: Output, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        assert out.attention is not None
        ce = F.cross_entropy(out.logits.float(), batch["label"])
        l1 = out.attention.float().mean()
        loss = ce + self.sparsity * l1
        return loss, {"loss": float(loss.detach()), "gate": float(l1.detach())}

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        attention = self.forward(x).attention
        assert attention is not None
        return upsample(attention, tuple(x.shape[-2:]))

    def parameter_groups(self) -> list[tuple[str, list[nn.Module]]]:
        # the gate is randomised with the head (top-down), before the feature extractor
        groups = super().parameter_groups()
        return [groups[0], ("gate", [self.gate]), *groups[1:]]

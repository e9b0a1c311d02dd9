"""Attention Branch Network (Fukui et al., CVPR 2019; ``abn-2019-*.txt``).

Feature extractor g(x) -> attention branch -> attention map M(x) -> perception branch
on g'(x) = (1 + M(x)) * g(x) (Eq. 2, the paper's default) or M(x) * g(x) (Eq. 1).
Loss L = L_att + L_per (Eq. 3), both cross-entropy; the prediction is the perception
branch's.

The attention branch follows the authors' released code rather than the paper's text
where they differ: the K maps are aggregated into M by a 3x3 convolution (no bias)
followed by batch norm and a sigmoid, where Sec. 3.2 describes a 1x1x1 convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbones import SplitBackbone, reset_parameters
from harness.data import DatasetInfo
from harness.geometry import map_box_mask
from methods.base import Method, Output, register_method, upsample


class AttentionBranch(nn.Module):
    """ABN's attention branch (authors' code).

    trunk -> BN -> 1x1 conv to K (no bias) -> BN -> ReLU,
    then (a) 1x1 conv K->K (no bias) -> global average pool -> attention logits, and
    (b) 3x3 conv K->1 (no bias) -> BN -> sigmoid -> attention map M.

    The class maps are the output of (a) before pooling: channel c is a CAM whose
    spatial mean is the class-c attention logit. (The K-channel map *before* the K->K
    head is tied to no class: the head mixes all of its channels into every logit.)
    Every convolution is He-initialised (normal, fan-out) and every BN starts as the
    identity, as the authors' code initialises the whole network; with
    ``copy_weights`` (a pretrained backbone) the stage copy keeps the stage's weights.

    The trunk is the backbone's :meth:`~harness.backbones.SplitBackbone.attention_trunk`:
    the stride-1 copy of its last stage, followed on a backbone with fully-connected
    layers (VGG) by the 3x3 convolution that replaces them (Sec. 3.1).
    """

    #: conv -> batch-norm pairs that :func:`harness.fold.folded` may fuse for evaluation
    FOLD_PAIRS = (("to_classes", "bn_classes"), ("to_map", "bn_map"))

    def __init__(self, backbone: SplitBackbone, num_classes: int,
                 copy_weights: bool = False) -> None:
        super().__init__()
        self.stage, width = backbone.attention_trunk(keep_weights=copy_weights)
        self.bn = nn.BatchNorm2d(width)
        self.to_classes = nn.Conv2d(width, num_classes, 1, bias=False)
        self.bn_classes = nn.BatchNorm2d(num_classes)
        self.head = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.to_map = nn.Conv2d(num_classes, 1, 3, padding=1, bias=False)
        self.bn_map = nn.BatchNorm2d(1)
        if not copy_weights:
            reset_parameters(self)
        else:  # the stage copy keeps the pretrained weights (a trunk's layers after it
            # were initialised by attention_trunk)
            for name, child in self.named_children():
                if name != "stage":
                    reset_parameters(child)

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (class maps ``[B,K,h,w]``, attention logits ``[B,K]``, M ``[B,1,h,w]``).

        ``att_logits`` is the spatial mean of the class maps."""
        k_maps = F.relu(self.bn_classes(self.to_classes(self.bn(self.stage(g)))))
        cams = self.head(k_maps)
        m = torch.sigmoid(self.bn_map(self.to_map(k_maps)))
        return cams, cams.mean(dim=(2, 3)), m


@dataclass
class Attended:
    """What the feature extractor and the attention branch produce for a batch.

    Attributes:
        features: g(x), the feature extractor's output ``[B,C,h,w]``.
        class_maps: the attention branch's class maps ``[B,K,h',w']`` (the K->K
            head's output before pooling; their spatial means are ``att_logits``).
        att_logits: the attention branch's logits ``[B,K]``.
        mechanism: the attention map at g's resolution, as the mechanism uses it.
        map: the attention map at the branch's own resolution (the explanation); the
            same tensor as ``mechanism`` for ABN.
    """

    features: torch.Tensor
    class_maps: torch.Tensor
    att_logits: torch.Tensor
    mechanism: torch.Tensor
    map: torch.Tensor


class ABN(Method):
    """Attention Branch Network (Fukui et al., CVPR 2019).

    The attention branch (the authors' head: a stride-1 copy of the last stage, a K×K
    1×1 convolution whose spatial mean gives the attention logits, and M =
    sigmoid(BN(conv3×3(K maps))) the attention map) feeds the attention mechanism
    g·(1 + M) (Eq. 2) of the perception branch; L = CE(attention logits) + CE(perception
    logits) (Eq. 3). The explanation is M; the class maps are channel c of the K×K
    head's output (a CAM whose spatial mean is the class-c attention logit).

    Args:
        mechanism: ``"residual"`` for g * (1 + M) (Eq. 2, default) or ``"multiply"``
            for g * M (Eq. 1).
    """

    name = "abn"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo,
                 mechanism: str = "residual") -> None:
        super().__init__(backbone, info)
        if mechanism not in ("residual", "multiply"):
            raise ValueError(f"ABN mechanism must be 'residual' or 'multiply', got {mechanism!r}")
        self.mechanism = mechanism
        self.attention_branch = AttentionBranch(backbone, info.num_classes,
                                                copy_weights=backbone.pretrained)

    def apply_attention(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The attention mechanism: g' = g * (1 + M) or g * M."""
        return g * (1.0 + m) if self.mechanism == "residual" else g * m

    def perceive(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Perception-branch logits for features ``g`` and attention map ``m``."""
        return self.backbone.head(self.backbone.last_stage(self.apply_attention(g, m)))

    def attend(self, x: torch.Tensor) -> Attended:
        """Feature extractor and attention branch (everything but the perception)."""
        g = self.backbone.features(x)
        cams, att_logits, m = self.attention_branch(g)
        return Attended(g, cams, att_logits, m, m)

    def forward(self, x: torch.Tensor) -> Output:
        a = self.attend(x)
        return Output(logits=self.perceive(a.features, a.mechanism), att_logits=a.att_logits,
                      attention=a.mechanism, class_maps=a.class_maps, features=a.features)

    def loss(self, out: Output, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """L = L_att + L_per (Eq. 3): cross-entropy at both branches, or on a
        multi-label dataset sigmoid + binary cross-entropy (Sec. 3.3: "our training loss
        can adaptively change depending on the baseline model")."""
        return branch_losses(self, out, batch)

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The attention map M (class-agnostic), bilinearly upsampled to the input."""
        return upsample(self.attend(x).map, tuple(x.shape[-2:]))

    def parameter_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """Three groups, top-down: the perception branch (the last stage and classifier
        that :meth:`perceive` runs), the attention branch (with the modules feeding it
        alone, :meth:`attention_modules`) and the feature extractor g both share. The
        attention map M does not depend on the perception branch, so randomising it
        alone cannot change ABN's explanation although it changes the prediction."""
        b = self.backbone
        return [("perception branch", [b.last_stage, b.fc]),
                ("attention branch", self.attention_modules()),
                ("feature extractor", [b.features])]

    def attention_modules(self) -> list[nn.Module]:
        """The modules of the attention branch (ABN: the branch itself)."""
        return [self.attention_branch]

    def fixed_attention_logits(self, out: Output, boxes: torch.Tensor,
                               image_size: tuple[int, ...]) -> torch.Tensor:
        """Perception logits on g * (1 + M') with M' = M inside the box, 0 outside
        (cells of the map whose centres lie in the box; COMB Sec. 3.1), re-using the
        forward pass's g and M."""
        g, m = out.features, out.attention
        assert g is not None and m is not None
        return self.perceive(g, m * map_box_mask(boxes, m, image_size))

    def class_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The attention branch's class maps of ``classes`` ``[B,C]``: the K->K head's
        output channels, whose spatial means are the attention logits."""
        cams = self.attend(x).class_maps
        idx = classes[:, :, None, None].expand(-1, -1, *cams.shape[-2:])
        return cams.gather(1, idx)


def branch_losses(method: Method, out: Output, batch: dict[str, Any]
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """ABN's L = L_att + L_per (Eq. 3) of ``method``'s forward output ``out``, each
    branch's loss :meth:`Method.classification_loss`; returns (loss, named parts)."""
    assert out.att_logits is not None
    l_att = method.classification_loss(out.att_logits, batch)
    l_per = method.classification_loss(out.logits, batch)
    loss = l_att + l_per
    return loss, {"loss": float(loss.detach()), "l_att": float(l_att.detach()),
                  "l_per": float(l_per.detach())}


@register_method("abn", paper="Fukui et al., CVPR 2019", attention=True, multi_label=True,
                 description="Attention Branch Network, g*(1+M)")
def abn(backbone: SplitBackbone, info: DatasetInfo, mechanism: str = "residual") -> Method:
    return ABN(backbone, info, mechanism=mechanism)

"""Multi-task Attention Branch Network (Fukui et al., CVPR 2019, Sec. 3.4 and Fig. 3;
``abn-2019-*.txt``).

One attention map per task instead of ABN's single map: with T tasks (T = the dataset's
classes; on a multi-label dataset every class is a binary task, as the paper's 40
CelebA attributes),

* feature extractor: g(x), the backbone's ``features`` (as ABN);
* attention branch: the attention trunk (ABN's stride-1 copy of the last stage, Sec.
  3.1) -> BN -> a T x 1 x 1 convolution (no bias) -> T maps A^t ``[B,T,h,w]``; the
  attention-branch score of task t is GAP(A^t) (a logit: the sigmoid is in the loss);
  the attention map of task t is M^t = sigmoid(A^t);
* perception branch: g'^t = g * (1 + M^t) for every t (Eq. 2 per task), the backbone's
  last stage and head run on every g'^t, and the score of task t is output t of the
  pass on g'^t (Fig. 3: "these processes are repeated for each task");
* L = L_att + L_per (Eq. 3), each the sigmoid + binary cross-entropy of Sec. 3.4 on a
  multi-label dataset (softmax cross-entropy on a single-label one, where the method
  runs as well).

Readings and deviations (the paper's text is short; the authors' released code has no
multi-task model):

* "We apply the 14 x 14 feature maps to the attention maps" does not say how A^t
  becomes M^t. M^t = sigmoid(A^t) is our reading: it bounds each map in (0, 1) as
  single-task ABN's sigmoid bounds M, so Eq. 2 keeps its meaning per task.
* Eq. 4 of Sec. 3.4 writes g'^t = M^t * g (the mechanism of Eq. 1); the default here is
  g * (1 + M^t) (Eq. 2, ABN's default, which Sec. 3.2 recommends because it keeps the
  low-attention regions from vanishing). ``mechanism="multiply"`` gives Eq. 4 as
  written.
* The paper's perception branch has T x 2 outputs (a two-way softmax per task); here
  one logit per task with sigmoid + BCE, the same model (a two-way softmax depends
  only on the difference of its two logits).
* The paper applies the T x 1 x 1 convolution to the output of residual block 4 of a
  ResNet-101; here the branch sits where ABN's does on every backbone (the trunk
  ``SplitBackbone.attention_trunk``), with a BN before the convolution as ABN's branch
  has.
* The perception branch runs the T passes as one batch of B * T feature maps. In eval
  mode that equals T separate passes; in training mode its batch norms normalise with
  statistics pooled over the B * T maps (and update their running statistics once per
  step) where T separate passes would use the B maps of each task.
* T forward passes of the last stage make the perception branch T times as costly as
  ABN's. Its last stage runs on T maps per image, so the explainers that read the
  backbone's last stage (Grad-CAM and the like) do not apply; the explanation is the
  method's own M^t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.backbones import SplitBackbone, reset_parameters
from harness.data import DatasetInfo
from harness.geometry import map_box_mask
from methods.abn import branch_losses
from methods.base import Method, Output, register_method, upsample


class MultiTaskAttentionBranch(nn.Module):
    """The multi-task attention branch (Sec. 3.4, Fig. 3): trunk -> BN -> T x 1 x 1
    convolution (no bias) -> T maps A^t; scores GAP(A^t); maps M^t = sigmoid(A^t).

    The trunk is the backbone's :meth:`~harness.backbones.SplitBackbone.attention_trunk`
    (as :class:`methods.abn.AttentionBranch`). The convolution is He-initialised
    (normal, fan-out) and the BN starts as the identity, as ABN's branch; with
    ``copy_weights`` (a pretrained backbone) the trunk keeps the stage's weights.

    No ``FOLD_PAIRS``: the branch's own BN comes *before* its convolution, and
    :func:`harness.fold.folded` fuses only a BN that follows a convolution (the trunk's
    pairs are found structurally).
    """

    def __init__(self, backbone: SplitBackbone, num_tasks: int,
                 copy_weights: bool = False) -> None:
        super().__init__()
        self.stage, width = backbone.attention_trunk(keep_weights=copy_weights)
        self.bn = nn.BatchNorm2d(width)
        self.to_tasks = nn.Conv2d(width, num_tasks, 1, bias=False)
        if not copy_weights:
            reset_parameters(self)
        else:  # the stage copy keeps the pretrained weights
            for name, child in self.named_children():
                if name != "stage":
                    reset_parameters(child)

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (task maps A ``[B,T,h,w]``, attention logits GAP(A) ``[B,T]``,
        attention maps M = sigmoid(A) ``[B,T,h,w]``)."""
        a = self.to_tasks(self.bn(self.stage(g)))
        return a, a.mean(dim=(2, 3)), torch.sigmoid(a)


@dataclass
class TaskAttended:
    """What the feature extractor and the multi-task attention branch produce.

    Attributes:
        features: g(x) ``[B,C,h,w]``.
        class_maps: the task maps A ``[B,T,h',w']`` (their spatial means are
            ``att_logits``).
        att_logits: the attention branch's logits ``[B,T]``.
        mechanism: the maps M^t at g's resolution ``[B,T,h,w]``, as the mechanism uses
            them.
        map: the maps M^t at the branch's own resolution (the explanation); the same
            tensor as ``mechanism`` when the trunk keeps g's resolution (every backbone
            here).
    """

    features: torch.Tensor
    class_maps: torch.Tensor
    att_logits: torch.Tensor
    mechanism: torch.Tensor
    map: torch.Tensor


class MultiTaskABN(Method):
    """Multi-task ABN (Sec. 3.4): one attention map and one perception pass per task.

    Args:
        mechanism: ``"residual"`` for g * (1 + M^t) (Eq. 2 per task, default) or
            ``"multiply"`` for g * M^t (Eq. 4 as the paper writes it).
    """

    name = "abn-multitask"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo,
                 mechanism: str = "residual") -> None:
        super().__init__(backbone, info)
        if mechanism not in ("residual", "multiply"):
            raise ValueError("multi-task ABN mechanism must be 'residual' or 'multiply', "
                             f"got {mechanism!r}")
        self.mechanism = mechanism
        self.attention_branch = MultiTaskAttentionBranch(backbone, info.num_classes,
                                                         copy_weights=backbone.pretrained)

    def attend(self, x: torch.Tensor) -> TaskAttended:
        """Feature extractor and attention branch (everything but the perception)."""
        g = self.backbone.features(x)
        a, att_logits, m = self.attention_branch(g)
        mech = upsample(m, tuple(g.shape[-2:]))  # the identity when the sizes agree
        return TaskAttended(g, a, att_logits, mech, m)

    def apply_attention(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The attention mechanism per task: ``[B,T,C,h,w]`` from g ``[B,C,h,w]`` and
        M ``[B,T,h,w]``, g'^t = g * (1 + M^t) (or g * M^t)."""
        g, m = g.unsqueeze(1), m.unsqueeze(2)
        return g * (1.0 + m) if self.mechanism == "residual" else g * m

    def perceive(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Perception logits ``[B,T]``: the last stage and head on every g'^t as one batch
        of B * T maps (Eq. 5), and the score of task t from the pass on g'^t."""
        b, t = m.shape[:2]
        scores = self.backbone.head(self.backbone.last_stage(
            self.apply_attention(g, m).flatten(0, 1)))  # [B*T, T]
        return scores.view(b, t, -1).diagonal(dim1=1, dim2=2)

    def forward(self, x: torch.Tensor) -> Output:
        a = self.attend(x)
        return Output(logits=self.perceive(a.features, a.mechanism), att_logits=a.att_logits,
                      attention=a.mechanism, class_maps=a.class_maps, features=a.features)

    def loss(self, out: Output, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """L = L_att + L_per (Eq. 3): per task sigmoid + binary cross-entropy at both
        branches on a multi-label dataset (Sec. 3.4), softmax cross-entropy on a
        single-label one (:func:`methods.base.classification_loss`)."""
        return branch_losses(self, out, batch)

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target task's attention map M^target, bilinearly upsampled to the input
        ``[B,1,H,W]`` (in (0, 1))."""
        m = self.attend(x).map
        return upsample(m[torch.arange(len(m), device=m.device), target].unsqueeze(1),
                        tuple(x.shape[-2:]))

    def class_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The task maps A of ``classes`` ``[B,C]`` (before the sigmoid; their spatial
        means are the attention logits)."""
        a = self.attend(x).class_maps
        idx = classes[:, :, None, None].expand(-1, -1, *a.shape[-2:])
        return a.gather(1, idx)

    def parameter_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """ABN's three groups, top-down: the perception branch (last stage and
        classifier), the attention branch, the feature extractor both share. The maps
        M^t do not depend on the perception branch."""
        b = self.backbone
        return [("perception branch", [b.last_stage, b.fc]),
                ("attention branch", [self.attention_branch]),
                ("feature extractor", [b.features])]

    def fixed_attention_logits(self, out: Output, boxes: torch.Tensor,
                               image_size: tuple[int, ...]) -> torch.Tensor:
        """Perception logits with every task's map cut to the box: g'^t from
        M'^t = M^t inside the box, 0 outside (cells whose centres lie in the box, as
        ABN's COMB analysis), re-using the forward pass's g and M. The box is one per
        image, so the same cut applies to all T maps."""
        g, m = out.features, out.attention
        assert g is not None and m is not None
        return self.perceive(g, m * map_box_mask(boxes, m, image_size))


@register_method("abn-multitask", paper="Fukui et al., CVPR 2019 (Sec. 3.4)", attention=True,
                 multi_label=True, multi_task=True,
                 description="multi-task ABN: one map M^t = sigmoid(A^t) per task, "
                             "perception on g*(1+M^t) per task")
def abn_multitask(backbone: SplitBackbone, info: DatasetInfo,
                  mechanism: str = "residual") -> Method:
    return MultiTaskABN(backbone, info, mechanism=mechanism)

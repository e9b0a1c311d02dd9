"""Discriminative attention with soft-IoU separability and cross-layer consistency
(Wang et al., 2019; ``discriminative-attention-2019-siou.txt``).

* ``discattn-ch``      — channel-wise attention A_ch (Eqs. 3-4).
* ``discattn-px``      — pixel-wise attention A_px (Eq. 5).
* ``discattn-gradcam`` — the Table 1 ablation: the same objective with Grad-CAM maps.

Inner layer = the feature extractor's output (the penultimate stage), last layer = the
last stage's output. Per batch: the most confusing class (highest non-target logit),
both classes' maps at both layers, Mask = sigmoid(100 (A_last - 0.55 max A_last)) from
the target's last-layer map (no gradient), L = CE + sIoU_i + sIoU_l + L_ac (Eq. 9),
alpha = 0.8, the mask resized bilinearly to the inner resolution.

Choices where the paper is silent or differs in detail:

* "The last convolutional layer in the penultimate block" is read as the penultimate
  stage's output (after its residual sum and ReLU): the feature extractor's output of
  the split backbone (ResNet ``layer3``, stage 2 of the CIFAR ResNets).
* The three terms of Eq. 9 have unit weights, as printed; sIoU and L_ac are averaged
  over the batch, like the cross-entropy.
* Multi-label datasets (Sec. 4.3, Table 6; all three variants): the target attention of
  an image is the class-concurrence attention, from the gradient of the summed scores of
  every class it holds ("one-hot encoding is applied to corresponding dimensions in the
  predicted score vector"), and L_cls is the multi-label soft margin loss
  (:func:`methods.base.classification_loss`: sigmoid + binary cross-entropy, the mean
  over labels; ``train.label_loss: sum`` adds them up instead); the rest of Eq. 9 is
  unchanged. The paper does not say which class is then the most confusing one: the
  highest-scoring class the image does not hold is taken (the analogue of the highest
  non-target score); an image holding every class has none, and its two soft IoU terms
  are 0 (still counted in the batch mean). An image holding no class has an all-zero
  target attention: its soft IoU terms are 0 and its L_ac is alpha, without gradient.
  The explanation stays per class (one class's one-hot gradient), each class the
  evaluator asks for on its own.
* Gradients are those of the selected logits summed over the batch, one
  ``torch.autograd.grad`` per class set. Each sample's gradient is its own logit's
  whenever the samples do not interact between the layer and the logits: always for the
  last layer (global average pooling + linear head), and for the inner layer when batch
  norm uses running statistics. In training mode the last stage's batch norm couples
  the samples through the batch statistics (terms of order 1/B), as in any
  autograd-based attention computed on a training batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness.backbones import SplitBackbone
from harness.config import require
from harness.data import DatasetInfo
from harness.distributed import Engine, direct
from methods.base import (
    Method,
    Output,
    descend,
    register_method,
    upsample,
)
from methods.discattn_core import (
    ATTENTION,
    attention_consistency,
    class_attention,
    confusing_weights,
    most_confusing,
    object_mask,
    resize_mask,
    soft_iou,
)


class DiscriminativeAttention(Method):
    """The plain backbone trained with Eq. 9; its explanation is its own attention.

    Subclasses fix ``kind``.

    Args:
        alpha: L_ac's margin (0.8).
        create_graph: keep the gradient weights in the graph (second-order terms);
            detached by default.
    """

    #: which attention (a key of :data:`methods.discattn_core.ATTENTION`)
    kind: ClassVar[str] = ""

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo, alpha: float = 0.8,
                 create_graph: bool = False) -> None:
        super().__init__(backbone, info)
        if self.kind not in ATTENTION:
            raise TypeError(f"{type(self).__name__}: kind must be one of {sorted(ATTENTION)}")
        require(type(self).name or "discattn", "alpha", alpha, 0, 1)  # a share of attention
        self.alpha, self.create_graph = alpha, create_graph

    def layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inner features, last features, logits)."""
        inner = self.backbone.features(x)
        last = self.backbone.last_stage(inner)
        return inner, last, self.backbone.head(last)

    def forward(self, x: torch.Tensor) -> Output:
        inner, _, logits = self.layers(x)
        return Output(logits=logits, features=inner)

    def objective(self, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        """L = L_cls + sIoU_i + sIoU_l + L_ac (Eq. 9) for one batch.

        ``y``: the class indices ``[B]``, or on a multi-label dataset the 0/1 vector
        ``[B,K]`` of the classes each image holds (Sec. 4.3: class-concurrence target
        attention, the highest-scoring absent class as the confusing one, L_cls the
        multi-label soft margin loss; see the module's doc). The log ``ce`` is L_cls.
        """
        inner, last, logits = self.layers(x)
        has_conf = None
        if self.info.multi_label:
            target = y.to(logits.dtype)
            conf = confusing_weights(logits, y)
            has_conf = conf.ne(0).any(1)
        else:
            target, conf = y, most_confusing(logits, y)
        t_in, t_last = class_attention(logits, [inner, last], target, self.kind,
                                       create_graph=self.create_graph)
        c_in, c_last = class_attention(logits, [inner, last], conf, self.kind,
                                       create_graph=self.create_graph)
        t_in, t_last, c_in, c_last = (a.float() for a in (t_in, t_last, c_in, c_last))
        mask = object_mask(t_last)
        mask_in = resize_mask(mask, t_in.shape[-2:])
        s_l = soft_iou(t_last, c_last, mask)
        s_i = soft_iou(t_in, c_in, mask_in)
        if has_conf is not None:  # no confusing class: no separability term
            s_l, s_i = (torch.where(has_conf, s, torch.zeros_like(s)) for s in (s_l, s_i))
        s_l, s_i = s_l.mean(), s_i.mean()
        l_ac = attention_consistency(t_in, mask_in, self.alpha).mean()
        ce = self.classification_loss(
            logits, {"labels" if self.info.multi_label else "label": y})
        loss = ce + s_i + s_l + l_ac
        return loss, {"loss": float(loss.detach()), "ce": float(ce.detach()),
                      "siou_i": float(s_i.detach()), "siou_l": float(s_l.detach()),
                      "l_ac": float(l_ac.detach())}

    def training_step(self, batch: dict[str, Any], optimizers: Any,
                      run: Engine[Any] = direct) -> dict[str, float]:
        (opt,) = optimizers
        y = batch["labels"] if self.info.multi_label else batch["label"]
        loss, logs = run(lambda: self.objective(batch["image"], y))
        descend(opt, loss)
        return logs

    def last_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Last-layer attention of ``classes`` ``[B,C]``: ``[B,C,h,w]`` (no graph kept)."""
        with torch.enable_grad():
            x = x.detach()
            _, last, logits = self.layers(x)
            maps = [class_attention(logits, [last], classes[:, j], self.kind)[0].detach()
                    for j in range(classes.shape[1])]
        return torch.stack(maps, 1)

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The method's own last-layer attention for ``target``, at input size (one class
        an image, on a multi-label dataset too)."""
        return upsample(self.last_maps(x, target.view(-1, 1)).float(), tuple(x.shape[-2:]))

    def class_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.last_maps(x, classes)


class DiscAttnCh(DiscriminativeAttention):
    """``discattn-ch``: channel-wise attention A_ch (Eqs. 3-4)."""

    name = "discattn-ch"
    kind = "ch"
    native_explainer = "att-ch"


class DiscAttnPx(DiscriminativeAttention):
    """``discattn-px``: pixel-wise attention A_px (Eq. 5)."""

    name = "discattn-px"
    kind = "px"
    native_explainer = "att-px"


class DiscAttnGradCAM(DiscriminativeAttention):
    """``discattn-gradcam``: Grad-CAM attention (Eqs. 1-2), the Table 1 ablation."""

    name = "discattn-gradcam"
    kind = "gradcam"
    native_explainer = "gradcam"


_PAPER = "Wang et al., 2019 (discriminative attention)"
_WHAT = "soft-IoU separability + cross-layer consistency (Eq. 9)"
register_method("discattn-ch", paper=_PAPER, explainer="own attention", multi_label=True,
                description=f"{_WHAT}, channel-wise attention A_ch")(DiscAttnCh)
register_method("discattn-px", paper=_PAPER, explainer="own attention", multi_label=True,
                description=f"{_WHAT}, pixel-wise attention A_px")(DiscAttnPx)
register_method("discattn-gradcam", paper=_PAPER, explainer="own attention",
                multi_label=True,
                description=f"{_WHAT}, Grad-CAM attention (Table 1 ablation)"
                )(DiscAttnGradCAM)

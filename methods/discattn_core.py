"""Functional core of discriminative attention (Wang et al., 2019;
``discriminative-attention-2019-siou.txt``): the attention maps of Eqs. 1-5, the soft
IoU of Eq. 6, the mask of Eq. 7 and the cross-layer consistency of Eq. 8, and their
multi-label form (Sec. 4.3): the class-concurrence attention of the classes an image
holds and the confusing class among those it does not.

Maps are ``[B,h,w]``; every reduction is per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from harness.geometry import most_confusing, most_confusing_absent, soft_iou

__all__ = ["ATTENTION", "attention_consistency", "channel_attention", "class_attention",
           "confusing_weights", "gradcam_attention", "most_confusing", "most_confusing_absent",
           "object_mask", "pixel_attention", "resize_mask", "soft_iou"]

#: guards divisions by an all-zero map (the ratio is then 0)
EPS = 1e-12


def object_mask(a_last: torch.Tensor, omega: float = 100.0,
                sigma_frac: float = 0.55) -> torch.Tensor:
    """Mask (Eq. 7): sigmoid(omega (A - sigma)) with sigma = 0.55 max(A), applied to
    the map divided by its per-image maximum, A = A^last / max(A^last), so that
    sigma = 0.55 and omega acts on a map in [0, 1] whatever the map's scale.

    Deviation: Eq. 7 is printed on the raw map. Its threshold is relative already
    (0.55 of the maximum), but omega = 100 is not: A_px carries 1/K (Eq. 5) and
    gradient maps of a GAP head carry 1/(h w), so raw values of 1e-4..1e-2 give
    sigmoid(100 (A - 0.55 max A)) ~ 0.5 everywhere, a mask that selects nothing, and
    an L_ac without gradient. Dividing by the maximum is the reading under which the
    mask separates for every attention kind. Computed without gradient (a target, not
    a path); an all-zero map gives a mask of ~0.
    """
    a = a_last.detach()
    peak = a.flatten(1).max(1).values.view(-1, *([1] * (a.dim() - 1)))
    return torch.sigmoid(omega * (a / peak.clamp_min(EPS) - sigma_frac))


def attention_consistency(a_in: torch.Tensor, mask: torch.Tensor,
                          alpha: float = 0.8) -> torch.Tensor:
    """L_ac (Eq. 8): alpha - sum(A^in * Mask) / sum(A^in), ``[B]``; ``mask`` at A^in's
    resolution."""
    num = (a_in * mask).flatten(1).sum(1)
    return alpha - num / a_in.flatten(1).sum(1).clamp_min(EPS)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The last layer's mask resized bilinearly to the inner map's ``size``."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None], size=tuple(size), mode="bilinear",
                         align_corners=False)[:, 0]


def channel_attention(grad: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """A_ch (Eqs. 3-4): ReLU(sum_k alpha_k F^k), alpha_k = mean_ij ReLU(dY/dF^k_ij)."""
    alpha = F.relu(grad).mean((2, 3), keepdim=True)
    return F.relu((alpha * feat).sum(1))


def pixel_attention(grad: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """A_px (Eq. 5): ReLU((1/K) sum_k dY/dF^k * F^k) (element-wise product)."""
    return F.relu((grad * feat).mean(1))


def gradcam_attention(grad: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Eqs. 1-2): ReLU(sum_k alpha_k F^k), alpha_k = mean_ij dY/dF^k_ij."""
    alpha = grad.mean((2, 3), keepdim=True)
    return F.relu((alpha * feat).sum(1))


ATTENTION = {"ch": channel_attention, "px": pixel_attention, "gradcam": gradcam_attention}


def class_attention(logits: torch.Tensor, feats: Sequence[torch.Tensor],
                    classes: torch.Tensor, kind: str, *,
                    create_graph: bool = False) -> list[torch.Tensor]:
    """Attention maps of ``classes`` at each of ``feats`` (tensors the ``logits`` were
    computed from), via one ``torch.autograd.grad`` of the selected scores.

    ``classes`` is either class indices ``[B]`` (Y_b^{c_b}: the one-hot selection of
    the single-label objective and of every per-class explanation) or weights ``[B,K]``
    over the scores, whose weighted sum is differentiated: with the 0/1 vector of the
    classes an image holds this is the class-concurrence attention of Sec. 4.3 ("one-hot
    encoding is applied to corresponding dimensions in the predicted score vector"), the
    attention of the gradient of the summed scores of those classes. A one-hot row gives
    exactly (bit for bit) the map of its class index; a zero row gives a zero gradient
    and an all-zero map.

    Sample b's gradient is that of its own scores alone whenever samples do not
    interact between ``feats`` and ``logits`` (no batch-statistics normalisation on
    the way, e.g. batch norm in eval mode). The gradient weights are detached unless
    ``create_graph``; the feature maps keep their graph either way, so the maps are
    differentiable in F. No hooks are used and the graph is retained for the caller.
    """
    fn = ATTENTION[kind]
    if classes.dim() == 2:
        selected = (logits * classes.to(logits.dtype)).sum()
    else:
        selected = logits.gather(1, classes.view(-1, 1)).sum()
    grads = torch.autograd.grad(selected, list(feats), retain_graph=True,
                                create_graph=create_graph)
    return [fn(g if create_graph else g.detach(), f) for g, f in zip(grads, feats, strict=True)]


def confusing_weights(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Multi-label confusing class as weights for :func:`class_attention`: ``[B,K]``,
    the one-hot row of :func:`most_confusing_absent` (the highest-scoring class the
    image does not hold), a zero row where the image holds every class: that image has
    no confusing class, its soft IoU terms are 0 (the objective sets them so; the zero
    row's map is all-zero already whenever samples do not interact, see
    :func:`class_attention`)."""
    conf = most_confusing_absent(logits, present)
    hot = F.one_hot(conf.clamp_min(0), logits.shape[1]).to(logits.dtype)
    return hot * (conf >= 0).to(logits.dtype).unsqueeze(1)

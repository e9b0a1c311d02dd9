"""Explainers: how a trained model's explanation is read out, one registry entry each.

``native`` is the method's own read-out (:meth:`Method.explain`,
:meth:`Method.class_maps`). Every other explainer reads the *scored layer*, the
backbone's last stage, on any trained model whose prediction is
``head(last_stage(.))`` (GAP + linear, or VGG's pool5 and fully-connected layers; CAM
needs the former) with that stage run once per forward pass, on one map per image: the
plain backbone, the perception branch of the ABN family (the attention branch has its
own stride-1 copy of the stage, which is not the scored layer; not multi-task ABN's,
one map per task) and the discriminative-attention models. That is how "Grad-CAM of
ABN" is asked beside "ABN's own attention" on the same trained weights.

Each explainer's ``explain(x, target)`` is ``[B,1,H,W]``, >= 0, at input size, and
``class_maps(x, classes)`` is ``[B,C,h,w]`` for ``classes`` ``[B,C]`` at the scored
layer's resolution (``None`` where an explainer has none). Hooks are registered for
one call and removed when it returns or raises; parameters and their ``.grad`` are
left as they were (gradients are taken with ``torch.autograd.grad``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import LayerGradCam
from torch import nn

from harness.registry import Registry
from methods.base import Method, upsample
from methods.discattn_core import ATTENTION

Maps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ClassMaps = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Explainer:
    """An explanation read-out bound to one trained model."""

    name: str
    explain: Maps
    class_maps: ClassMaps | None


#: factory ``(method) -> Explainer``; raises :class:`NotApplicable` where it does not fit
ExplainerFactory = Callable[[Method], Explainer]
EXPLAINERS: Registry[ExplainerFactory] = Registry("explainer")


class NotApplicable(Exception):
    """The explainer does not fit this model (the reason is the message)."""


def register_explainer(name: str, *, paper: str = "", description: str = "",
                       reference: bool = False
                       ) -> Callable[[ExplainerFactory], ExplainerFactory]:
    """Register an explainer factory; ``reference``: its rows are references (not
    ranked on the explanation columns), as the random floor."""
    return EXPLAINERS.register(name, paper=paper, description=description,
                               reference=reference)


def build(name: str, method: Method) -> Explainer:
    """The explainer ``name`` bound to ``method``; :class:`NotApplicable` if it does
    not fit the model."""
    if name != "native" and name == native_equivalent(method):
        raise NotApplicable(f"{method.name}'s own explanation is {name}")
    return EXPLAINERS.get(name)(method)


def native_equivalent(method: Method) -> str | None:
    """The explainer that computes exactly what ``method``'s own read-out computes."""
    return getattr(type(method), "native_explainer", None)


class _Logits(nn.Module):
    """``method`` as a module returning logits (what captum and TorchCAM call)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method(x).logits


@contextmanager
def evaluation_mode(method: Method) -> Iterator[None]:
    """``method`` in eval mode for the block, each module's own mode restored after."""
    modes = [(m, m.training) for m in method.modules()]
    method.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def _capture(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs of ``layer`` during the block (one forward hook, always removed)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


def scored_layer(method: Method) -> nn.Module:
    """The layer every non-native explainer reads: the backbone's last stage, which the
    prediction must run exactly once, on one map per image (checked on a probe image;
    NotApplicable if not: multi-task ABN runs it on one map per task)."""
    backbone = getattr(method, "backbone", None)
    layer = getattr(backbone, "last_stage", None)
    if not isinstance(layer, nn.Module):
        raise NotApplicable(f"{method.name} has no scored layer (a model without "
                            "attnbench's backbone shape)")
    h, w = method.info.image_size
    probe = torch.zeros(1, 3, h, w, device=next(method.parameters()).device)
    with evaluation_mode(method), torch.no_grad(), _capture(layer) as seen:
        method(probe)
    if len(seen) != 1:
        raise NotApplicable(f"{method.name}'s forward runs the backbone's last stage "
                            f"{len(seen)} times; the scored layer is ambiguous")
    if len(seen[0]) != len(probe):
        raise NotApplicable(f"{method.name}'s forward runs the backbone's last stage on "
                            f"{len(seen[0]) // len(probe)} maps per image; the scored layer "
                            "is ambiguous")
    return layer


def stage_output(method: Method, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the scored layer's output ``[B,C,h,w]``, logits ``[B,K]``) of one forward pass,
    both in the autograd graph when gradients are enabled."""
    with _capture(method.backbone.last_stage) as seen:
        logits = method(x).logits
    return seen[0], logits


def per_class(one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Maps:
    """``class_maps`` from a one-class map function ``(x, classes [B]) -> [B,h,w]``."""
    def maps(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.stack([one(x, classes[:, j]) for j in range(classes.shape[1])], 1)
    return maps


def explain_from(class_maps: Maps) -> Maps:
    """``explain`` from ``class_maps``: the target's map, >= 0, upsampled to the input."""
    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = class_maps(x, target.view(-1, 1)).float().clamp_min(0)
        return upsample(m, tuple(x.shape[-2:]))
    return explain


@register_explainer("native", description="the method's own explanation")
def native(method: Method) -> Explainer:
    own_maps = type(method).class_maps is not Method.class_maps
    return Explainer("native", method.explain, method.class_maps if own_maps else None)


@register_explainer("cam", paper="Zhou et al., CVPR 2016, Eq. 2",
                    description="CAM: the head's weights times the scored layer's maps "
                                "(models whose head is GAP + linear)")
def cam(method: Method) -> Explainer:
    """M_c = sum_k w_k^c A^k of the scored layer A (bias not added); the explanation
    clips negative evidence, the class maps do not (as the ``cam`` method). Applies
    where the logits equal fc(mean_ij A) (checked on a probe image)."""
    layer = scored_layer(method)
    fc = method.backbone.fc
    if not isinstance(fc, nn.Linear):
        raise NotApplicable(f"{method.name}'s head is not linear")
    h, w = method.info.image_size
    probe = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)).to(fc.weight)
    with evaluation_mode(method), torch.no_grad():
        fmap, logits = stage_output(method, probe)
        gap_linear = torch.allclose(fc(fmap.mean((2, 3))), logits, atol=1e-4, rtol=1e-4)
    if not gap_linear:
        raise NotApplicable(f"{method.name}'s logits are not GAP + linear of {layer}")

    def class_maps(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fmap, _ = stage_output(method, x)
            return torch.einsum("bck,bkhw->bchw", fc.weight[classes], fmap)

    return Explainer("cam", explain_from(class_maps), class_maps)


@register_explainer("gradcam", paper="Selvaraju et al., ICCV 2017, Eqs. 1-2",
                    description="Grad-CAM (captum LayerGradCam) of the scored layer")
def gradcam(method: Method) -> Explainer:
    """captum's ``LayerGradCam`` on the scored layer, raw logits, ReLU (as the
    ``gradcam`` method on the baseline)."""
    layer = scored_layer(method)
    gc = LayerGradCam(_Logits(method), layer)

    def one(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return gc.attribute(x.detach(), target=classes.tolist(),
                                relu_attributions=True).detach()[:, 0]

    return Explainer("gradcam", explain_from(per_class(one)), per_class(one))


def gradient_map(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> ExplainerFactory:
    """An explainer ``fn(dY/dA, A) -> [B,h,w]`` of the scored layer's output A and the
    gradient of the class's raw logit Y (one ``torch.autograd.grad``, no hook left)."""
    def factory(method: Method) -> Explainer:
        scored_layer(method)

        def one(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                fmap, logits = stage_output(method, x.detach())
                (grad,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(),
                                              fmap)
            return fn(grad.detach(), fmap.detach())

        return Explainer(name, explain_from(per_class(one)), per_class(one))

    return factory


def _attention(kind: str) -> ExplainerFactory:
    """A_ch / A_px of the discriminative-attention paper on the scored layer."""
    return gradient_map(f"att-{kind}", ATTENTION[kind])


def gradcampp_map(grad: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, Eqs. 10 and 19 with the exponential
    of the logit, whose higher derivatives are powers of the first):
    alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3), w_k = sum_ij alpha_kij ReLU(g_kij),
    map = ReLU(sum_k w_k A^k); alpha = 0 where its denominator is 0.

    Written here rather than taken from a library: TorchCAM 0.5.0's ``GradCAMpp``
    leaves alpha = g^2 (its in-place division acts on a copy), and pytorch-grad-cam
    adds 1e-6 to the denominator, the size of g^2 itself on small models' logits."""
    g2 = grad.pow(2)
    denom = 2 * g2 + fmap.sum((2, 3), keepdim=True) * grad.pow(3)
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(g2))
    weights = (alpha * torch.relu(grad)).sum((2, 3), keepdim=True)
    return torch.relu((weights * fmap).sum(1))


register_explainer("att-ch", paper="Wang et al., 2019, Eqs. 3-4",
                   description="channel-wise attention A_ch = ReLU(sum_k mean_ij "
                               "ReLU(dY/dA^k) A^k) of the scored layer")(_attention("ch"))
register_explainer("att-px", paper="Wang et al., 2019, Eq. 5",
                   description="pixel-wise attention A_px = ReLU(mean_k dY/dA^k * A^k) "
                               "of the scored layer")(_attention("px"))


def _torchcam(name: str, cls_name: str, **kwargs: Any) -> ExplainerFactory:
    """A TorchCAM extractor on the scored layer (raw maps: ``normalized=False``)."""
    def factory(method: Method) -> Explainer:
        import torchcam.methods as tcm

        layer = scored_layer(method)
        model = _Logits(method)
        cls = getattr(tcm, cls_name)

        def one(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            with torch.enable_grad(), cls(model, target_layer=layer, input_shape=(3, h, w),
                                          **kwargs) as extractor:
                scores = model(x.detach())
                (maps,) = extractor(classes.tolist(), scores, normalized=False)
            return maps.detach()

        return Explainer(name, explain_from(per_class(one)), per_class(one))

    return factory


register_explainer("gradcampp", paper="Chattopadhay et al., WACV 2018, Eqs. 10, 19",
                   description="Grad-CAM++ of the scored layer"
                   )(gradient_map("gradcampp", gradcampp_map))
register_explainer("scorecam", paper="Wang et al., CVPR-W 2020",
                   description="Score-CAM (TorchCAM ScoreCAM) of the scored layer; one "
                               "forward pass per channel and image"
                   )(_torchcam("scorecam", "ScoreCAM", batch_size=64))


#: ``attribute(model, layer, x, classes)`` of :func:`from_attribution`
Attribute = Callable[[nn.Module, "nn.Module | None", torch.Tensor, torch.Tensor], torch.Tensor]


def channel_abs_sum(a: torch.Tensor) -> torch.Tensor:
    """``[B,h,w]`` from an attribution ``[B,C,h,w]``: the sum of ``|a|`` over the channels
    (captum's ``visualize_image_attr`` "absolute_value" sign, summed over RGB)."""
    return a.abs().sum(1)


def from_attribution(name: str, attribute: Attribute, *, layer: bool = False,
                     reduce: Callable[[torch.Tensor], torch.Tensor] = channel_abs_sum
                     ) -> ExplainerFactory:
    """An explainer from an attribution library's call (captum, pytorch-grad-cam, ...).

    Args:
        attribute: ``(model, layer, x, classes [B]) -> [B,C,h,w]`` attributions, where
            ``model`` maps images to logits and ``layer`` is the scored layer
            (:func:`scored_layer`; None unless ``layer``).
        layer: the call needs the scored layer (a model where it is ambiguous is
            :class:`NotApplicable`).
        reduce: ``[B,C,h,w] -> [B,h,w]`` (default :func:`channel_abs_sum`); its result is
            clipped at 0 and upsampled to the input for ``explain``.

    The call runs in eval mode with gradients enabled; the parameters' ``.grad`` are
    put back as they were afterwards (a library calling ``backward`` fills them)."""
    def factory(method: Method) -> Explainer:
        target_layer = scored_layer(method) if layer else None
        model = _Logits(method)

        def one(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            params = list(method.parameters())
            grads = [p.grad for p in params]
            for p in params:
                p.grad = None
            try:
                with evaluation_mode(method), torch.enable_grad():
                    a = attribute(model, target_layer, x.detach(), classes)
            finally:
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
            a = torch.as_tensor(a, device=x.device).detach().float()
            return reduce(a if a.dim() == 4 else a.unsqueeze(1))

        return Explainer(name, explain_from(per_class(one)), per_class(one))

    return factory


#: the random explainer's seed (recorded here and in the explainers' table of the docs)
RANDOM_SEED = 0
#: the random explainer's grid: one uniform value per cell, bilinearly upsampled
RANDOM_GRID = 7


def random_maps(x: torch.Tensor, seed: int = RANDOM_SEED, grid: int = RANDOM_GRID
                ) -> torch.Tensor:
    """``[B,1,H,W]``: a smooth random map per image, in [0, 1]: ``grid`` x ``grid``
    uniform values drawn from a generator seeded by ``seed`` and the image's bytes
    (float32, on the CPU), bilinearly upsampled to the input. The same image gets the
    same map whatever the batch, class, model or device; another image (a perturbed
    copy too) gets an independent one."""
    raw = x.detach().float().cpu().contiguous().numpy()
    cells = np.stack([
        np.random.default_rng([seed, int.from_bytes(hashlib.blake2b(
            img.tobytes(), digest_size=8).digest(), "little")]).random((grid, grid))
        for img in raw])
    m = torch.from_numpy(cells).float().unsqueeze(1).to(x.device)
    return upsample(m, tuple(x.shape[-2:]))


@register_explainer("random", description="a smooth random map per image (7 x 7 uniform "
                                          "values, seed 0 and the image's bytes, bilinear "
                                          "upsampling): ignores the model and the class; "
                                          "the floor every lens is read against",
                    reference=True)
def random_explainer(method: Method) -> Explainer:
    """The reference a real explanation must beat: it does not depend on the model (it
    must fail the randomisation checks) nor on the class (class sensitivity 1)."""
    k = method.info.num_classes

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bad = target[(target < 0) | (target >= k)]
        if bad.numel():
            raise IndexError(f"class {int(bad[0])} is not one of the model's {k} classes")
        return random_maps(x)

    return Explainer("random", explain, None)


__all__ = ["EXPLAINERS", "Explainer", "NotApplicable", "build", "channel_abs_sum",
           "from_attribution", "native_equivalent", "random_maps", "register_explainer",
           "scored_layer", "stage_output"]

"""The plain backbone and the post-hoc explainers that read it: CAM and Grad-CAM.

``cam`` and ``gradcam`` are registered with ``init_from="baseline"`` and zero training
epochs: they explain the trained ``baseline`` network itself.
"""

from __future__ import annotations

import torch
from captum.attr import LayerGradCam

from harness.backbones import SplitBackbone
from harness.data import DatasetInfo
from harness.errors import UserError
from methods.base import Method, Output, register_method, upsample


class Baseline(Method):
    """The plain backbone trained with cross-entropy (the "BaseModel" row).

    It has no explanation of its own; :meth:`explain` returns the model-agnostic
    centre prior (an isotropic Gaussian centred on the image, sigma = 1/4 of the short
    side), the "centre" reference of TorchRay's pointing-game benchmark. Its
    explanation metrics are therefore the floor that a real explanation should beat.
    """

    name = "baseline"

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=self.backbone(x))

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        sigma = min(h, w) / 4.0
        ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5 - h / 2
        xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5 - w / 2
        g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
        return g.expand(x.shape[0], 1, h, w).clone()


class CAM(Baseline):
    """Class activation mapping (Zhou et al., CVPR 2016, Eq. 2): M_c = sum_k w_k^c f_k.

    ``f_k`` is the last conv stage's output and ``w^c`` the row of the GAP-linear head;
    the bias is not added. Deviation: the explanation clips negative evidence to 0
    (as Grad-CAM's ReLU does) so that every explanation is a non-negative map;
    :meth:`class_maps` returns the unclipped maps.

    A backbone with fully-connected layers (VGG, ``head_kind`` ``"fc"``) is refused
    rather than converted: CAM explains the trained ``baseline`` as it is, and the CAM
    paper's VGG-GAP (Sec. 2: pool5 and the fully-connected layers replaced by a 3x3
    convolution of 1024 channels, GAP and a linear layer) is another network that must
    be trained as such; it is registered as a backbone of its own (``vgg16-gap``).
    """

    name = "cam"
    init_from = "baseline"
    native_explainer = "cam"

    def class_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone.last_stage(self.backbone.features(x))
        weights = self.backbone.fc.weight[classes]  # [B,C,k]
        return torch.einsum("bck,bkhw->bchw", weights, fmap)

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cam = self.class_maps(x, target.view(-1, 1)).clamp_min(0)
        return upsample(cam, tuple(x.shape[-2:]))


class GradCAM(Baseline):
    """Grad-CAM (Selvaraju et al., ICCV 2017, Eqs. 1-2) on the last conv stage.

    alpha_k^c = mean_ij d y^c / d A^k_ij with ``y^c`` the raw logit; map =
    ReLU(sum_k alpha_k^c A^k). Computed by captum's ``LayerGradCam``, which removes its
    hooks when it returns or raises; inputs and parameters are left as they were.
    """

    name = "gradcam"
    init_from = "baseline"
    native_explainer = "gradcam"

    def class_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Grad-CAM maps of ``classes`` ``[B,C]`` at the last stage's resolution."""
        gc = LayerGradCam(self.backbone, self.backbone.last_stage)
        with torch.enable_grad():
            maps = [gc.attribute(x.detach(), target=classes[:, j].tolist(),
                                 relu_attributions=True).detach()
                    for j in range(classes.shape[1])]
        return torch.cat(maps, 1)

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return upsample(self.class_maps(x, target.view(-1, 1)), tuple(x.shape[-2:]))


@register_method("baseline", explainer="centre prior", reference=True, multi_label=True,
                 description="plain backbone, cross-entropy; explanation = centre prior "
                 "(a reference floor, not ranked on explanation metrics)")
def baseline(backbone: SplitBackbone, info: DatasetInfo) -> Method:
    return Baseline(backbone, info)


@register_method("cam", init_from="baseline", train={"epochs": 0}, multi_label=True,
                 paper="Zhou et al., CVPR 2016", description="CAM on the trained baseline")
def cam(backbone: SplitBackbone, info: DatasetInfo) -> Method:
    if backbone.head_kind != "gap-linear":
        raise UserError(f"method 'cam' needs a GAP + linear head; this backbone's head is "
                        f"{backbone.head_kind!r} (fully-connected layers): use gradcam, or "
                        "the CAM paper's VGG-GAP backbone (vgg16-gap, vgg16-bn-gap)")
    return CAM(backbone, info)


@register_method("gradcam", init_from="baseline", train={"epochs": 0}, multi_label=True,
                 paper="Selvaraju et al., ICCV 2017",
                 description="Grad-CAM (captum LayerGradCam) on the trained baseline")
def gradcam(backbone: SplitBackbone, info: DatasetInfo) -> Method:
    return GradCAM(backbone, info)

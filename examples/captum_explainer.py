"""Library attributions as explainers, through one adapter: captum's Integrated
Gradients, and pytorch-grad-cam's Eigen-CAM of the scored layer.

    python -m harness.run --include examples/captum_explainer.py --methods baseline,abn \\
        --explainers native,captum-ig,pgc-eigencam

``from_attribution`` turns any ``attribute(model, layer, x, classes)`` returning
``[B,C,h,w]`` into an explainer: eval mode, gradients on, the parameters' gradients put
back, |a| summed over the channels (or ``reduce``), clipped at 0 and upsampled to the
input. Every metric then scores it as it scores Grad-CAM, on every trained model it fits.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from torch import nn

from methods.explainers import from_attribution, register_explainer

#: integration steps: each explanation costs this many forward and backward passes
IG_STEPS = 8


def integrated_gradients(model: nn.Module, layer: nn.Module | None, x: torch.Tensor,
                         classes: torch.Tensor) -> torch.Tensor:
    """Sundararajan et al. (ICML 2017), zero baseline, Riemann-trapezoid steps."""
    ig = IntegratedGradients(model)
    return ig.attribute(x, target=classes.tolist(), n_steps=IG_STEPS,
                        method="riemann_trapezoid")


def eigen_cam(model: nn.Module, layer: nn.Module | None, x: torch.Tensor,
              classes: torch.Tensor) -> torch.Tensor:
    """Muhammad & Yeasin (IJCNN 2020): the first principal component of the scored
    layer's activations (class-agnostic), from pytorch-grad-cam (imported when used)."""
    from pytorch_grad_cam import EigenCAM

    assert layer is not None
    with EigenCAM(model, target_layers=[layer]) as cam:
        maps = cam(x, targets=None)  # [B,H,W] numpy, min-max scaled, at input size
    return torch.from_numpy(maps).unsqueeze(1)


register_explainer("captum-ig", paper="Sundararajan et al., ICML 2017",
                   description=f"Integrated Gradients (captum), zero baseline, {IG_STEPS} "
                               "steps, |a| summed over RGB")(
    from_attribution("captum-ig", integrated_gradients))
register_explainer("pgc-eigencam", paper="Muhammad & Yeasin, IJCNN 2020",
                   description="Eigen-CAM (pytorch-grad-cam) of the scored layer")(
    from_attribution("pgc-eigencam", eigen_cam, layer=True))

"""Known-answer and cross-checks for CAM and Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.backbones import SplitBackbone
from harness.data import DIGITS_INFO
from methods.posthoc import CAM, GradCAM
from tests.conftest import all_hooks


def tiny_backbone() -> SplitBackbone:
    """features = identity, last stage = identity 1x1 conv on 2 channels, fc hand-set."""
    last = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        last.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    bb = SplitBackbone(nn.Identity(), last, out_channels=2, feat_channels=2, num_classes=2)
    with torch.no_grad():
        bb.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        bb.fc.bias.copy_(torch.tensor([5.0, -3.0]))
    return bb


# F_0 and F_1 of one 2x2 image
X = torch.tensor([[[[1.0, 0.0], [2.0, -1.0]], [[0.0, 1.0], [-1.0, 3.0]]]])


def test_cam_known_answer() -> None:
    cam = CAM(tiny_backbone(), DIGITS_INFO)
    maps = cam.class_maps(X, torch.tensor([[0, 1]]))
    # class 0: F0 + 2 F1 ; class 1: -F0 + F1  (bias not added)
    assert torch.equal(maps[0, 0], torch.tensor([[1.0, 2.0], [0.0, 5.0]]))
    assert torch.equal(maps[0, 1], torch.tensor([[-1.0, 1.0], [-3.0, 4.0]]))
    expl = cam.explain(X, torch.tensor([1]))
    assert expl.shape == (1, 1, 2, 2)  # already at input size: no resize
    assert torch.equal(expl[0, 0], torch.tensor([[0.0, 1.0], [0.0, 4.0]]))


def test_gradcam_known_answer() -> None:
    gc = GradCAM(tiny_backbone(), DIGITS_INFO)
    # d y_c / d A_k = W[c,k] / (h*w): alpha = W[c] / 4 ; map = ReLU(sum_k alpha_k F_k)
    expl = gc.explain(X, torch.tensor([1]))
    assert torch.allclose(expl[0, 0], torch.tensor([[0.0, 0.25], [0.0, 1.0]]))
    expl0 = gc.explain(X, torch.tensor([0]))
    assert torch.allclose(expl0[0, 0], torch.tensor([[0.25, 0.5], [0.0, 1.25]]))


class Nonlinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.last_stage = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Tanh())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.last_stage(self.features(x)) ** 2)


def nonlinear_backbone() -> SplitBackbone:
    net = Nonlinear()
    bb = SplitBackbone(net.features, net.last_stage, 6, 4, 5)
    bb.forward = net.forward  # type: ignore[method-assign]
    bb._net = net  # keep the head's parameters registered
    return bb


def direct_gradcam(bb: SplitBackbone, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at layer resolution from torch.autograd.grad (Selvaraju et al. Eqs. 1-2)."""
    a = bb.last_stage(bb.features(x))
    logits = bb._net.fc(a**2)  # type: ignore[operator]
    y = logits.gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(y, a)
    alpha = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * a).sum(1, keepdim=True)).detach()


def test_gradcam_matches_autograd_on_nonlinear_head() -> None:
    torch.manual_seed(1)
    bb = nonlinear_backbone()
    gc = GradCAM(bb, DIGITS_INFO).eval()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 3, 4])
    ref = direct_gradcam(bb, x, t)
    ours = gc.explain(x, t)
    assert ref.abs().sum() > 0
    up = F.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(ours, up, atol=1e-6)


def test_gradcam_class_maps_are_per_class_layer_maps() -> None:
    torch.manual_seed(2)
    bb = nonlinear_backbone()
    gc = GradCAM(bb, DIGITS_INFO).eval()
    x = torch.randn(3, 3, 16, 16)
    classes = torch.tensor([[0, 1], [3, 2], [4, 0]])
    maps = gc.class_maps(x, classes)
    assert maps.shape == (3, 2, 8, 8)
    for j in range(2):
        assert torch.allclose(maps[:, j:j + 1], direct_gradcam(bb, x, classes[:, j]),
                              atol=1e-6)
    assert not torch.allclose(maps[:, 0], maps[:, 1])


def test_gradcam_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import GradCAM as PGC
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(2)
    bb = nonlinear_backbone().eval()
    x = torch.randn(2, 3, 16, 16)
    t = [1, 2]
    with PGC(model=bb, target_layers=[bb.last_stage]) as pgc:
        theirs = pgc(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t])
    ours_layer = direct_gradcam(bb, x, torch.tensor(t))[:, 0].numpy()
    # pytorch-grad-cam: min-max + resize per layer, then min-max of the layer aggregate
    ours = scale_cam_image(scale_cam_image(ours_layer, (16, 16)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # and our method's map is the same map before resizing
    gc = GradCAM(bb, DIGITS_INFO)
    ours_method = gc.explain(x, torch.tensor(t))
    ref_up = F.interpolate(torch.from_numpy(ours_layer)[:, None], size=(16, 16),
                           mode="bilinear", align_corners=False)
    assert torch.allclose(ours_method, ref_up, atol=1e-6)


def test_gradcam_leaves_no_hooks_after_exception() -> None:
    bb = nonlinear_backbone()
    gc = GradCAM(bb, DIGITS_INFO)
    n0 = all_hooks(bb)
    with pytest.raises((IndexError, RuntimeError, AssertionError)):
        gc.explain(torch.randn(1, 3, 16, 16), torch.tensor([99]))  # no class 99
    assert all_hooks(bb) == n0
    assert all(p.grad is None for p in bb.parameters())

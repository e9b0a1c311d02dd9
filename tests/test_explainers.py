"""The explainer registry (``methods.explainers``): contract on every method, known
answers on hand-set tensors, equality with the post-hoc methods, with the
discriminative-attention formulas and with pytorch-grad-cam, and NotApplicable where
an explainer does not fit the model."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import config, data, train
from harness.backbones import SplitBackbone
from harness.data import DIGITS_INFO
from methods import discattn_core
from methods.abn import ABN
from methods.base import METHODS, Method, Output, upsample
from methods.explainers import (
    EXPLAINERS,
    Explainer,
    NotApplicable,
    build,
    native_equivalent,
    scored_layer,
    stage_output,
)
from methods.msabn import MSABN
from methods.posthoc import CAM, Baseline, GradCAM
from tests.conftest import all_hooks

NON_NATIVE = [e for e in EXPLAINERS.names() if e != "native"]
#: the explainers that read the scored layer (all but native and random)
LAYER_READING = [e for e in NON_NATIVE if e != "random"]
#: one method per distinct inference path (forward, attend, explain, class_maps); the
#: ABN fine-tunes (abn-amb, -cot, -comb, -hk) and msabn-puzzle / msabn-cr inherit
#: abn's / msabn's, which test_representatives_cover_every_method checks. The full
#: matrix would triple the file's runtime for no new code path.
REPRESENTATIVES = ("baseline", "cam", "gradcam", "abn", "abn-multitask", "msabn",
                   "discattn-ch", "discattn-px", "discattn-gradcam")
#: methods whose forward runs the scored layer on several maps per image (multi-task
#: ABN: one per task), which the layer-reading explainers refuse
PER_TASK_PERCEPTION = ("abn-multitask",)
INFERENCE = ("forward", "attend", "perceive", "apply_attention", "explain", "class_maps",
             "layers", "last_maps")
#: exceptions an explainer may raise for a class index beyond the head (captum's and
#: TorchCAM's gathers raise RuntimeError, fancy indexing IndexError)
BAD_CLASS_ERRORS = (IndexError, RuntimeError, ValueError, AssertionError)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _images(split: data.Split, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([split.dataset[i]["image"] for i in range(n)])
    y = torch.tensor([int(split.dataset[i]["label"]) for i in range(n)])
    return x, y


def _method(name: str, cfg: config.RunConfig, split: data.Split) -> Method:
    return train.build_method(name, cfg, split).eval()


def _params(method: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in method.named_parameters()}


def _modes(method: nn.Module) -> dict[str, bool]:
    return {k: m.training for k, m in method.named_modules()}


def _assert_untouched(method: nn.Module, params: dict[str, torch.Tensor],
                      modes: dict[str, bool], hooks: int) -> None:
    assert all_hooks(method) == hooks
    assert all(p.grad is None for p in method.parameters())
    now = dict(method.named_parameters())
    assert all(torch.equal(now[k].detach(), v) for k, v in params.items())
    assert _modes(method) == modes


def _grad_and_feat(method: Method, x: torch.Tensor, classes: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dY^c/dA, A) of the backbone's last stage, by hand: A = last_stage(features(x)),
    logits = head(A) (the plain backbone), gradient by torch.autograd.grad."""
    bb = method.backbone
    with torch.enable_grad():
        feat = bb.last_stage(bb.features(x))
        logits = bb.head(feat)
        (grad,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), feat)
    return grad.detach(), feat.detach()


def _minmax(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` without resizing (per-image min-max)."""
    lo = m.min(axis=(1, 2), keepdims=True)
    m = m - lo
    return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))


def gradcampp_reference(grad: torch.Tensor, feat: torch.Tensor, eps: float = 0.0
                        ) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, Eqs. 7 and 19), ``[B,h,w]``:
    alpha_ij^k = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3 + eps), w_k = sum_ij
    alpha_ij^k ReLU(g_ij), map = ReLU(sum_k w_k A^k). Only g > 0 enters (ReLU(g) = 0
    otherwise). ``eps``: the libraries' guard (pytorch-grad-cam 1e-6, TorchCAM 1e-8),
    not negligible when g^2 is ~1e-6 (gradients of a GAP head over 64 cells)."""
    s = feat.sum((2, 3), keepdim=True)
    g2 = grad**2
    alpha = torch.where(grad > 0, g2 / (2 * g2 + s * g2 * grad + eps),
                        torch.zeros_like(grad))
    w = (alpha * F.relu(grad)).sum((2, 3), keepdim=True)
    return F.relu((w * feat).sum(1))


def scorecam_reference(method: Method, x: torch.Tensor, classes: torch.Tensor
                       ) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPR-W 2020), ``[B,h,w]``, by hand with TorchCAM's
    conventions: each channel min-max normalised at the layer's resolution
    ((A - min) / (max - min + 1e-8)), upsampled bilinearly (align_corners=False), the
    masked input's target logit minus the unmasked one, softmax over channels,
    ReLU(sum_k w_k A^k)."""
    with torch.no_grad():
        feat, logits = stage_output(method, x)
        a = feat - feat.amin((2, 3), keepdim=True)
        a = a / (a.amax((2, 3), keepdim=True) + 1e-8)
        masks = F.interpolate(a, size=tuple(x.shape[-2:]), mode="bilinear",
                              align_corners=False)
        out = []
        for b in range(x.shape[0]):
            c = int(classes[b])
            scores = method(x[b:b + 1] * masks[b][:, None]).logits[:, c] - logits[b, c]
            w = torch.softmax(scores, 0)
            out.append(F.relu((w[:, None, None] * feat[b]).sum(0)))
    return torch.stack(out)


def toy(seed: int = 0, size: int = 4, fc_scale: float = 10.0) -> Baseline:
    """A small conv net whose last stage keeps the input's resolution (stride 1), so
    CAM-style maps need no resizing; the head's weights are scaled so gradients at the
    last stage are O(0.1-1) (pytorch-grad-cam's eps of 1e-6 is then negligible)."""
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    last = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    bb = SplitBackbone(features, last, out_channels=6, feat_channels=4, num_classes=5)
    with torch.no_grad():
        bb.fc.weight.mul_(fc_scale)
    info = dataclasses.replace(DIGITS_INFO, num_classes=5, image_size=(size, size))
    return Baseline(bb, info).eval()


def tiny() -> Baseline:
    """Hand-checkable: features keep input channels 0 and 1 (a 1x1 conv), the last stage
    is the identity (1x1 conv), fc = [[1, 2], [-1, 1]], bias [5, -3]; 2x2 images."""
    feat = nn.Conv2d(3, 2, 1, bias=False)
    last = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        feat.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
        last.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    bb = SplitBackbone(nn.Sequential(feat), last, out_channels=2, feat_channels=2,
                       num_classes=2)
    with torch.no_grad():
        bb.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        bb.fc.bias.copy_(torch.tensor([5.0, -3.0]))
    info = dataclasses.replace(DIGITS_INFO, num_classes=2, image_size=(2, 2))
    return Baseline(bb, info).eval()


# F^0 and F^1 of one 2x2 image (channel 2 is dropped by tiny()'s feature extractor)
F0 = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
F1 = torch.tensor([[0.0, 1.0], [-1.0, 3.0]])
X_TINY = torch.stack([F0, F1, torch.full((2, 2), 7.0)])[None]


# --------------------------------------------------------------------------------------
# 1. the contract, every method x every explainer
# --------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(EXPLAINERS.names()) == {"native", "cam", "gradcam", "att-ch", "att-px",
                                       "gradcampp", "scorecam", "random"}


def test_representatives_cover_every_method(smoke_cfg: config.RunConfig,
                                           smoke_test: data.Split) -> None:
    """Every registered method runs the inference code of one of REPRESENTATIVES."""
    def code(name: str) -> tuple[object, ...]:
        cls = type(train.build_method(name, smoke_cfg, smoke_test))
        return (getattr(cls, "native_explainer", None),
                *(getattr(cls, f, None) for f in INFERENCE))
    covered = {code(n) for n in REPRESENTATIVES}
    assert all(code(n) in covered for n in METHODS.names())


@pytest.mark.parametrize("explainer", EXPLAINERS.names())
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_contract(name: str, explainer: str, smoke_cfg: config.RunConfig,
                  smoke_test: data.Split) -> None:
    """Shapes, finiteness, >= 0; no hooks, gradients, parameter or mode changes, also
    after a call that raises; explain under no_grad == class_maps' first column (taken
    with gradients enabled), clipped and upsampled. Every explainer applies to every
    method except the one that computes the method's own read-out (and the
    layer-reading ones to a method in PER_TASK_PERCEPTION)."""
    method = _method(name, smoke_cfg, smoke_test)
    n = 2 if explainer == "scorecam" else 4  # Score-CAM: one forward per channel and image
    x, y = _images(smoke_test, n)
    x0 = x.clone()
    params, modes, hooks = _params(method), _modes(method), all_hooks(method)
    if explainer == native_equivalent(method):
        with pytest.raises(NotApplicable):
            build(explainer, method)
        _assert_untouched(method, params, modes, hooks)
        return
    if name in PER_TASK_PERCEPTION and explainer in LAYER_READING:
        with pytest.raises(NotApplicable, match="maps per image"):
            build(explainer, method)
        _assert_untouched(method, params, modes, hooks)
        return
    ex = build(explainer, method)
    assert isinstance(ex, Explainer) and ex.name == explainer
    _assert_untouched(method, params, modes, hooks)

    with torch.no_grad():  # as the evaluator calls it; gradients are enabled inside
        s = ex.explain(x, y)
    assert s.shape == (n, 1, *x.shape[-2:])
    assert torch.isfinite(s).all() and (s >= 0).all()
    _assert_untouched(method, params, modes, hooks)

    classes = torch.stack([y, (y + 1) % smoke_test.info.num_classes], 1)
    if ex.class_maps is None:
        assert (explainer == "native" and name == "baseline") or explainer == "random"
    else:
        cm = ex.class_maps(x, classes)
        assert cm is not None and cm.shape[:2] == (n, 2)
        assert torch.isfinite(cm).all()
        _assert_untouched(method, params, modes, hooks)
        if explainer != "native":
            # at the scored layer's resolution; explain is column 0, clipped, upsampled
            with torch.no_grad():
                fmap, _ = stage_output(method, x)
            assert cm.shape[2:] == fmap.shape[2:]
            assert torch.allclose(upsample(cm[:, :1].clamp_min(0), tuple(x.shape[-2:])), s,
                                  atol=1e-6)
    assert torch.equal(x, x0)

    # a class beyond the head: the call raises and still leaves nothing behind
    bad = torch.full_like(y, 99)
    if explainer != "native":
        with pytest.raises(BAD_CLASS_ERRORS):
            ex.explain(x, bad)
        _assert_untouched(method, params, modes, hooks)
    if ex.class_maps is not None:
        with pytest.raises(BAD_CLASS_ERRORS):
            ex.class_maps(x, bad.view(-1, 1))
        _assert_untouched(method, params, modes, hooks)


@pytest.mark.parametrize("explainer", NON_NATIVE)
@pytest.mark.parametrize("name", ["baseline", "abn", "msabn", "discattn-ch"])
def test_train_mode_kept(name: str, explainer: str, smoke_cfg: config.RunConfig,
                         smoke_test: data.Split) -> None:
    """A model in training mode stays in training mode (every module), its parameters
    unchanged and without gradients. (Batch-norm running statistics do move: a forward
    pass in training mode updates them, as any forward pass would.)"""
    method = train.build_method(name, smoke_cfg, smoke_test).train()
    if explainer == native_equivalent(method):
        with pytest.raises(NotApplicable):
            build(explainer, method)
        return
    x, y = _images(smoke_test, 2)
    params, modes, hooks = _params(method), _modes(method), all_hooks(method)
    ex = build(explainer, method)
    assert method.training
    s = ex.explain(x, y)
    assert s.shape == (2, 1, *x.shape[-2:]) and torch.isfinite(s).all()
    _assert_untouched(method, params, modes, hooks)


def test_mixed_module_modes_kept(smoke_cfg: config.RunConfig,
                                 smoke_test: data.Split) -> None:
    method = train.build_method("baseline", smoke_cfg, smoke_test).train()
    method.backbone.features.eval()  # e.g. a frozen feature extractor
    modes = _modes(method)
    build("gradcam", method)
    assert _modes(method) == modes


# --------------------------------------------------------------------------------------
# 2. known answers
# --------------------------------------------------------------------------------------


def test_known_answers_on_tiny_tensors() -> None:
    """tiny(): A = (F^0, F^1), Y_c = sum_k W[c,k] mean(A^k) + b_c, so dY_c/dA^k_ij =
    W[c,k] / 4 everywhere (2x2 map)."""
    m = tiny()
    cls = torch.tensor([[0, 1]])
    # CAM: W[c] . A (no bias): class 0 F0 + 2 F1, class 1 -F0 + F1
    cam = build("cam", m).class_maps
    assert cam is not None
    assert torch.equal(cam(X_TINY, cls)[0], torch.stack([F0 + 2 * F1, F1 - F0]))
    # Grad-CAM: ReLU(sum_k W[c,k]/4 A^k)
    gc = build("gradcam", m).class_maps
    assert gc is not None
    assert torch.allclose(gc(X_TINY, cls)[0], torch.tensor(
        [[[0.25, 0.5], [0.0, 1.25]], [[0.0, 0.25], [0.0, 1.0]]]))
    # A_ch: alpha_k = mean_ij ReLU(W[c,k]/4) = ReLU(W[c,k])/4; ReLU(sum_k alpha_k A^k)
    ch = build("att-ch", m).class_maps
    assert ch is not None
    assert torch.allclose(ch(X_TINY, cls)[0], torch.tensor(
        [[[0.25, 0.5], [0.0, 1.25]], [[0.0, 0.25], [0.0, 0.75]]]))
    # A_px: ReLU(mean_k W[c,k]/4 * A^k) = ReLU((W[c,0] F0 + W[c,1] F1) / 8)
    px = build("att-px", m).class_maps
    assert px is not None
    assert torch.allclose(px(X_TINY, cls)[0], torch.tensor(
        [[[0.125, 0.25], [0.0, 0.625]], [[0.0, 0.125], [0.0, 0.5]]]))
    # explain: the target's map, >= 0, already at input size
    assert torch.equal(build("cam", m).explain(X_TINY, torch.tensor([1]))[0, 0],
                       torch.tensor([[0.0, 1.0], [0.0, 4.0]]))


def test_cam_equals_cam_method_and_eq2_identity(smoke_cfg: config.RunConfig,
                                                smoke_test: data.Split) -> None:
    base = _method("baseline", smoke_cfg, smoke_test)
    cam_method = _method("cam", smoke_cfg, smoke_test)
    assert isinstance(cam_method, CAM)
    cam_method.load_state_dict(base.state_dict())
    x, y = _images(smoke_test)
    k = smoke_test.info.num_classes
    every = torch.arange(k).expand(x.shape[0], k)
    ex = build("cam", base)
    assert ex.class_maps is not None
    ours = ex.class_maps(x, every)
    with torch.no_grad():
        theirs = cam_method.class_maps(x, every)
        logits = base(x).logits
    assert torch.equal(ours, theirs)
    assert torch.equal(ex.explain(x, y), cam_method.explain(x, y).detach())
    assert ex.explain(x, y).sum() > 0
    # CAM Eq. 2 for a GAP + linear head: mean_ij M_c + b_c = Y_c
    assert torch.allclose(ours.mean((2, 3)) + base.backbone.fc.bias, logits, atol=1e-5)


def test_gradcam_equals_gradcam_method(smoke_cfg: config.RunConfig,
                                       smoke_test: data.Split) -> None:
    base = _method("baseline", smoke_cfg, smoke_test)
    gc_method = _method("gradcam", smoke_cfg, smoke_test)
    assert isinstance(gc_method, GradCAM)
    gc_method.load_state_dict(base.state_dict())
    x, y = _images(smoke_test)
    classes = torch.stack([y, (y + 3) % smoke_test.info.num_classes], 1)
    ex = build("gradcam", base)
    assert ex.class_maps is not None
    ours = ex.class_maps(x, classes)
    assert ours.sum() > 0
    assert torch.allclose(ours, gc_method.class_maps(x, classes), atol=1e-6)
    assert torch.allclose(ex.explain(x, y), gc_method.explain(x, y), atol=1e-6)


@pytest.mark.parametrize("kind", ["ch", "px"])
def test_attention_equals_discattn_core_by_hand(kind: str, smoke_cfg: config.RunConfig,
                                                smoke_test: data.Split) -> None:
    """att-ch / att-px on the plain baseline == discattn_core's A_ch / A_px of the
    gradient computed by hand; and independently the formula in plain tensor ops."""
    base = _method("baseline", smoke_cfg, smoke_test)
    x, y = _images(smoke_test)
    classes = torch.stack([y, (y + 1) % smoke_test.info.num_classes], 1)
    maps = build(f"att-{kind}", base).class_maps
    assert maps is not None
    ours = maps(x, classes)
    fn = (discattn_core.channel_attention if kind == "ch"
          else discattn_core.pixel_attention)
    for j in range(classes.shape[1]):
        grad, feat = _grad_and_feat(base, x, classes[:, j])
        ref = fn(grad, feat)
        assert ref.sum() > 0
        assert torch.allclose(ours[:, j], ref, atol=1e-6)
        if kind == "px":  # ReLU(mean_k dY/dF^k * F^k)
            by_hand = (grad * feat).sum(1).div(feat.shape[1]).clamp_min(0)
        else:  # ReLU(sum_k mean_ij ReLU(dY/dF^k) F^k)
            by_hand = torch.einsum("bk,bkhw->bhw", grad.clamp_min(0).mean((2, 3)),
                                   feat).clamp_min(0)
        assert torch.allclose(ours[:, j], by_hand, atol=1e-6)


def test_att_ch_on_discattn_px_equals_discattn_ch_own(smoke_cfg: config.RunConfig,
                                                      smoke_test: data.Split) -> None:
    """att-ch of a discattn-px model == discattn-ch's own read-out on the same weights
    (att-ch on discattn-ch itself is NotApplicable by design)."""
    px_model = _method("discattn-px", smoke_cfg, smoke_test)
    ch_model = _method("discattn-ch", smoke_cfg, smoke_test)
    ch_model.load_state_dict(px_model.state_dict())
    with pytest.raises(NotApplicable):
        build("att-ch", ch_model)
    x, y = _images(smoke_test)
    ex = build("att-ch", px_model)
    ours = ex.explain(x, y)
    assert ours.sum() > 0
    assert torch.allclose(ours, ch_model.explain(x, y), atol=1e-6)


@pytest.mark.parametrize("name", ["abn", "msabn"])
def test_abn_scored_layer_is_the_perception_stage(name: str, smoke_cfg: config.RunConfig,
                                                  smoke_test: data.Split) -> None:
    method = _method(name, smoke_cfg, smoke_test)
    assert isinstance(method, ABN)
    branch_stage = method.attention_branch.stage
    layer = scored_layer(method)
    assert layer is method.backbone.last_stage
    assert layer is not branch_stage
    x, y = _images(smoke_test)
    with torch.no_grad():
        fmap, logits = stage_output(method, x)
        a = method.attend(x)
        perceived = method.backbone.last_stage(method.apply_attention(a.features,
                                                                      a.mechanism))
        branch = branch_stage(method.fusion(method.backbone.pyramid(x))
                              if isinstance(method, MSABN) else a.features)
        assert torch.allclose(logits, method(x).logits)
    # the tensor the perception head pools: fc(mean) == logits
    assert torch.allclose(fmap, perceived, atol=1e-6)
    assert torch.allclose(method.backbone.fc(fmap.mean((2, 3))), logits, atol=1e-5)
    assert fmap.shape[2:] != branch.shape[2:]  # the branch's stride-1 copy is finer
    # Grad-CAM of that tensor, by hand
    with torch.enable_grad():
        fmap_g, logits_g = stage_output(method, x)
        (grad,) = torch.autograd.grad(logits_g.gather(1, y.view(-1, 1)).sum(), fmap_g)
    ref = discattn_core.gradcam_attention(grad, fmap_g.detach())
    maps = build("gradcam", method).class_maps
    assert maps is not None
    ours = maps(x, y.view(-1, 1))[:, 0]
    assert ref.sum() > 0
    assert torch.allclose(ours, ref, atol=1e-6)
    assert all(p.grad is None for p in method.parameters())


def test_gradcampp_reference_matches_pytorch_grad_cam() -> None:
    """Our Grad-CAM++ reference == pytorch-grad-cam's GradCAMPlusPlus (the paper's
    Eq. 19 with sum(A) g^3) with its eps of 1e-6, on a model whose layer keeps the
    input's size (no resize); same float32 operations up to order: atol 1e-5 on the
    [0, 1] maps. Without the eps the maps still agree to 1e-3 (gradients of O(0.1))."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = toy()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = [0, 2, 4]
    grad, feat = _grad_and_feat(m, x, torch.tensor(t))
    assert grad.abs().max() > 0.05
    ref = gradcampp_reference(grad, feat, eps=1e-6).numpy()
    bb = copy.deepcopy(m.backbone)  # pytorch-grad-cam calls backward on its model
    with GradCAMPlusPlus(model=bb, target_layers=[bb.last_stage]) as pgc:
        theirs = pgc(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t])
    assert ref.max() > 0
    np.testing.assert_allclose(_minmax(_minmax(ref)), theirs, atol=1e-5)
    exact = gradcampp_reference(grad, feat).numpy()
    np.testing.assert_allclose(_minmax(_minmax(exact)), theirs, atol=1e-3)


# The gradcampp explainer is written in methods/explainers.py because TorchCAM 0.5.0's
# GradCAMpp leaves alpha = g^2: in GradCAMpp._get_weights the step
# ``alpha[idx][mask].div_(d[mask] + eps)`` divides a boolean-mask *copy*. The tests below
# check the paper's formula, w_k = sum_ij ReLU(g_ij) g^2 / (2 g^2 + g^3 sum(A)).


def test_gradcampp_known_answer() -> None:
    """tiny(), class 0: g = W[0]/4 = (1/4, 1/2), sum(A) = (2, 3), alpha_k =
    1/(2 + g_k sum A^k) = (1/2.5, 1/3.5), w_k = 4 g_k alpha_k = (0.4, 4/7);
    map = ReLU(0.4 F0 + 4/7 F1)."""
    maps = build("gradcampp", tiny()).class_maps
    assert maps is not None
    expected = F.relu(0.4 * F0 + 4 / 7 * F1)
    assert torch.allclose(maps(X_TINY, torch.tensor([[0]]))[0, 0], expected, atol=1e-5)


def test_gradcampp_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = toy()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = [0, 2, 4]
    maps = build("gradcampp", m).class_maps
    assert maps is not None
    ours = maps(x, torch.tensor(t).view(-1, 1))[:, 0].numpy()
    bb = copy.deepcopy(m.backbone)
    with GradCAMPlusPlus(model=bb, target_layers=[bb.last_stage]) as pgc:
        theirs = pgc(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t])
    np.testing.assert_allclose(_minmax(_minmax(ours)), theirs, atol=1e-3)


def test_gradcampp_matches_formula_on_baseline(smoke_cfg: config.RunConfig,
                                               smoke_test: data.Split) -> None:
    base = _method("baseline", smoke_cfg, smoke_test)
    x, y = _images(smoke_test)
    grad, feat = _grad_and_feat(base, x, y)
    ref = gradcampp_reference(grad, feat)  # the paper's formula, no guard
    assert ref.sum() > 0
    maps = build("gradcampp", base).class_maps
    assert maps is not None
    ours = maps(x, y.view(-1, 1))[:, 0]
    # raw maps: the formula has no free scale
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_scorecam_matches_pytorch_grad_cam() -> None:
    """TorchCAM ScoreCAM (the explainer) == pytorch-grad-cam's ScoreCAM where no
    upsampling is involved (layer at input size). The two differ only in how the masks
    are upsampled (pytorch-grad-cam: align_corners=True, normalised after upsampling;
    TorchCAM: align_corners=False, normalised before), which is exact at equal sizes;
    the baseline subtraction of TorchCAM cancels in the softmax. Float32 round-off of
    the same operations: atol 1e-5 on [0, 1] maps."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = toy(seed=1)
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    t = [1, 3, 0]
    maps = build("scorecam", m).class_maps
    assert maps is not None
    ours = maps(x, torch.tensor(t).view(-1, 1))[:, 0].numpy()
    assert ours.max() > 0
    bb = copy.deepcopy(m.backbone)
    with ScoreCAM(model=bb, target_layers=[bb.last_stage]) as pgc:
        theirs = pgc(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t])
    np.testing.assert_allclose(_minmax(_minmax(ours)), theirs, atol=1e-5)


@pytest.mark.parametrize("name", ["baseline", "abn"])
def test_scorecam_matches_reference_on_smoke_models(name: str, smoke_cfg: config.RunConfig,
                                                    smoke_test: data.Split) -> None:
    """Raw Score-CAM maps at the scored layer (8x8 of a 64 px input) against the
    hand-computed reference; same float32 operations batched differently: rtol 1e-4."""
    method = _method(name, smoke_cfg, smoke_test)
    x, y = _images(smoke_test, 2)
    maps = build("scorecam", method).class_maps
    assert maps is not None
    ours = maps(x, y.view(-1, 1))[:, 0]
    ref = scorecam_reference(method, x, y)
    assert ref.sum() > 0
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------
# 3. NotApplicable
# --------------------------------------------------------------------------------------


class TwiceStage(Baseline):
    """Runs the last stage twice per forward pass (the scored layer is ambiguous)."""

    def forward(self, x: torch.Tensor) -> Output:
        f = self.backbone.features(x)
        return Output(logits=self.backbone.head(self.backbone.last_stage(f)
                                                + self.backbone.last_stage(f)))


class SquaredLogits(Baseline):
    """Logits = head(stage)^2: not GAP + linear of the stage."""

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=self.backbone(x) ** 2)


class MaxPooled(Baseline):
    """Logits = fc(max_ij stage): a linear head, but not after average pooling."""

    def forward(self, x: torch.Tensor) -> Output:
        a = self.backbone.last_stage(self.backbone.features(x))
        return Output(logits=self.backbone.fc(a.amax((2, 3))))


def _on_baseline_weights(cls: Callable[..., Method], cfg: config.RunConfig,
                         split: data.Split) -> Method:
    base = train.build_method("baseline", cfg, split)
    return cls(base.backbone, base.info).eval()


@pytest.mark.parametrize("explainer", LAYER_READING)
def test_stage_run_twice_not_applicable(explainer: str, smoke_cfg: config.RunConfig,
                                        smoke_test: data.Split) -> None:
    method = _on_baseline_weights(TwiceStage, smoke_cfg, smoke_test)
    hooks, modes = all_hooks(method), _modes(method)
    with pytest.raises(NotApplicable, match="2 times"):
        build(explainer, method)
    assert all_hooks(method) == hooks and _modes(method) == modes
    assert build("native", method).class_maps is None  # native still builds


@pytest.mark.parametrize("cls", [SquaredLogits, MaxPooled])
def test_cam_needs_gap_linear_logits(cls: Callable[..., Method], smoke_cfg: config.RunConfig,
                                     smoke_test: data.Split) -> None:
    method = _on_baseline_weights(cls, smoke_cfg, smoke_test)
    hooks, modes = all_hooks(method), _modes(method)
    with pytest.raises(NotApplicable, match="not GAP"):
        build("cam", method)
    assert all_hooks(method) == hooks and _modes(method) == modes
    # the scored layer is unambiguous, so the gradient explainers do apply
    x, y = _images(smoke_test, 2)
    s = build("gradcam", method).explain(x, y)
    assert s.shape == (2, 1, *x.shape[-2:]) and torch.isfinite(s).all()


def test_cam_needs_linear_head(smoke_cfg: config.RunConfig, smoke_test: data.Split) -> None:
    method = _method("baseline", smoke_cfg, smoke_test)
    method.backbone.fc = nn.Sequential(method.backbone.fc)  # type: ignore[assignment]
    with pytest.raises(NotApplicable, match="not linear"):
        build("cam", method)


NATIVE_EQUIVALENT = {"cam": "cam", "gradcam": "gradcam", "discattn-ch": "att-ch",
                     "discattn-px": "att-px", "discattn-gradcam": "gradcam"}


@pytest.mark.parametrize("name", METHODS.names())
def test_native_equivalent_not_applicable(name: str, smoke_cfg: config.RunConfig,
                                          smoke_test: data.Split) -> None:
    """The explainer computing a method's own read-out is refused on it, and only it:
    every other explainer builds on every registered method (hooks and modes kept),
    except the layer-reading ones on a method in PER_TASK_PERCEPTION."""
    method = _method(name, smoke_cfg, smoke_test)
    own = native_equivalent(method)
    assert own == NATIVE_EQUIVALENT.get(name)
    params, modes, hooks = _params(method), _modes(method), all_hooks(method)
    for explainer in EXPLAINERS.names():
        if explainer == own:
            with pytest.raises(NotApplicable, match="own explanation"):
                build(explainer, method)
        elif name in PER_TASK_PERCEPTION and explainer in LAYER_READING:
            with pytest.raises(NotApplicable, match="maps per image"):
                build(explainer, method)
        else:
            assert build(explainer, method).name == explainer
        _assert_untouched(method, params, modes, hooks)


# --------------------------------------------------------------------------------------
# 4. native
# --------------------------------------------------------------------------------------


def test_native_is_the_methods_own(smoke_cfg: config.RunConfig,
                                   smoke_test: data.Split) -> None:
    x, y = _images(smoke_test)
    cam_method = _method("cam", smoke_cfg, smoke_test)
    ex = build("native", cam_method)
    assert ex.class_maps == cam_method.class_maps
    assert ex.explain == cam_method.explain
    classes = y.view(-1, 1)
    assert ex.class_maps is not None
    own = cam_method.class_maps(x, classes)
    assert own is not None and own.shape == (4, 1, 8, 8)
    got: torch.Tensor | None = ex.class_maps(x, classes)
    assert got is not None and torch.equal(got, own)

    base = _method("baseline", smoke_cfg, smoke_test)
    nb = build("native", base)
    assert nb.class_maps is None
    assert torch.equal(nb.explain(x, y), base.explain(x, y))  # the centre prior

    abn = _method("abn", smoke_cfg, smoke_test)
    na = build("native", abn)
    assert na.class_maps == abn.class_maps
    assert torch.equal(na.explain(x, y), abn.explain(x, y))


# --------------------------------------------------------------------------------------
# random: the floor
# --------------------------------------------------------------------------------------


def test_random_maps_are_fixed_per_image_and_independent_of_the_rest(
        smoke_cfg: config.RunConfig, smoke_test: data.Split) -> None:
    x, y = _images(smoke_test, 6)
    baseline, abn = _method("baseline", smoke_cfg, smoke_test), _method("abn", smoke_cfg,
                                                                         smoke_test)
    maps = build("random", baseline).explain(x, y)
    assert maps.shape == (6, 1, *x.shape[-2:])
    assert float(maps.min()) >= 0 and float(maps.max()) < 1
    # the same image: the same map, whatever the batch, class or model
    k = smoke_test.info.num_classes
    assert torch.equal(build("random", abn).explain(x[[3, 1]], (y[[3, 1]] + 1) % k),
                       maps[[3, 1]])
    # another image, a slightly perturbed copy too: an unrelated map
    moved = build("random", baseline).explain(x + 1e-3, y)
    for i in range(6):
        assert not torch.allclose(moved[i], maps[i], atol=0.05)
        corr = np.corrcoef(maps[i].flatten(), maps[(i + 1) % 6].flatten())[0, 1]
        assert abs(corr) < 0.9
    # smooth: a bilinear upsampling of a 7 x 7 grid of draws
    grid = np.random.default_rng([0, int.from_bytes(hashlib.blake2b(
        x[0].numpy().tobytes(), digest_size=8).digest(), "little")]).random((7, 7))
    torch.testing.assert_close(maps[:1], upsample(torch.from_numpy(grid).float()[None, None],
                                                  tuple(x.shape[-2:])))
    for bad in (k, -1):
        with pytest.raises(IndexError, match=f"class {bad} is not one of the model's {k}"):
            build("random", baseline).explain(x, torch.full_like(y, bad))
    assert EXPLAINERS.entry("random").meta["reference"] is True  # not ranked: the floor

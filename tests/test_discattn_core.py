"""Discriminative attention's functional core against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from methods.discattn_core import (
    attention_consistency,
    channel_attention,
    class_attention,
    gradcam_attention,
    most_confusing,
    object_mask,
    pixel_attention,
    resize_mask,
    soft_iou,
)


def test_soft_iou_known_answer_on_3x3() -> None:
    a = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]])
    b = torch.tensor([[[0.5, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    # min: 0.5 + 1.0 = 1.5; sum(a + b) = 4 + 2.5 = 6.5; sIoU = 3 / 6.5
    assert soft_iou(a, b).item() == pytest.approx(3 / 6.5)
    mask = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])
    assert soft_iou(a, b, mask).item() == pytest.approx(1 / 6.5)  # centre masked out
    assert soft_iou(a, a).item() == pytest.approx(1.0)
    disjoint = torch.tensor([[[0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert soft_iou(a, disjoint).item() == 0.0
    assert soft_iou(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)).item() == 0.0


def test_attention_consistency_known_answer_on_3x3() -> None:
    a_in = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 3.0]]])
    mask = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5]]])
    # (2 + 4 + 1.5) / 10 = 0.75; L_ac = 0.8 - 0.75
    assert attention_consistency(a_in, mask).item() == pytest.approx(0.05)
    assert attention_consistency(a_in, mask, alpha=1.0).item() == pytest.approx(0.25)


def test_object_mask_threshold_and_no_gradient() -> None:
    a = torch.tensor([[[0.0, 0.5], [0.56, 1.0]]], requires_grad=True)
    m = object_mask(a)  # max 1: sigma = 0.55
    assert not m.requires_grad
    expected = torch.sigmoid(100 * (a.detach() - 0.55))
    assert torch.allclose(m, expected)
    assert m[0, 0, 1] < 0.01 and m[0, 1, 1] > 0.99
    assert resize_mask(m, (4, 4)).shape == (1, 4, 4)
    # Eq. 7 on the map over its maximum: the scale of the map does not matter
    assert torch.allclose(object_mask(a.detach() * 1e-4), expected)
    assert torch.allclose(object_mask(torch.zeros(1, 2, 2)), torch.sigmoid(torch.tensor(-55.0)))


@pytest.mark.parametrize("kind", ["ch", "px", "gradcam"])
@pytest.mark.parametrize("channels", [16, 256, 1000])
def test_object_mask_separates_at_realistic_scales(kind: str, channels: int) -> None:
    """Real attention maps of a GAP + linear head over K channels (raw values of A_px
    about 1e-4): the mask is near 0 or near 1 almost everywhere, with both present."""
    torch.manual_seed(0)
    b, h, w, n_cls = 4, 14, 14, 10
    obj = torch.zeros(1, 1, h, w)
    obj[..., 4:10, 3:9] = 1.0  # the object's cells
    feat = (torch.rand(b, channels, h, w) * (0.2 + 2.0 * obj)).requires_grad_(True)
    fc = torch.nn.Linear(channels, n_cls)
    torch.nn.init.normal_(fc.weight, 0.0, channels**-0.5)
    with torch.no_grad():  # the target class reads the object's channels positively
        fc.weight[0] = fc.weight[0].abs()
    logits = fc(feat.mean((2, 3)))
    (a,) = class_attention(logits, [feat], torch.zeros(b, dtype=torch.long), kind)
    if kind == "px":
        assert float(a.detach().max()) < 1e-2  # the scale at which the raw Eq. 7 gives ~0.5
    m = object_mask(a)
    decided = ((m < 0.05) | (m > 0.95)).float().mean()
    assert float(decided) > 0.9
    assert bool((m > 0.95).any()) and bool((m < 0.05).any())
    inside = m[:, 4:10, 3:9].mean()
    assert float(inside) > 0.5 > float(m.mean())  # the high part lies on the object


def _chain(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tiny hand-set net: F_in = 1x1 conv of x, F_last = 1x1 conv of F_in, logits = W GAP."""
    w1 = torch.tensor([[1.0, 0.0], [0.5, -1.0]])  # [K_in, C]
    w2 = torch.tensor([[2.0, 1.0], [-1.0, 1.0], [0.0, 3.0]])  # [K_last, K_in]
    w_fc = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])  # [classes, K_last]
    f_in = torch.einsum("kc,bchw->bkhw", w1, x)
    f_last = torch.einsum("lk,bkhw->blhw", w2, f_in)
    logits = f_last.mean((2, 3)) @ w_fc.T
    return f_in, f_last, logits


def test_attention_maps_against_hand_derivation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, requires_grad=True)  # the chain needs a graph
    f_in, f_last, logits = _chain(x)
    classes = torch.tensor([0, 1])
    w2 = torch.tensor([[2.0, 1.0], [-1.0, 1.0], [0.0, 3.0]])
    w_fc = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])
    hw = 12
    for kind in ("ch", "px", "gradcam"):
        a_in, a_last = class_attention(logits, [f_in, f_last], classes, kind)
        for b, c in enumerate(classes.tolist()):
            g_last = (w_fc[c] / hw).view(-1, 1, 1).expand_as(f_last[b])  # dY/dF_last
            g_in = (w_fc[c] @ w2 / hw).view(-1, 1, 1).expand_as(f_in[b])  # chain rule
            for got, g, f in ((a_last[b], g_last, f_last[b]), (a_in[b], g_in, f_in[b])):
                if kind == "ch":
                    want = torch.relu((torch.relu(g).mean((1, 2), keepdim=True) * f).sum(0))
                elif kind == "px":
                    want = torch.relu((g * f).mean(0))
                else:
                    want = torch.relu((g.mean((1, 2), keepdim=True) * f).sum(0))
                assert torch.allclose(got, want, atol=1e-6), kind


def test_batch_equals_per_sample_and_gradients_flow() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    f_in, f_last, logits = _chain(x)
    classes = most_confusing(logits, torch.tensor([0, 1, 0, 1]))
    assert classes.tolist() == [1, 0, 1, 0]  # two classes: the other one
    batch = class_attention(logits, [f_in, f_last], classes, "px")
    for b in range(4):
        fi, fl, lg = _chain(x[b : b + 1])
        single = class_attention(lg, [fi, fl], classes[b : b + 1], "px")
        for full, one in zip(batch, single, strict=True):
            assert torch.allclose(full[b], one[0], atol=1e-6)
    # detached weights: the maps still depend on the features (graph kept for the loss)
    xg = x.detach().clone().requires_grad_(True)
    fi, fl, lg = _chain(xg)
    a_in, _ = class_attention(lg, [fi, fl], classes, "ch")
    a_in.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_create_graph_keeps_second_order_terms() -> None:
    x = torch.randn(2, 2, 3, 3)
    w = torch.nn.Parameter(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
    f = torch.einsum("kc,bchw->bkhw", w, x)
    logits = (f ** 2).mean((2, 3))  # gradient depends on f: a second-order path
    (a,) = class_attention(logits, [f], torch.tensor([0, 1]), "px", create_graph=True)
    (g,) = torch.autograd.grad(a.sum(), [w])
    f2 = torch.einsum("kc,bchw->bkhw", w, x)
    (a_det,) = class_attention((f2 ** 2).mean((2, 3)), [f2], torch.tensor([0, 1]), "px")
    (g_det,) = torch.autograd.grad(a_det.sum(), [w])
    assert not torch.allclose(g, g_det)  # the weights' own gradient path contributes


def test_channel_and_pixel_maps_are_nonnegative() -> None:
    g, f = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    for fn in (channel_attention, pixel_attention, gradcam_attention):
        assert (fn(g, f) >= 0).all() and fn(g, f).shape == (2, 4, 4)

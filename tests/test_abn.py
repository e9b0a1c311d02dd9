"""ABN's head: shapes, M in (0,1), the attention mechanisms and Eq. 3's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import backbones
from harness.data import DIGITS_INFO
from methods.abn import ABN


@pytest.fixture
def abn() -> ABN:
    torch.manual_seed(0)
    return ABN(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO).eval()


def test_head_shapes_and_range(abn: ABN) -> None:
    x = torch.randn(3, 3, 64, 64)
    out = abn(x)
    g = abn.backbone.features(x)
    assert g.shape == (3, 32, 16, 16)
    assert out.logits.shape == out.att_logits.shape == (3, 10)
    assert out.attention.shape == (3, 1, 16, 16)  # stride-1 branch: the split resolution
    assert out.class_maps.shape == (3, 10, 16, 16)
    assert ((out.attention > 0) & (out.attention < 1)).all()
    e = abn.explain(x, torch.zeros(3, dtype=torch.long))
    assert e.shape == (3, 1, 64, 64)
    ref = F.interpolate(out.attention, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(e, ref, atol=1e-6)
    cm = abn.class_maps(x, torch.tensor([[1, 2], [0, 0], [9, 3]]))
    assert torch.equal(cm[2, 0], out.class_maps[2, 9])


def test_attention_head_is_the_authors_design(abn: ABN) -> None:
    ab = abn.attention_branch
    assert ab.to_classes.kernel_size == (1, 1) and ab.to_classes.bias is None
    assert ab.head.kernel_size == (1, 1) and ab.head.in_channels == ab.head.out_channels == 10
    assert ab.to_map.kernel_size == (3, 3) and ab.to_map.out_channels == 1
    assert ab.to_map.bias is None
    strides = [m.stride for m in ab.stage.modules() if isinstance(m, nn.Conv2d)]
    assert strides and all(s == (1, 1) for s in strides)
    # a fresh copy: not sharing the perception branch's stage weights
    p_stage = dict(abn.backbone.last_stage.named_parameters())
    for k, v in ab.stage.named_parameters():
        assert v.data_ptr() != p_stage[k].data_ptr()


def test_attention_mechanisms(abn: ABN) -> None:
    g = torch.rand(2, 32, 4, 4)
    m = torch.rand(2, 1, 4, 4)
    assert torch.allclose(abn.apply_attention(g, m), g * (1 + m))  # Eq. 2
    mult = ABN(backbones.build("cifar-resnet8", 10), DIGITS_INFO, mechanism="multiply")
    assert torch.allclose(mult.apply_attention(g, m), g * m)  # Eq. 1
    with pytest.raises(ValueError, match="mechanism"):
        ABN(backbones.build("cifar-resnet8", 10), DIGITS_INFO, mechanism="add")


def test_loss_is_sum_of_branch_cross_entropies(abn: ABN) -> None:
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([1, 2, 3, 4])
    out = abn(x)
    loss, logs = abn.loss(out, {"label": y})
    ref = F.cross_entropy(out.att_logits, y) + F.cross_entropy(out.logits, y)
    assert torch.allclose(loss, ref)
    assert logs["l_att"] + logs["l_per"] == pytest.approx(logs["loss"], rel=1e-6)


def test_timm_backbone_split_and_abn() -> None:
    bb = backbones.build("resnet18", 5)
    abn = ABN(bb, DIGITS_INFO.__class__(**{**DIGITS_INFO.__dict__, "num_classes": 5})).eval()
    x = torch.randn(1, 3, 64, 64)
    out = abn(x)
    assert bb.features(x).shape == (1, 256, 4, 4)  # stage 3 of ResNet-18: H/16
    assert out.attention.shape == (1, 1, 4, 4) and out.logits.shape == (1, 5)
    with torch.no_grad():
        assert torch.allclose(bb(x), bb.fc(bb.pool(bb.last_stage(bb.features(x)))))


def test_abn_known_answer_wiring() -> None:
    """Hand-set weights on 2 channels, 2 classes, a 2x2 map; every BN is the identity
    (eval mode, running mean 0 / var 1), so the expected values follow by hand."""
    import math

    from harness.backbones import SplitBackbone

    bb = SplitBackbone(nn.Identity(), nn.Identity(), 2, 2, 2)
    info = DIGITS_INFO.__class__(**{**DIGITS_INFO.__dict__, "num_classes": 2})
    abn = ABN(bb, info).eval()
    ab = abn.attention_branch
    with torch.no_grad():
        bb.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        bb.fc.bias.zero_()
        ab.to_classes.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1))
        ab.head.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]]).view(2, 2, 1, 1))
        ab.to_map.weight.zero_()
        ab.to_map.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0])  # centre tap: k0 - k1
    g = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]], [[2.0, 1.0], [-1.0, 0.0]]]])
    out = abn(g)
    k = g.clamp_min(0)  # BN (identity) -> ReLU
    # class maps: the K->K head's output channels (class 0: k0 + k1, class 1: 2 k1) ...
    cams = torch.stack([k[0, 0] + k[0, 1], 2 * k[0, 1]])
    assert torch.allclose(out.class_maps[0], cams, atol=1e-4)
    # ... whose spatial means are the attention logits
    att = torch.tensor([(k[0, 0] + k[0, 1]).mean(), 2 * k[0, 1].mean()])
    assert torch.allclose(out.att_logits[0], att, atol=1e-4)
    assert torch.allclose(abn.class_maps(g, torch.tensor([[1]]))[0, 0], 2 * k[0, 1], atol=1e-4)
    m = torch.sigmoid(k[0, 0] - k[0, 1])
    assert torch.allclose(out.attention[0, 0], m, atol=1e-4)
    per = (g[0] * (1 + m)).mean((1, 2))  # identity stage and fc: GAP of g * (1 + M)
    assert torch.allclose(out.logits[0], per, atol=1e-4)
    corner = float(out.attention[0, 0, 0, 0].detach())
    assert math.isclose(corner, 1 / (1 + math.exp(1.0)), abs_tol=1e-4)


@pytest.mark.parametrize("method", ["abn", "msabn"])
def test_class_map_means_are_the_attention_logits(method: str) -> None:
    """Channel c of the class maps is a CAM of class c: its spatial mean is exactly the
    class-c attention logit, on a real backbone and a trained-shaped branch."""
    from methods import METHODS

    torch.manual_seed(1)
    model = METHODS.get(method)(backbones.build("cifar-resnet8", 10, stem_stride=2),
                                DIGITS_INFO).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        classes = torch.tensor([[3, 7], [0, 9], [5, 5]])
        maps = model.class_maps(x, classes)
    assert torch.allclose(out.class_maps.mean((2, 3)), out.att_logits, atol=1e-5)
    assert torch.allclose(maps.mean((2, 3)), out.att_logits.gather(1, classes), atol=1e-5)


def test_attention_branch_is_he_initialised() -> None:
    """Every conv of the branch ~ N(0, 2 / fan_out) (authors' code), every BN identity."""
    torch.manual_seed(0)
    info = DIGITS_INFO.__class__(**{**DIGITS_INFO.__dict__, "num_classes": 200})
    ab = ABN(backbones.build("cifar-resnet8", 200), info).attention_branch
    for conv in (ab.to_classes, ab.head, ab.to_map):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = float(conv.weight.detach().std())
        assert std == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.15), conv
    for bn in (ab.bn, ab.bn_classes, ab.bn_map):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))

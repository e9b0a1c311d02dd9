"""Batch norm folded into the convolutions: same outputs, fewer layers, original intact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import backbones, data
from harness.data import DIGITS_INFO
from harness.fold import conv_bn_pairs, folded
from methods import METHODS


def _randomise_bn(model: nn.Module) -> None:
    """Running statistics and affine parameters far from the identity, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


def _count_bn(model: nn.Module) -> int:
    return sum(type(m) is nn.BatchNorm2d for m in model.modules())


@pytest.mark.parametrize("name", METHODS.names())
def test_folded_method_gives_the_same_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = METHODS.get(name)(backbones.build("cifar-resnet8", 10, stem_stride=2),
                              DIGITS_INFO)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    fast = folded(model)
    before = _count_bn(model)
    assert _count_bn(fast) < before and _count_bn(model) == before  # original intact
    with torch.no_grad():
        a, b = model(x), fast(x)
    assert torch.allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    for field in ("att_logits", "attention"):
        if getattr(a, field) is not None:
            assert torch.allclose(getattr(a, field), getattr(b, field), rtol=1e-4, atol=1e-4)


def test_which_batch_norms_fold() -> None:
    torch.manual_seed(0)
    bb = backbones.build("cifar-resnet8", 10, stem_stride=2)
    fast = folded(bb)
    assert _count_bn(bb) > 0 and _count_bn(fast) == 0  # every BN follows a conv here
    r18 = backbones.build("resnet18", 10)
    _randomise_bn(r18)
    r18.eval()
    fast18 = folded(r18)
    assert _count_bn(fast18) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(r18(x), fast18(x), rtol=1e-4, atol=1e-4)
    # a batch norm after something other than a conv is left alone
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    assert conv_bn_pairs(seq) == []
    assert _count_bn(folded(seq)) == 1


def test_datasets_a_method_keeps_are_shared_not_copied(smoke_train: data.Split) -> None:
    from harness import config, train

    model = train.build_method("msabn-cr", config.resolve("smoke"), smoke_train)
    model.donors = smoke_train.dataset  # as on_fit_start sets it
    fast = folded(model)
    assert fast.donors is model.donors
    assert fast.attention_branch is not model.attention_branch

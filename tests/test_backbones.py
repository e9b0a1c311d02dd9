"""The backbones of the ABN paper's tables: parameter counts against the architecture
papers, shapes of the split, and ABN on each."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from harness import backbones, config, data, testing
from harness.errors import UserError


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# (builder, published count in millions, source); CIFAR-10 heads (10 classes)
PUBLISHED: list[tuple[str, Callable[[], torch.nn.Module], float, str]] = [
    ("densenet-bc-100-12", lambda: backbones.cifar_densenet(100, 12, 10), 0.8,
     "Huang et al. 2017, Table 2"),
    ("densenet-bc-190-40", lambda: backbones.cifar_densenet(190, 40, 10), 25.6,
     "Huang et al. 2017, Table 2"),
    ("wrn-28-10", lambda: backbones.cifar_wrn(28, 10, 10), 36.5,
     "Zagoruyko & Komodakis 2016, Table 4"),
    ("wrn-40-4", lambda: backbones.cifar_wrn(40, 4, 10), 8.9,
     "Zagoruyko & Komodakis 2016, Table 4"),
    ("wrn-16-8", lambda: backbones.cifar_wrn(16, 8, 10), 11.0,
     "Zagoruyko & Komodakis 2016, Table 4"),
    ("resnext-29-8x64d", lambda: backbones.cifar_resnext(29, 8, 10), 34.4,
     "Xie et al. 2017, Table 7"),
]


@pytest.mark.parametrize("name,build,millions,source", PUBLISHED,
                         ids=[p[0] for p in PUBLISHED])
def test_parameter_count_is_the_published_one(name: str, build: Callable[[], torch.nn.Module],
                                              millions: float, source: str) -> None:
    """The count rounds to the paper's figure (its rounding: 0.1 M)."""
    assert round(n_params(build()) / 1e6, 1) == millions, source


def test_resnext_16x64d_matches_xie_et_al_to_their_last_digit() -> None:
    """Xie et al. print 68.1 M for ResNeXt-29, 16x64d: our count is 68,155,210 (CIFAR-10
    head), 68,144,960 without the classifier. Their figure is the count truncated, or
    without the classifier, to 0.1 M (8x64d reads 34.4 M either way)."""
    n = n_params(backbones.cifar_resnext(29, 16, 10))
    assert n == 68_155_210
    assert int(n / 1e5) == 681 and round((n - (1024 * 10 + 10)) / 1e6, 1) == 68.1


def test_exact_counts_of_the_registered_table_2_nets() -> None:
    """Known answers at 100 classes (CIFAR-100, ABN's Table 2), so that a change of the
    architecture shows: WRN-28-4 (not in the WRN paper's tables) 5.87 M,
    DenseNet-BC-100 0.80 M, ResNeXt-29 8x64d 34.5 M."""
    counts = {name: n_params(backbones.build(name, 100))
              for name in ("cifar-wrn28-4", "cifar-densenet-bc100", "cifar-resnext29-8x64d")}
    assert counts == {"cifar-wrn28-4": 5_872_180, "cifar-densenet-bc100": 800_032,
                      "cifar-resnext29-8x64d": 34_518_948}


TABLE_2 = {  # name: (tap shapes at 32 px, last stage output)
    "cifar-wrn28-4": ([(64, 32, 32), (128, 16, 16)], (256, 8, 8)),
    "cifar-densenet-bc100": ([(216, 32, 32), (300, 16, 16), (150, 8, 8)], (342, 8, 8)),
    "cifar-resnext29-8x64d": ([(256, 32, 32), (512, 16, 16)], (1024, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(TABLE_2))
def test_split_shapes_at_32_px(name: str) -> None:
    taps, last = TABLE_2[name]
    net = testing.check_backbone(name, num_classes=7, size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pyramid = net.pyramid(x)
        assert [tuple(t.shape[1:]) for t in pyramid] == taps
        assert tuple(net.features(x).shape[1:]) == taps[-1]
        fmap = net.last_stage(net.features(x))
    assert tuple(fmap.shape[1:]) == last and net.out_channels == last[0]
    assert net.tap_channels == tuple(t[0] for t in taps) and net.feat_channels == taps[-1][0]
    assert bool((fmap >= 0).all()), "the last stage ends in ReLU (the map CAM reads)"


def test_wrn_dropout_is_between_the_convolutions_and_off_in_eval() -> None:
    net = backbones.build("cifar-wrn28-4", 10)
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 12 and all(d.p == 0.3 for d in drops)  # one per block, 4 x 3
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("name", sorted(TABLE_2))
def test_abn_builds_and_trains_a_step(name: str) -> None:
    """ABN (methods/abn.py) on each: its attention map at the feature extractor's
    resolution (the stride-1 copy of the last stage), one training step (the smoke
    data's 64 px images through a stride-2 stem: the 32 px nets' resolutions)."""
    cfg = config.resolve("smoke")
    cfg = dataclasses.replace(cfg, backbone=name, backbone_kwargs={"stem_stride": 2},
                              dataset_kwargs={**cfg.dataset_kwargs, "n_train": 8})
    split = data.build(cfg.dataset, "train", **cfg.dataset_kwargs)
    model = testing.check_method("abn", cfg=cfg, split=split)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.attention is not None and out.features is not None
    assert out.attention.shape[-2:] == out.features.shape[-2:] == TABLE_2[name][0][-1][1:]


@pytest.mark.parametrize("call,message", [
    (lambda: backbones.cifar_resnext(28, 8, 10), r"cifar-resnext depth 28: depths are 9n\+2"),
    (lambda: backbones.cifar_wrn(27, 4, 10), r"cifar-wrn depth 27: depths are 6n\+4"),
    (lambda: backbones.cifar_densenet(101, 12, 10), "cifar-densenet depth 101"),
    (lambda: backbones.build("cifar-wrn28-4", 10, dropout=1.0), "dropout must be in"),
    (lambda: backbones.build("cifar-densenet-bc100", 10, stem_stride=3),
     "cifar-densenet stem_stride must be 1, 2 or 4"),
])
def test_bad_configurations_are_one_line_errors(call: Callable[[], object], message: str
                                                ) -> None:
    with pytest.raises(UserError, match=message):
        call()


def test_seresnet152_is_resnet152_with_squeeze_and_excitation() -> None:
    """ABN's "SENet (ResNet152 model)" (Sec. 4.2, Table 2): timm's seresnet152 at 1000
    classes has torchvision's ResNet-152 count (60,192,808; He et al.: 60.2 M) plus an
    SE block per bottleneck (Hu et al., CVPR 2018: reduction ratio 16, two layers with
    biases, C^2/8 + C + C/16 parameters for C output channels): 66.8 M."""
    from torchvision.models import resnet152

    net = backbones.build("seresnet152", 1000)
    se = sum(blocks * (2 * c * (c // 16) + c + c // 16)
             for blocks, c in ((3, 256), (8, 512), (36, 1024), (3, 2048)))
    assert n_params(resnet152(weights=None)) + se == n_params(net) == 66_821_848
    assert round(n_params(net) / 1e6, 1) == 66.8
    assert net.feat_channels == 1024 and net.out_channels == 2048  # split at layer3

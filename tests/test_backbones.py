"""The backbones of the ABN paper's tables: parameter counts against the architecture
papers, shapes of the split, and ABN on each."""

from __future__ import annotations

import dataclasses
import pathlib
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


# --------------------------------------------------------------------------------------
# VGG: a fully-connected head
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,arch", [("vgg16", "vgg16"), ("vgg16-bn", "vgg16_bn"),
                                       ("vgg19", "vgg19")])
def test_vgg_split_keeps_every_parameter(name: str, arch: str) -> None:
    """The split VGG has torchvision's parameters, no more, no fewer: VGG-16 138,357,544
    at 1000 classes (Simonyan & Zisserman, Table 2: 138 M; VGG-19: 144 M)."""
    import torchvision

    reference = n_params(getattr(torchvision.models, arch)(weights=None))
    net = backbones.build(name, 1000)
    assert n_params(net) == reference
    assert round(reference / 1e6) == {"vgg16": 138, "vgg16-bn": 138, "vgg19": 144}[name]
    if name == "vgg16":
        assert reference == 138_357_544
    assert net.head_kind == "fc" and isinstance(net, backbones.FCHeadBackbone)


def test_vgg_split_computes_torchvision_s_forward(tmp_path: pathlib.Path) -> None:
    """A torchvision VGG-16-BN state dict loads (fc8 dropped) and, fc8 copied, the split
    backbone's logits are torchvision's; conv5_3 (the last stage) is at stride 16."""
    import torchvision

    tv = torchvision.models.vgg16_bn(weights=None, num_classes=3).eval()
    path = tmp_path / "vgg16_bn.pt"
    torch.save(tv.state_dict(), path)
    net = backbones.build("vgg16-bn", 3, pretrained=str(path)).eval()
    net.fc[6].load_state_dict(tv.classifier[6].state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x))
        assert net.last_stage(net.features(x)).shape == (2, 512, 4, 4)
        assert [t.shape[-1] for t in net.pyramid(x)] == [16, 8, 4]


def test_abn_on_vgg_replaces_the_fully_connected_layers_by_a_3x3_conv() -> None:
    """ABN's attention branch on VGG (Sec. 3.1): a copy of conv5 (stride 1), then one
    3x3 convolution of 1024 channels in place of fc6-fc8, then ABN's K-channel layers;
    its map is at g's resolution; the perception branch is VGG's conv5 and FC layers."""
    from harness.data import DIGITS_INFO
    from methods.abn import ABN

    info = dataclasses.replace(DIGITS_INFO, num_classes=3)
    model = ABN(backbones.build("vgg16", 3), info).eval()
    trunk = model.attention_branch.stage
    convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (512, 512, (3, 3))] * 3 + [(512, 1024, (3, 3))]
    assert not any(isinstance(m, torch.nn.Linear) for m in model.attention_branch.modules())
    assert model.attention_branch.to_classes.in_channels == 1024
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.attention is not None and out.attention.shape == (2, 1, 4, 4)
    assert out.att_logits is not None and out.att_logits.shape == out.logits.shape == (2, 3)


def test_abn_trains_a_step_on_vgg16_bn() -> None:
    cfg = config.resolve("smoke")
    cfg = dataclasses.replace(cfg, backbone="vgg16-bn", backbone_kwargs={},
                              dataset_kwargs={**cfg.dataset_kwargs, "n_train": 8})
    split = data.build(cfg.dataset, "train", **cfg.dataset_kwargs)
    testing.check_method("abn", cfg=cfg, split=split)


def test_cam_refuses_a_fully_connected_head_and_gradcam_explains_it() -> None:
    from harness.data import DIGITS_INFO
    from methods.base import METHODS
    from methods.explainers import NotApplicable
    from methods.explainers import build as build_explainer
    from methods.posthoc import Baseline

    info = dataclasses.replace(DIGITS_INFO, num_classes=3)
    vgg = backbones.build("vgg16", 3)
    with pytest.raises(UserError, match=r"method 'cam' needs a GAP \+ linear head; .*"
                                        r"head is 'fc'.* \(vgg16-gap, vgg16-bn-gap\)$"):
        METHODS.get("cam")(vgg, info)
    baseline = Baseline(vgg, info).eval()
    with pytest.raises(NotApplicable, match="head is not linear"):
        build_explainer("cam", baseline)
    x = torch.randn(2, 3, 64, 64)
    maps = build_explainer("gradcam", baseline).explain(x, torch.tensor([0, 2]))
    assert maps.shape == (2, 1, 64, 64) and bool((maps >= 0).all())


def test_vgg_gap_is_the_cam_paper_s_variant_and_cam_reads_it() -> None:
    """Zhou et al. 2016, Sec. 2: VGG-16 up to conv5_3 (pool5 and the FC layers removed),
    a 3x3 convolution of 1024 channels, GAP, linear; CAM's maps are its class maps."""
    from harness.data import DIGITS_INFO
    from methods.base import METHODS

    info = dataclasses.replace(DIGITS_INFO, num_classes=3)
    net = backbones.build("vgg16-gap", 3)
    conv_params = 14_714_688  # VGG-16's 13 convolutions (torchvision's features)
    extra = 512 * 1024 * 9 + 1024
    assert n_params(net) == conv_params + extra + 1024 * 3 + 3
    assert net.head_kind == "gap-linear" and net.out_channels == 1024
    cam = METHODS.get("cam")(net, info).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = cam.class_maps(x, torch.tensor([[0], [1]]))
        logits = cam(x).logits
    assert maps.shape == (2, 1, 4, 4)
    torch.testing.assert_close(maps.mean((2, 3))[:, 0] + net.fc.bias[[0, 1]],
                               logits.gather(1, torch.tensor([[0], [1]]))[:, 0])


def test_a_pretrained_vgg_branch_copies_conv5_and_starts_its_3x3_conv_fresh(
        tmp_path: pathlib.Path) -> None:
    import torchvision

    from harness.data import DIGITS_INFO
    from methods.abn import ABN

    path = tmp_path / "vgg16.pt"
    torch.save(torchvision.models.vgg16(weights=None, num_classes=3).state_dict(), path)
    bb = backbones.build("vgg16", 3, pretrained=str(path))
    model = ABN(bb, dataclasses.replace(DIGITS_INFO, num_classes=3))
    copy, top = model.attention_branch.stage
    for key, value in bb.last_stage.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key
    conv = top[0]
    assert conv.kernel_size == (3, 3) and conv.out_channels == 1024
    fan_out = 1024 * 9  # He-initialised (normal, fan-out), as the rest of the branch
    assert float(conv.weight.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)

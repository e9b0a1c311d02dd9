"""MSABN, the puzzle module and copy-replace: shapes, exact inverses, known answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from harness import backbones, config, data
from harness.backbones import SplitBackbone
from harness.data import DatasetInfo
from harness.errors import UserError
from harness.geometry import box_mask
from methods.abn import ABN
from methods.msabn import (
    MSABN,
    MSABNCopyReplace,
    MSABNPuzzle,
    attention_outside,
    box_pixels,
    copy_replace,
    merge,
    reconstruction_loss,
    tile,
    worst_localised,
)
from tests.conftest import all_hooks

INFO = DatasetInfo("toy", 5, (64, 64), (0.5,) * 3, (0.25,) * 3, has_boxes=True)


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "efficientnet_b3"])
def test_msabn_map_is_4x_abn_on_imagenet_style_backbones(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    abn = ABN(backbones.build(name, 5), INFO).eval()
    ms = MSABN(backbones.build(name, 5), INFO).eval()
    with torch.no_grad():
        a_abn, a_ms = abn.attend(x), ms.attend(x)
        out = ms(x)
    assert a_abn.map.shape[-2:] == (4, 4)  # H/16
    assert a_ms.map.shape[-2:] == (16, 16)  # H/4: 4x finer in each direction
    assert a_ms.class_maps.shape == (2, 5, 16, 16)
    # the mechanism uses A average-pooled to g's resolution
    assert a_ms.mechanism.shape[-2:] == a_ms.features.shape[-2:] == (4, 4)
    assert torch.allclose(a_ms.mechanism, F.avg_pool2d(a_ms.map, 4), atol=1e-6)
    # the concatenated fusion output is exactly the attention branch's input width
    fused = ms.fusion(ms.backbone.pyramid(x))
    first_conv = next(m for m in ms.attention_branch.stage.modules() if isinstance(m, nn.Conv2d))
    assert fused.shape[1] == ms.backbone.feat_channels == first_conv.in_channels
    assert sum(ms.fusion.widths) == ms.backbone.feat_channels
    assert fused.shape[-2:] == (16, 16)
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    sal = ms.explain(x, torch.tensor([0, 1]))
    assert sal.shape == (2, 1, 64, 64)


def test_msabn_trains_one_step_on_a_timm_backbone() -> None:
    ms = MSABN(backbones.build("efficientnet_b0", 5), INFO).train()
    opt = torch.optim.SGD(ms.parameters(), lr=0.01)
    before = ms.fusion.blocks[0][0].weight.clone()
    logs = ms.training_step({"image": torch.randn(2, 3, 64, 64),
                             "label": torch.tensor([1, 3])}, [opt])
    assert logs["l_att"] > 0 and logs["l_per"] > 0
    assert not torch.equal(before, ms.fusion.blocks[0][0].weight)


def test_msabn_on_cifar_resnet_is_2x_abn() -> None:
    bb = backbones.build("cifar-resnet14", 5, stem_stride=2)
    ms = MSABN(bb, INFO).eval()
    with torch.no_grad():
        a = ms.attend(torch.randn(1, 3, 64, 64))
    assert a.map.shape[-2:] == (32, 32) and a.features.shape[-2:] == (16, 16)


def test_both_attention_mechanisms() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    bb = backbones.build("cifar-resnet8", 5, stem_stride=2)
    res = MSABN(bb, INFO, mechanism="residual").eval()
    mul = MSABN(bb, INFO, mechanism="multiply").eval()
    mul.load_state_dict(res.state_dict())
    with torch.no_grad():
        a = res.attend(x)
        assert torch.allclose(res(x).logits, res.perceive(a.features, a.mechanism))
        g_res = bb.head(bb.last_stage(a.features * (1 + a.mechanism)))
        g_mul = bb.head(bb.last_stage(a.features * a.mechanism))
        assert torch.allclose(res(x).logits, g_res, atol=1e-5)
        assert torch.allclose(mul(x).logits, g_mul, atol=1e-5)
    with pytest.raises(ValueError, match="mechanism"):
        MSABN(bb, INFO, mechanism="add")


# --- the puzzle module -----------------------------------------------------------------


def test_tile_and_merge_are_exact_inverses() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    t = tile(x)
    assert t.shape == (8, 3, 2, 3)
    # tile-major: tiles (top-left, top-right, bottom-left, bottom-right), then the batch
    assert torch.equal(t[0], x[0, :, :2, :3]) and torch.equal(t[1], x[1, :, :2, :3])
    assert torch.equal(t[2], x[0, :, :2, 3:]) and torch.equal(t[5], x[1, :, 2:, :3])
    assert torch.equal(t[7], x[1, :, 2:, 3:])
    assert torch.equal(merge(t), x)
    assert torch.equal(tile(merge(t)), t)
    with pytest.raises(UserError, match="5x6"):
        tile(torch.zeros(1, 3, 5, 6))


def test_reconstruction_loss_known_answer() -> None:
    full = torch.zeros(1, 2, 2, 2)
    full[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    tiles = torch.zeros(4, 2, 1, 1)  # tile maps 1x1; merged = [[0, 1], [2, 8]] on class 1
    tiles[:, 1, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 8.0])
    tiles[:, 0, 0, 0] = 100.0  # other classes do not count
    # |1-0| + |2-1| + |3-2| + |4-8| = 7 over 4 cells
    assert reconstruction_loss(full, tiles, torch.tensor([1])).item() == pytest.approx(7 / 4)


def _pointwise_backbone() -> SplitBackbone:
    """Only 1x1 convolutions, no stride: every map is tiling-equivariant."""
    features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()),
                             nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU()))
    last = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
    return SplitBackbone(features, last, 16, 8, 5, taps=(0, 1), tap_channels=(4, 8))


@pytest.mark.parametrize("train", [False, True])
def test_puzzle_loss_is_zero_for_a_tiling_equivariant_model(train: bool) -> None:
    torch.manual_seed(0)
    model = MSABNPuzzle(_pointwise_backbone(), INFO).train(train)
    batch = {"image": torch.randn(3, 3, 8, 8), "label": torch.tensor([0, 2, 4])}
    out = model(batch["image"])
    _, logs = model.loss(out, batch)
    assert logs["l_re"] < 1e-5
    assert logs["loss"] == pytest.approx(logs["l_att"] + logs["l_per"] + logs["l_re"], rel=1e-5)


def test_puzzle_loss_is_positive_when_borders_matter() -> None:
    torch.manual_seed(0)
    bb = backbones.build("cifar-resnet8", 5, stem_stride=2)
    model = MSABNPuzzle(bb, INFO).eval()
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0, 1])}
    _, logs = model.loss(model(batch["image"]), batch)
    assert logs["l_re"] > 1e-3


# --- copy-replace ------------------------------------------------------------------------


def test_box_pixels_follow_the_pixel_centre_rule() -> None:
    assert box_pixels(torch.tensor([2.0, 1.0, 6.0, 3.0]), 8, 8) == (1, 3, 2, 6)
    assert box_pixels(torch.tensor([2.4, 1.6, 5.6, 3.4]), 8, 8) == (2, 3, 2, 6)
    assert box_pixels(torch.tensor([-3.0, -3.0, 20.0, 20.0]), 8, 8) == (0, 8, 0, 8)
    r0, r1, c0, c1 = box_pixels(torch.tensor([2.6, 2.6, 2.9, 2.9]), 8, 8)
    assert r0 == r1 and c0 == c1  # no pixel centre inside
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # the same pixels as the metrics' box mask
        xy = torch.rand(2, 2, generator=gen) * 12 - 2
        box = torch.cat([xy.min(0).values, xy.max(0).values])
        r0, r1, c0, c1 = box_pixels(box, 8, 8)
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[r0:r1, c0:c1] = True
        assert torch.equal(box_mask(box[None], 8, 8)[0], expected)


def test_copy_replace_pastes_the_resized_donor_box() -> None:
    img = torch.zeros(1, 3, 8, 8)
    donor = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(1, 3, 8, 8)
    box = torch.tensor([[2.0, 2.0, 6.0, 6.0]])  # rows/cols 2..5 (4x4)
    dbox = torch.tensor([[0.0, 0.0, 8.0, 4.0]])  # rows 0..3, cols 0..7 (4x8)
    out, pasted = copy_replace(img, box, donor, dbox)
    assert pasted.tolist() == [True]
    # the donor's 4x8 box, resized to 4x4 as PIL's bilinear (antialiased) resize does
    expected = torch.stack([torch.from_numpy(np.array(
        Image.fromarray(donor[0, c, 0:4, 0:8].numpy(), mode="F").resize((4, 4), Image.BILINEAR)))
        for c in range(3)])
    assert torch.allclose(out[0, :, 2:6, 2:6], expected, atol=1e-4)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 2:6] = False
    assert torch.equal(out[0][:, outside], img[0][:, outside])
    # a NaN box (no annotation) is left alone
    out, pasted = copy_replace(img, torch.full((1, 4), float("nan")), donor, dbox)
    assert pasted.tolist() == [False] and torch.equal(out, img)


class _Donors(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, images: torch.Tensor, boxes: torch.Tensor, labels: list[int]) -> None:
        self.images, self.boxes, self.labels = images, boxes, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "bbox": self.boxes[i], "label": self.labels[i],
                "index": i}


def test_copy_replace_batch_pool_labels_and_untouched_images() -> None:
    torch.manual_seed(0)
    bb = backbones.build("cifar-resnet8", 5, stem_stride=2)
    model = MSABNCopyReplace(bb, INFO, lambda_out=0.5)
    # six training images: value 10 * label + 1 inside the box, -label outside it
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 40.0, 24.0],
                          [32.0, 32.0, 64.0, 64.0], [4.0, 4.0, 12.0, 60.0],
                          [20.0, 10.0, 50.0, 30.0], [2.0, 40.0, 30.0, 62.0]])
    labels = [0, 1, 2, 3, 4, 4]
    images = torch.empty(6, 3, 64, 64)
    for i, box in enumerate(boxes):
        r0, r1, c0, c1 = box_pixels(box, 64, 64)
        images[i] = -float(i)
        images[i, :, r0:r1, c0:c1] = 10.0 * i + 1
    model.donors = _Donors(images, boxes, labels)
    model.pool = torch.tensor([1, 3, 4, 5])
    for _ in range(20):  # donors are random: every draw must be consistent
        batch = {"image": images.clone(), "bbox": boxes.clone(),
                 "label": torch.tensor(labels), "index": torch.arange(6)}
        new = model.replace_batch(batch)
        assert torch.equal(new["image"][[0, 2]], images[[0, 2]])  # not pooled: untouched
        assert new["label"][[0, 2]].tolist() == [0, 2]
        for i in (1, 3, 4, 5):
            r0, r1, c0, c1 = box_pixels(boxes[i], 64, 64)
            inside = new["image"][i, :, r0:r1, c0:c1]
            donor = round((float(inside.mean()) - 1) / 10)  # only the donor box content
            assert donor in (1, 3, 4, 5) and donor != i
            assert torch.allclose(inside, torch.full_like(inside, 10.0 * donor + 1))
            assert int(new["label"][i]) == labels[donor]  # the pasted object's label
            rest = new["image"][i].clone()
            rest[:, r0:r1, c0:c1] = -float(i)
            assert torch.equal(rest, torch.full_like(rest, -float(i)))  # outside unchanged
        assert torch.equal(batch["image"], images)  # the input batch is not modified


def test_copy_replace_pool_selection(smoke_cfg: config.RunConfig,
                                     smoke_train: data.Split) -> None:
    from harness import train

    model = train.build_method("msabn-cr", smoke_cfg, smoke_train, lambda_out=0.0).eval()
    hooks = all_hooks(model)
    facts = model.on_fit_start(smoke_train, torch.device("cpu"))
    view = smoke_train.dataset.with_transform(  # type: ignore[attr-defined]
        data.make_transform(smoke_train.info, train=False))
    x = torch.stack([view[i]["image"] for i in range(len(view))])
    b = torch.stack([view[i]["bbox"] for i in range(len(view))])
    with torch.no_grad():
        a = F.interpolate(model.attend(x).map, size=(64, 64), mode="bilinear",
                          align_corners=False)[:, 0]
    # independent frac_out: binarise the raw attention (a sigmoid output) at 0.2
    on = a >= 0.2
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    inbox = ((xx >= b[:, 0, None, None]) & (xx <= b[:, 2, None, None])
             & (yy >= b[:, 1, None, None]) & (yy <= b[:, 3, None, None]))
    expected = 1 - (on & inbox).sum((1, 2)) / on.sum((1, 2)).clamp_min(1)
    frac, cover = attention_outside(model, smoke_train, torch.device("cpu"))
    assert torch.allclose(frac, expected.float(), atol=1e-6)
    assert torch.allclose(cover, on.float().mean((1, 2)))
    assert model.pool.tolist() == torch.nonzero(expected > 0.0).flatten().tolist()
    assert facts["annotated"] == len(model.pool) and facts["lambda_out"] == 0.0
    assert all_hooks(model) == hooks
    # auto: the 20 % of the training images with the highest frac_out
    model.lambda_out = "auto"
    facts = model.on_fit_start(smoke_train, torch.device("cpu"))
    assert facts["annotated"] == round(0.2 * 64)
    assert (frac[model.pool].min() >= frac[torch.isin(torch.arange(64), model.pool, invert=True)]
            .max())
    assert facts["lambda_out"] == pytest.approx(float(frac[model.pool].min()))
    assert 0.0 <= facts["covering_share"] <= 1.0
    model.lambda_out = None
    assert model.on_fit_start(smoke_train, torch.device("cpu"))["annotated"] == 0
    batch = {"image": x[:4], "bbox": b[:4], "label": torch.arange(4), "index": torch.arange(4)}
    assert model.replace_batch(batch) is batch


def test_worst_localised_exact_share_with_ties() -> None:
    # ties (1.0: attention entirely outside) and a missing box (NaN)
    frac = torch.tensor([1.0, 0.2, 1.0, 0.9, 1.0, 0.1, float("nan"), 1.0, 0.5, 0.3, 0.4])
    assert worst_localised(frac, 0.2).tolist() == [0, 2]  # 2 of 10 boxed, ties by index
    assert worst_localised(frac, 0.5).tolist() == [0, 2, 3, 4, 7]
    assert worst_localised(frac, 1.0).tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert worst_localised(frac, 0.0).tolist() == []


def test_copy_replace_rejects_bad_lambda() -> None:
    bb = backbones.build("cifar-resnet8", 5, stem_stride=2)
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(UserError, match="lambda_out"):
            MSABNCopyReplace(bb, INFO, lambda_out=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("stride", "stage1"), [(1, 64), (2, 32), (4, 16)])
def test_cifar_resnet_stem_strides_and_taps(stride: int, stage1: int) -> None:
    bb = backbones.build("cifar-resnet8", 5, stem_stride=stride)
    taps = bb.pyramid(torch.randn(1, 3, 64, 64))
    assert [t.shape[-1] for t in taps] == [stage1, stage1 // 2]
    assert [t.shape[1] for t in taps] == list(bb.tap_channels) == [16, 32]
    with pytest.raises(UserError, match="stem_stride"):
        backbones.build("cifar-resnet8", 5, stem_stride=3)


def test_timm_split_matches_the_unsplit_model() -> None:
    import timm

    torch.manual_seed(0)
    bb = backbones.build("efficientnet_b0", 5).eval()
    torch.manual_seed(0)
    ref = timm.create_model("efficientnet_b0", pretrained=False, num_classes=5).eval()
    ref.load_state_dict({k.replace("fc.", "classifier."): v for k, v in _timm_names(bb).items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb(x), ref(x), atol=1e-5)


def _timm_names(bb: SplitBackbone) -> dict[str, torch.Tensor]:
    """The split backbone's state under timm's EfficientNet names (blocks re-numbered)."""
    names = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)), "conv_head", "bn2"]
    modules = [*bb.features, *bb.last_stage]  # type: ignore[misc]
    out = {}
    for name, module in zip(names, modules, strict=True):
        for k, v in module.state_dict().items():
            out[f"{name}.{k}"] = v
    out.update({f"fc.{k}": v for k, v in bb.fc.state_dict().items()})
    return out


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_resnet_taps_are_timms_stride_4_8_16_features(name: str) -> None:
    import timm

    torch.manual_seed(0)
    bb = backbones.build(name, 5).eval()
    ref = timm.create_model(name, pretrained=False, features_only=True,
                            out_indices=(1, 2, 3)).eval()
    own = {k: v for k, v in bb.features.state_dict().items()}
    names = ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3"]
    ref.load_state_dict({f"{names[int(k.split('.')[0])]}.{k.split('.', 1)[1]}": v
                         for k, v in own.items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(bb.pyramid(x), ref(x), strict=True):
            assert torch.allclose(ours, theirs, atol=1e-5)
    assert bb.tap_channels == tuple(ref.feature_info.channels())


def test_pretrained_file_loads_or_is_an_error(tmp_path: Path) -> None:
    import timm

    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    fine = tmp_path / "timm.pt"
    torch.save(src.state_dict(), fine)
    bb = backbones.build("resnet18", 5, pretrained_file=str(fine))
    assert torch.equal(bb.features[0].weight, src.conv1.weight)  # loaded, head dropped
    bad = tmp_path / "weights.pt"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match="does not fit"):
        backbones.build("resnet18", 5, pretrained_file=str(bad))
    good = tmp_path / "good.pt"
    torch.save(backbones.build("resnet18", 5).state_dict(), good)  # wrong names as well
    with pytest.raises(UserError, match="does not fit"):
        backbones.build("resnet18", 5, pretrained_file=str(good))

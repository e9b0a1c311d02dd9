"""Multi-task ABN (Fukui et al., CVPR 2019, Sec. 3.4): one map per task, the perception
branch per task, Eq. 3 with sigmoid + BCE; known answers on hand-set weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import backbones, config, data, testing
from harness.backbones import SplitBackbone
from harness.data import DIGITS_INFO
from harness.data.digits import MULTI_INFO
from harness.fold import folded
from methods import METHODS
from methods.abn_multitask import MultiTaskABN
from methods.explainers import EXPLAINERS, NotApplicable, build
from metrics.randomisation import check_groups


def _model(info: data.DatasetInfo = MULTI_INFO, **kw: str) -> MultiTaskABN:
    torch.manual_seed(0)
    return MultiTaskABN(backbones.build("cifar-resnet8", info.num_classes, stem_stride=2),
                        info, **kw).eval()


def _randomise_bn(model: nn.Module) -> None:
    """BN statistics and affine parameters far from the identity (as after training)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


@pytest.fixture
def model() -> MultiTaskABN:
    m = _model()
    _randomise_bn(m)  # BN away from the identity: the maps are not trivially related
    return m


def _labels(b: int, k: int = 10) -> torch.Tensor:
    """A 0/1 ``[b,k]`` multi-label target, two or three classes an image."""
    y = torch.zeros(b, k)
    for i in range(b):
        y[i, torch.randperm(k)[: 2 + i % 2]] = 1.0
    return y


def test_registered_as_a_multi_label_attention_method() -> None:
    entry = METHODS.entry("abn-multitask")
    assert entry.meta["multi_label"] is True and entry.meta["attention"] is True
    assert isinstance(METHODS.get("abn-multitask")(
        backbones.build("cifar-resnet8", 10), MULTI_INFO), MultiTaskABN)
    assert MultiTaskABN.native_explainer is None
    with pytest.raises(ValueError, match="mechanism"):
        _model(mechanism="add")


def test_shapes_and_the_maps_are_the_branch_s_task_maps(model: MultiTaskABN) -> None:
    """att_logits = GAP(A^t), M^t = sigmoid(A^t), T = 10 maps at g's resolution."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        g = model.backbone.features(x)
    assert g.shape == (2, 32, 8, 8) and torch.equal(out.features, g)
    assert out.logits.shape == out.att_logits.shape == (2, 10)
    assert out.class_maps.shape == out.attention.shape == (2, 10, 8, 8)
    assert torch.allclose(out.att_logits, out.class_maps.mean((2, 3)), atol=1e-6)
    assert torch.allclose(out.attention, torch.sigmoid(out.class_maps), atol=1e-7)
    assert ((out.attention >= 0) & (out.attention <= 1)).all()  # (0, 1) up to rounding
    assert out.class_maps.std() > 0.1  # not a degenerate map


def test_batched_perception_is_one_pass_per_task(model: MultiTaskABN) -> None:
    """Output t of head(last_stage(g * (1 + M^t))), task by task, is logit t."""
    x = torch.randn(2, 3, 32, 32)
    bb = model.backbone
    with torch.no_grad():
        out = model(x)
        g, m = out.features, out.attention
        loop = torch.stack([bb.head(bb.last_stage(g * (1 + m[:, t:t + 1])))[:, t]
                            for t in range(10)], 1)
        whole = torch.stack([bb.head(bb.last_stage(g * (1 + m[:, t:t + 1])))
                             for t in range(10)], 1)  # [B, pass t, output]
    assert torch.allclose(out.logits, loop, atol=1e-5)
    assert not torch.allclose(out.logits, whole[:, 0], atol=1e-3)  # not one pass for all
    mult = _model(mechanism="multiply")
    with torch.no_grad():
        o = mult(x)
        ref = torch.stack([mult.backbone.head(mult.backbone.last_stage(
            o.features * o.attention[:, t:t + 1]))[:, t] for t in range(10)], 1)
    assert torch.allclose(o.logits, ref, atol=1e-5)  # Eq. 4 as written


def _identity_model(mechanism: str = "residual") -> MultiTaskABN:
    """2 channels, 2 tasks, identity features / last stage / fc, every BN the identity
    (eval mode); the T x 1 x 1 convolution reads channel 0 into task 0, nothing into
    task 1."""
    bb = SplitBackbone(nn.Sequential(nn.Identity()), nn.Identity(), 2, 2, 2)
    info = DIGITS_INFO.__class__(**{**MULTI_INFO.__dict__, "num_classes": 2})
    model = MultiTaskABN(bb, info, mechanism=mechanism).eval()
    with torch.no_grad():
        bb.fc.weight.copy_(torch.eye(2))
        bb.fc.bias.zero_()
        model.attention_branch.to_tasks.weight.zero_()
        model.attention_branch.to_tasks.weight[0, 0] = 1.0
    return model


#: g: channel 0 [[0, 2], [-2, 0]], channel 1 [[1, 3], [-1, 1]]
G = torch.tensor([[[[0.0, 2.0], [-2.0, 0.0]], [[1.0, 3.0], [-1.0, 1.0]]]])


def test_known_answer_by_hand() -> None:
    """A^0 = g_0, A^1 = 0; scores GAP: (0, 0); M^0 = sigmoid(g_0), M^1 = 1/2;
    logit 0 = mean(g_0 (1 + M^0)) = sigmoid(2) - 1/2 = tanh(1)/2,
    logit 1 = mean(g_1 (1 + 1/2)) = 1.5 (channel 1 averages 1)."""
    model = _identity_model()
    with torch.no_grad():
        out = model(G)
    assert torch.allclose(out.class_maps[0, 0], G[0, 0]) and (out.class_maps[0, 1] == 0).all()
    assert torch.allclose(out.att_logits, torch.zeros(1, 2))
    s2 = 1 / (1 + math.exp(-2))
    assert torch.allclose(out.attention[0, 0], torch.tensor([[0.5, s2], [1 - s2, 0.5]]))
    assert torch.allclose(out.attention[0, 1], torch.full((2, 2), 0.5))
    assert torch.allclose(out.logits, torch.tensor([[math.tanh(1) / 2, 1.5]]), atol=1e-6)
    # the other pass's output would differ: task 1 read from the pass on g'^0
    wrong = (G[0, 1] * (1 + out.attention[0, 0])).mean()
    assert abs(float(wrong) - 1.5) > 0.1
    # Eq. 4 (multiply): mean(g_0 M^0) = tanh(1)/2 again, mean(g_1 / 2) = 0.5
    with torch.no_grad():
        mult = _identity_model("multiply")(G)
    assert torch.allclose(mult.logits, torch.tensor([[math.tanh(1) / 2, 0.5]]), atol=1e-6)
    # a box over the top row only (cells centred at y = 0.5): M^t is 0 in the bottom row
    model.info = DIGITS_INFO.__class__(**{**model.info.__dict__, "image_size": (2, 2)})
    with torch.no_grad():
        fixed = model.fixed_attention_logits(out, torch.tensor([[0.0, 0.0, 2.0, 1.0]]), (2, 2))
    # task 0: (0 * 1.5 + 2 (1 + s2) - 2 * 1 + 0) / 4 = s2 / 2; task 1: (1.5 + 4.5 - 1 + 1) / 4
    assert torch.allclose(fixed, torch.tensor([[s2 / 2, 1.5]]), atol=1e-6)


def test_fixed_attention_keeps_everything_inside_a_full_box(model: MultiTaskABN) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        full = model.fixed_attention_logits(out, torch.tensor([[0.0, 0, 32, 32]] * 2),
                                            (32, 32))
        empty = model.fixed_attention_logits(out, torch.tensor([[0.0, 0, 1, 1]] * 2),
                                             (32, 32))
        bb = model.backbone
        plain = bb.head(bb.last_stage(out.features))  # M' = 0 everywhere: g'^t = g
    assert torch.allclose(full, out.logits, atol=1e-5)
    assert torch.allclose(empty, plain, atol=1e-5)


def test_loss_is_the_sum_of_both_branches_bce(model: MultiTaskABN) -> None:
    x, y = torch.randn(4, 3, 32, 32), _labels(4)
    out = model(x)
    loss, logs = model.loss(out, {"labels": y, "label": y.argmax(1)})
    bce = (F.binary_cross_entropy_with_logits(out.att_logits, y)
           + F.binary_cross_entropy_with_logits(out.logits, y))
    soft_margin = (F.multilabel_soft_margin_loss(out.att_logits, y)
                   + F.multilabel_soft_margin_loss(out.logits, y))
    assert torch.allclose(loss, bce, atol=1e-6) and torch.allclose(loss, soft_margin, atol=1e-6)
    assert logs["l_att"] == pytest.approx(float(
        F.binary_cross_entropy_with_logits(out.att_logits, y).detach()), rel=1e-5)
    assert logs["l_att"] + logs["l_per"] == pytest.approx(logs["loss"], rel=1e-6)
    # a single-label dataset: softmax cross-entropy at both branches
    single = _model(DIGITS_INFO)
    out = single(x)
    label = torch.tensor([1, 2, 3, 4])
    loss, _ = single.loss(out, {"label": label})
    assert torch.allclose(loss, F.cross_entropy(out.att_logits, label)
                          + F.cross_entropy(out.logits, label), atol=1e-6)


def test_explain_is_the_target_task_s_map_and_class_maps_gather(model: MultiTaskABN) -> None:
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        a = model.explain(x, torch.tensor([0, 4, 9]))
        b = model.explain(x, torch.tensor([1, 4, 2]))
        cm = model.class_maps(x, torch.tensor([[3, 7], [0, 0], [9, 1]]))
    assert a.shape == (3, 1, 32, 32) and torch.isfinite(a).all() and (a >= 0).all()
    for i, t in enumerate([0, 4, 9]):
        ref = F.interpolate(out.attention[i:i + 1, t:t + 1], size=(32, 32), mode="bilinear",
                            align_corners=False)
        assert torch.allclose(a[i:i + 1], ref, atol=1e-6)
    assert not torch.allclose(a[0], b[0], atol=1e-3) and torch.equal(a[1], b[1])
    assert cm.shape == (3, 2, 8, 8)
    assert torch.equal(cm[0, 1], out.class_maps[0, 7]) and torch.equal(cm[2, 0],
                                                                       out.class_maps[2, 9])
    assert torch.equal(cm[1, 0], cm[1, 1])


def test_parameter_groups_and_folding(model: MultiTaskABN) -> None:
    groups = model.parameter_groups()
    check_groups(model, groups)
    assert [n for n, _ in groups] == ["perception branch", "attention branch",
                                      "feature extractor"]
    x = torch.randn(2, 3, 32, 32)
    fast = folded(model)
    with torch.no_grad():
        a, b = model(x), fast(x)
    bn = [m for m in fast.attention_branch.modules() if type(m) is nn.BatchNorm2d]
    assert bn == [fast.attention_branch.bn]  # the trunk's pairs fold; BN before conv stays
    assert torch.allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(a.att_logits, b.att_logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(a.attention, b.attention, rtol=1e-4, atol=1e-4)


def test_one_training_step_and_both_losses_reach_the_branch() -> None:
    model = _model().train()
    x, y = torch.randn(4, 3, 32, 32), _labels(4)
    batch = {"image": x, "labels": y, "label": y.argmax(1)}
    w = model.attention_branch.to_tasks.weight
    out = model(x)
    l_att = F.binary_cross_entropy_with_logits(out.att_logits, y)
    l_per = F.binary_cross_entropy_with_logits(out.logits, y)
    (g_att,) = torch.autograd.grad(l_att, w, retain_graph=True)
    (g_per,) = torch.autograd.grad(l_per, w)
    assert g_att.abs().sum() > 0 and g_per.abs().sum() > 0  # L_per through M^t
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = model.configure_optimizers(config.TrainConfig(lr=0.1))
    logs = model.training_step(batch, opts)
    assert set(logs) == {"loss", "l_att", "l_per"} and math.isfinite(logs["loss"])
    changed = {k.split(".")[0] for k, v in model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    assert changed == {"backbone", "attention_branch"}
    assert not torch.equal(w, before["attention_branch.to_tasks.weight"])


def test_scored_layer_explainers_do_not_apply() -> None:
    """The last stage runs on T maps per image: Grad-CAM and the like refuse the model;
    the native explanation and the random floor apply."""
    model = _model()
    for name in EXPLAINERS.names():
        if name in ("native", "random"):
            assert build(name, model).name == name
        else:
            with pytest.raises(NotApplicable, match="10 maps per image"):
                build(name, model)


def test_conformance_on_single_and_multi_label_data() -> None:
    testing.check_method("abn-multitask")
    cfg = config.resolve("smoke")
    split = data.build("cluttered-digits-multilabel", "train", n_train=8)
    assert split.info.multi_label
    testing.check_method("abn-multitask", cfg=cfg, split=split)

"""The ABN fine-tuning family against the papers' equations on hand-checkable tensors."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness import backbones, config, data, train
from harness.backbones import SplitBackbone
from harness.data import DIGITS_INFO
from methods.abn import ABN
from methods.abn_finetune import AMB, COMB, COT, HK, complement_entropy_loss
from metrics.base import EvalBatch
from metrics.standard import AttnFixGain, max_wrong_prob


def np_complement_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """-C/K with the COT code's epsilons, sample by sample."""
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        p = np.exp(logits[i] - logits[i].max())
        p /= p.sum()
        for j in range(k):
            if j != y[i]:
                q = p[j] / (1 - p[y[i]] + 1e-7)
                total += q * np.log(q + 1e-10)
    return total / n / k


def test_complement_entropy_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)) * 3
    y = rng.integers(0, 5, 6)
    ours = complement_entropy_loss(torch.from_numpy(logits), torch.from_numpy(y))
    assert ours.item() == pytest.approx(np_complement_loss(logits, y), rel=1e-6)
    # a flat complement has the maximal entropy log(K-1): loss = -log(K-1)/K
    flat = torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]])
    assert complement_entropy_loss(flat, torch.tensor([0])).item() == pytest.approx(
        -math.log(4) / 5, rel=1e-5)


def test_complement_entropy_when_true_class_is_certain() -> None:
    logits = torch.tensor([[60.0, 0.0, -3.0, 1.0], [0.0, 0.5, 0.1, 40.0]], requires_grad=True)
    y = torch.tensor([0, 3])
    loss = complement_entropy_loss(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(np_complement_loss(logits.detach().numpy(), y.numpy()),
                                        abs=1e-6)


def test_complement_entropy_of_bf16_logits_is_computed_in_float32() -> None:
    # bf16 outputs (autocast) with a confident true class: in bf16 arithmetic
    # 1 - y_g + 1e-7 rounds to 0 and the loss explodes; the loss upcasts first
    logits = torch.tensor([[12.0, 0.0, -3.0, 1.0], [0.0, 0.5, 0.1, 9.0]]).bfloat16()
    y = torch.tensor([0, 3])
    loss = complement_entropy_loss(logits, y)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(np_complement_loss(logits.float().numpy(), y.numpy()),
                                        rel=1e-5)


@pytest.fixture
def amb() -> AMB:
    torch.manual_seed(0)
    return AMB(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO, sigma=0.5)


def test_amb_mask_and_masked_features(amb: AMB) -> None:
    m = torch.tensor([[[[0.3, 0.5], [0.7, 0.9]]]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([[[[sig(-20), 0.5], [sig(20), sig(40)]]]])
    assert torch.allclose(amb.mask(m), expected)
    g = torch.full((1, 3, 2, 2), 2.0)
    # F* = F - T(A) F: the highlighted cells are (almost) removed, the others kept
    f_star = g - amb.mask(m) * g
    assert torch.allclose(f_star[0, :, 0, 0], torch.full((3,), 2.0), atol=1e-8)
    assert torch.allclose(f_star[0, :, 0, 1], torch.full((3,), 1.0))
    assert f_star[0, :, 1, 1].abs().max() < 1e-16


def test_amb_loss_is_eq4(amb: AMB) -> None:
    amb.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    out = amb(x)
    loss, logs = amb.loss(out, {"label": y})
    base = F.cross_entropy(out.att_logits, y) + F.cross_entropy(out.logits, y)
    amb.backbone.eval()
    f_star = out.features - amb.mask(out.attention) * out.features
    mined = amb.backbone.head(amb.backbone.last_stage(f_star))
    s = F.softmax(mined, 1)[torch.arange(4), y].sum()
    assert torch.allclose(loss, base + 1e-4 * s, atol=1e-6)
    assert logs["l_am"] == pytest.approx(float(s.detach()), rel=1e-5)


def test_mining_pass_keeps_bn_statistics_and_reaches_the_attention_branch(amb: AMB) -> None:
    amb.train()
    x = torch.randn(4, 3, 64, 64)
    out = amb(x)
    stats = {k: v.clone() for k, v in amb.state_dict().items() if "running" in k}
    mined = amb.mine(out.features, out.attention)
    after = {k: v for k, v in amb.state_dict().items() if "running" in k}
    assert all(torch.equal(stats[k], after[k]) for k in stats)
    assert all(m.training for m in amb.modules())  # modes restored
    # L_am reaches the attention branch only through T(A)
    s = F.softmax(mined, 1)[:, 0].sum()
    grads = torch.autograd.grad(s, [amb.attention_branch.to_map.weight,
                                    amb.attention_branch.head.weight], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is None  # the attention logits' head is not on the mining path


def _count_steps(opts: list[torch.optim.Optimizer]) -> list[int]:
    counts = [0] * len(opts)
    for i, o in enumerate(opts):
        orig = o.step

        def step(*a: Any, _i: int = i, _orig: Any = orig, **k: Any) -> Any:
            counts[_i] += 1
            return _orig(*a, **k)

        o.step = step  # type: ignore[method-assign]
    return counts


@pytest.mark.parametrize("cls", [COT, COMB])
def test_two_optimiser_steps_each_with_own_state(cls: type[ABN], smoke_cfg: config.RunConfig,
                                                 smoke_train: data.Split) -> None:
    torch.manual_seed(0)
    kw = {"sigma": 0.5} if cls is COMB else {}
    model = cls(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO, **kw)
    model.train()
    opts = model.configure_optimizers(smoke_cfg.train)
    assert len(opts) == 2
    counts = _count_steps(opts)
    batch = next(iter(DataLoader(smoke_train.dataset, batch_size=8)))
    for n in (1, 2):
        logs = model.training_step(batch, opts)
        assert counts == [n, n]
        assert all(math.isfinite(v) for v in logs.values()) and "l_comp" in logs
    p = next(model.parameters())
    b1, b2 = opts[0].state[p]["momentum_buffer"], opts[1].state[p]["momentum_buffer"]
    assert b1.data_ptr() != b2.data_ptr() and not torch.equal(b1, b2)


def test_comb_step_two_is_complement_entropy_of_the_mining_branch() -> None:
    torch.manual_seed(0)
    model = COMB(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO, sigma=0.5)
    model.eval()  # fixed BN statistics: both computations see the same network
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([1, 2, 3, 4])
    ours = model.complement_loss({"image": x, "label": y})
    out = model(x)
    ref = complement_entropy_loss(model.mine(out.features, out.attention), y)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_hk_edit_and_selection(smoke_cfg: config.RunConfig, smoke_train: data.Split) -> None:
    torch.manual_seed(0)
    hk = HK(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO).eval()
    m = torch.rand(2, 1, 16, 16)
    boxes = torch.tensor([[8.0, 12.0, 40.0, 30.0], [0.0, 0.0, 64.0, 64.0]])
    edited = hk.edit(m, boxes, (64, 64))
    # cells of 4 px whose centres lie in the box: columns 2..9, rows 3..7
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[3:8, 2:10] = True
    assert torch.equal(edited[0, 0][inside], m[0, 0][inside])
    assert (edited[0, 0][~inside] == 0).all()
    assert torch.equal(edited[1], m[1])
    # selection: the misclassified samples, and only those (Mitsuhara et al.)
    batch = next(iter(DataLoader(smoke_train.dataset, batch_size=16)))
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        sel = hk.select(x, y)
        out = hk(x)
    assert torch.equal(sel, out.logits.argmax(1) != y)
    facts = hk.on_fit_start(smoke_train, torch.device("cpu"))
    assert facts["edited_samples"] == int(hk.selected.sum()) > 0
    assert facts["edited_share"] == pytest.approx(facts["edited_samples"] / len(hk.selected))


def test_hk_perceives_through_the_edited_map(smoke_train: data.Split) -> None:
    torch.manual_seed(0)
    hk = HK(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO).eval()
    batch = next(iter(DataLoader(smoke_train.dataset, batch_size=6)))
    hk.selected = torch.tensor([True, False] * 3 + [False] * 58)
    with torch.no_grad():
        out, m_out, m_edit = hk.forward_edited(batch)
        g = hk.backbone.features(batch["image"])
        _, _, m = hk.attention_branch(g)
        m_prime = hk.edit(m, batch["bbox"], (64, 64))
        plain = hk.perceive(g, m)
        edited = hk.perceive(g, m_prime)
    assert torch.allclose(out.logits[0::2], edited[0::2], atol=1e-5)
    assert torch.allclose(out.logits[1::2], plain[1::2], atol=1e-5)
    assert torch.equal(m_edit[0::2], m_prime[0::2]) and torch.equal(m_edit[1::2], m_out[1::2])


def test_hk_map_loss_is_the_per_sample_l2_norm() -> None:
    """L_map = gamma * ||M' - M||_2 per sample (not a mean over cells), batch-averaged."""
    hk = HK(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO, gamma=0.5)
    m = torch.zeros(2, 1, 2, 2)
    m_edit = m.clone()
    m_edit[0, 0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||.||_2 = 5; sample 1: 0
    assert hk.map_loss(m, m_edit).item() == pytest.approx(0.5 * (5.0 + 0.0) / 2)


def test_hk_fine_tunes_the_branches_with_the_feature_extractor_frozen(
        smoke_train: data.Split) -> None:
    torch.manual_seed(0)
    hk = HK(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO)
    hk.selected = torch.ones(len(smoke_train.dataset), dtype=torch.bool)
    before = {k: v.clone() for k, v in hk.state_dict().items()}
    opts = hk.configure_optimizers(config.TrainConfig(lr=0.05))
    batch = next(iter(DataLoader(smoke_train.dataset, batch_size=8)))
    hk.train()
    logs = hk.training_step(batch, opts)
    assert logs["l_map"] > 0 and math.isfinite(logs["loss"])
    after = hk.state_dict()
    feats = [k for k in before if k.startswith("backbone.features.")]
    assert feats and all(torch.equal(before[k], after[k]) for k in feats)  # BN stats too
    for prefix in ("attention_branch.", "backbone.last_stage.", "backbone.fc."):
        changed = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()
                   and not torch.equal(before[k], after[k])]
        assert changed, prefix
    assert hk.backbone.features.training  # modes restored after the frozen pass


def test_hk_requires_boxes() -> None:
    from harness.errors import UserError

    no_boxes = dataclasses.replace(DIGITS_INFO, has_boxes=False)
    with pytest.raises(UserError, match="needs bounding boxes"):
        HK(backbones.build("cifar-resnet8", 10), no_boxes)


class FixedAttention(nn.Module):
    def __init__(self, m: torch.Tensor) -> None:
        super().__init__()
        self.m = m

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = g.shape[0]
        return torch.zeros(b, 2, 4, 4), torch.zeros(b, 2), self.m.expand(b, 1, 4, 4)


def test_attn_fix_gain_known_answer() -> None:
    """Identity features, identity last stage, GAP + identity fc, M = 0.9 everywhere.

    Class 0 (true) evidence: 1 in the box (top-left 2x2); class 1 evidence: 1.5 in the
    bottom-right 2x2, outside the box. Before: logits (1.9*4/16, 1.9*1.5*4/16) =
    (0.475, 0.7125), wrong. Removing attention outside the box: (0.475, 0.375), right.
    """
    bb = SplitBackbone(nn.Identity(), nn.Identity(), 2, 2, 2)
    with torch.no_grad():
        bb.fc.weight.copy_(torch.eye(2))
        bb.fc.bias.zero_()
    info = dataclasses.replace(DIGITS_INFO, num_classes=2, image_size=(4, 4))
    abn = ABN(bb, info)
    abn.attention_branch = FixedAttention(torch.full((1, 1, 4, 4), 0.9))  # type: ignore[assignment]
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, :2, :2] = 1.0
    x[0, 1, 2:, 2:] = 1.5
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    y = torch.tensor([0])
    logits = abn(x).logits
    fixed = abn.fixed_attention_logits(abn(x), box, (4, 4))
    assert torch.allclose(logits, torch.tensor([[0.475, 0.7125]]))
    assert torch.allclose(fixed, torch.tensor([[0.475, 0.375]]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # a second image that abn gets right with nothing outside the box: no change
    x2 = torch.cat([x, torch.zeros(1, 2, 4, 4)])
    x2[1, 0, :2, :2] = 1.0
    y2, box2 = torch.tensor([0, 0]), box.expand(2, 4)
    out2 = abn(x2)
    batch = EvalBatch(images=x2, labels=y2, logits=out2.logits,
                      saliency=torch.zeros(2, 1, 4, 4), boxes={"bbox": box2},
                      fixed_logits=abn.fixed_attention_logits(out2, box2, (4, 4)),
                      comb_mask=torch.tensor([True, False]))
    gain = sig(-0.1) - sig(0.2375)
    # COMB Table 1: only the images the reference misclassifies (the comb subset)
    wrong, top1 = AttnFixGain("max_wrong_prob"), AttnFixGain("top1")
    wrong.update(batch)
    top1.update(batch)
    assert len(wrong.per_image()[0]) == 1
    assert wrong.compute().item() == pytest.approx(gain, abs=1e-6)
    assert top1.compute().item() == 1.0
    # the all-images diagnostic
    wrong_all = AttnFixGain("max_wrong_prob", subset=False)
    wrong_all.update(batch)
    assert wrong_all.per_image()[0] == pytest.approx([gain, 0.0], abs=1e-6)
    assert max_wrong_prob(logits, y).item() == pytest.approx(sig(0.2375), abs=1e-6)
    # no subset computed (abn not in the run): the subset column is N/A
    no_subset = AttnFixGain("top1")
    no_subset.update(dataclasses.replace(batch, comb_mask=None))
    assert math.isnan(no_subset.compute().item())
    # a method without an attention mechanism has no score: N/A, not 0
    na = AttnFixGain("top1", subset=False)
    na.update(dataclasses.replace(batch, fixed_logits=None))
    assert math.isnan(na.compute().item())


def test_sigma_auto_follows_the_attention_statistics(smoke_cfg: config.RunConfig,
                                                     smoke_train: data.Split) -> None:
    model = train.build_method("abn-amb", smoke_cfg, smoke_train).eval()
    facts = model.on_fit_start(smoke_train, torch.device("cpu"))
    assert math.isfinite(facts["sigma"]) and model.sigma.item() == facts["sigma"]
    with torch.no_grad():
        ms = torch.cat([model(b["image"]).attention.flatten()
                        for b in DataLoader(smoke_train.dataset.with_transform(  # type: ignore[attr-defined]
                            data.make_transform(smoke_train.info, train=False)), batch_size=32)])
    share_above = (ms > facts["sigma"]).float().mean().item()
    rho = 1 - float(facts["sigma_rule"].split()[1])
    assert share_above == pytest.approx(rho, abs=0.02)
    fixed = train.build_method("abn-amb", smoke_cfg, smoke_train, sigma=0.78)
    assert fixed.on_fit_start(smoke_train, torch.device("cpu"))["sigma"] == pytest.approx(0.78)


def test_cot_step_two_is_complement_entropy_of_both_branches() -> None:
    torch.manual_seed(0)
    model = COT(backbones.build("cifar-resnet8", 10, stem_stride=2), DIGITS_INFO).eval()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([1, 2, 3, 4])
    ours = model.complement_loss({"image": x, "label": y})
    out = model(x)
    ref = complement_entropy_loss(out.att_logits, y) + complement_entropy_loss(out.logits, y)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_comb_insertion_protocol() -> None:
    """Ground-truth class, only the masked images, top-p % kept in 5 % steps, rest zero."""
    from metrics.standard import CombInsertionAUC

    class Frac(nn.Module):  # p(class 0) = share of non-zero pixels
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            p = (z != 0).float().mean((1, 2, 3))
            return torch.log(torch.stack([p, 1 - p], 1).clamp_min(1e-30))

    imgs = torch.ones(3, 3, 10, 10)
    sal = torch.rand(3, 1, 10, 10)
    labels = torch.tensor([0, 1, 0])
    m = CombInsertionAUC()
    m.update(EvalBatch(images=imgs, labels=labels, logits=torch.zeros(3, 2), saliency=sal,
                       model=Frac(), comb_mask=torch.tensor([True, True, False])))
    scores, classes = m.per_image()
    assert classes.tolist() == [0, 1]  # only the masked images
    curve = m.curves[0]
    assert curve.shape == (2, 21)  # 100 pixels, 5 per step: 20 steps
    k = torch.arange(21) / 20
    assert torch.allclose(curve[0], k, atol=1e-6)  # ground-truth class 0: share kept
    assert torch.allclose(curve[1], 1 - k, atol=1e-6)  # class 1 tracked for image 1
    assert scores.tolist() == pytest.approx([0.5, 0.5])
    none = CombInsertionAUC()
    none.update(EvalBatch(images=imgs, labels=labels, logits=torch.zeros(3, 2), saliency=sal,
                          model=Frac(), comb_mask=torch.zeros(3, dtype=torch.bool)))
    assert math.isnan(none.compute().item())


def test_misclassified_marks_wrong_predictions(smoke_test: data.Split) -> None:
    from harness.evaluate import misclassified

    class Always(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.c = c

        def forward(self, z: torch.Tensor) -> Any:
            from methods.base import Output

            return Output(logits=F.one_hot(torch.full((len(z),), self.c), 10).float())

    wrong = misclassified(Always(3), smoke_test, torch.device("cpu"))  # type: ignore[arg-type]
    labels = torch.tensor([smoke_test.dataset[i]["label"] for i in range(len(wrong))])
    assert torch.equal(wrong, labels != 3)

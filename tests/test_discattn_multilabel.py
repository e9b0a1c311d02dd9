"""Discriminative attention on multi-label targets (Wang et al. 2019, Sec. 4.3): the
class-concurrence attention against hand-derived gradients and an independent
per-image computation, its linearity in the gradient, the confusing class among the
absent ones, the multi-label soft margin loss, and training on a multi-label batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import config, data, train
from harness.planning import drop_unsupported
from methods import discattn
from methods.base import METHODS
from methods.discattn_core import (
    class_attention,
    confusing_weights,
    most_confusing_absent,
)
from tests.test_discattn import KINDS, _batch, _np_map, _np_siou, assert_step_updates

# ---- a tiny hand-set model: logits_c = sum_k W_ck mean_ij (F^k_ij)^2, so that
# dY_c / dF^k_ij = W_ck F^k_ij / 2 on a 2x2 map (a gradient that varies per pixel)

W = torch.tensor([[1.0, -1.0], [2.0, 0.5], [-0.5, 2.0]])  # [classes, K]
FEAT = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[0.5, 0.0], [1.0, 3.0]]],
                     [[[-2.0, 1.0], [1.0, 0.5]], [[1.0, -1.0], [2.0, 0.0]]]])  # [B,K,2,2]
PRESENT = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # image 0: {0, 2}; image 1: {1}


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    f = FEAT.clone().requires_grad_(True)
    return f, (f ** 2).mean((2, 3)) @ W.T


def _pre_relu(kind: str, g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The map before its final ReLU, ``g`` and ``f`` ``[B,K,h,w]``."""
    if kind == "px":
        return (g * f).mean(1)
    alpha = (F.relu(g) if kind == "ch" else g).mean((2, 3), keepdim=True)
    return (alpha * f).sum(1)


@pytest.mark.parametrize("kind", ["ch", "px", "gradcam"])
def test_concurrence_attention_is_that_of_the_summed_scores(kind: str) -> None:
    """A multi-hot row's map == the map of the gradient of the summed scores of its
    classes: the gradient by hand (W_a + W_b) F / 2, and by torch.autograd.grad of the
    sum, per image."""
    f, logits = _tiny()
    (got,) = class_attention(logits, [f], PRESENT, kind)
    for b in range(2):
        classes = PRESENT[b].nonzero().flatten().tolist()
        (g,) = torch.autograd.grad(logits[b, classes].sum(), [f],
                                   retain_graph=True)
        by_hand = W[classes].sum(0).view(-1, 1, 1) * FEAT[b] / 2
        assert torch.allclose(g[b], by_hand)
        want = _np_map(kind, by_hand.numpy(), FEAT[b].numpy())
        assert np.allclose(got[b].detach().numpy(), want, atol=1e-6), (kind, b)
    # image 0's gradient is (0.5, 1)_k F^k / 2, so A_px = ReLU(mean_k (0.5, 1)_k (F^k)^2 / 2)
    # = ([.25, 1, 0, .25] + [.125, 0, .5, 4.5]) / 2
    if kind == "px":
        assert torch.allclose(got[0], torch.tensor([[0.1875, 0.5], [0.25, 2.375]]))


def test_px_and_gradcam_are_linear_in_the_gradient_ch_is_not() -> None:
    """The concurrence gradient is the sum of the per-class gradients (autograd is
    linear), and A_px (mean_k g F) and Grad-CAM (sum_k mean(g) F) are linear in g
    before their final ReLU: their concurrence map is ReLU of the sum of the per-class
    pre-ReLU maps. A_ch takes ReLU of the gradient first, so classes whose gradients
    have opposite signs do not add."""
    f, logits = _tiny()
    g_a, g_b = (torch.autograd.grad(logits[:, c].sum(), [f], retain_graph=True)[0]
                for c in (0, 2))
    (g_ab,) = torch.autograd.grad(logits[:, 0].sum() + logits[:, 2].sum(), [f],
                                  retain_graph=True)
    assert torch.allclose(g_ab, g_a + g_b)
    both = torch.tensor([[1.0, 0.0, 1.0]] * 2)
    for kind in ("px", "gradcam"):
        (got,) = class_attention(logits, [f], both, kind)
        want = F.relu(_pre_relu(kind, g_a, f) + _pre_relu(kind, g_b, f))
        assert torch.allclose(got, want.detach(), atol=1e-6), kind
    (ch,) = class_attention(logits, [f], both, "ch")
    summed = F.relu(_pre_relu("ch", g_a, f) + _pre_relu("ch", g_b, f)).detach()
    assert torch.allclose(ch, F.relu(_pre_relu("ch", g_ab, f)).detach())
    assert not torch.allclose(ch, summed)
    # image 0, channel weights mean_ij ReLU(g): the concurrence gradient (0.25 F^0, 0.5 F^1)
    # gives (0.75 / 4, 2.25 / 4); the classes apart (0.5 F^0, -0.5 F^1) and
    # (-0.25 F^0, F^1) give (1.5 / 4, 0) + (0.25 / 4, 4.5 / 4)
    assert torch.allclose(F.relu(g_ab).mean((2, 3))[0], torch.tensor([0.1875, 0.5625]))
    assert torch.allclose((F.relu(g_a) + F.relu(g_b)).mean((2, 3))[0],
                          torch.tensor([0.4375, 1.125]))


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("kind", ["ch", "px", "gradcam"])
def test_a_one_hot_row_is_its_class_index_bit_for_bit(kind: str, create_graph: bool,
                                                       smoke_cfg: config.RunConfig,
                                                       smoke_train: data.Split) -> None:
    f, logits = _tiny()
    idx = torch.tensor([2, 1])
    a = class_attention(logits, [f], idx, kind, create_graph=create_graph)
    b = class_attention(logits, [f], F.one_hot(idx, 3).float(), kind,
                        create_graph=create_graph)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    # and on a backbone in training mode (batch statistics), at both layers
    model = train.build_method(f"discattn-{kind}", smoke_cfg, smoke_train).train()
    assert isinstance(model, discattn.DiscriminativeAttention)
    inner, last, lg = model.layers(_batch(smoke_train, 4)["image"])
    y = torch.tensor([3, 0, 9, 3])
    a = class_attention(lg, [inner, last], y, kind, create_graph=create_graph)
    b = class_attention(lg, [inner, last], F.one_hot(y, 10).float(), kind,
                        create_graph=create_graph)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_confusing_class_is_the_highest_scoring_absent_one() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0],    # holds 0: 2 (score 2) beats 1 and 3
                           [0.5, 4.0, -1.0, 2.0],   # holds 1 and 3: 0 (0.5) beats 2
                           [1.0, 1.0, 1.0, 1.0],    # holds every class: none (-1)
                           [0.0, 5.0, 5.0, 1.0],    # holds none: tie 1 / 2, lowest index
                           [9.0, 8.0, -3.0, 7.0]])  # holds 0, 1, 3: only 2 is left
    present = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0],
                            [1, 1, 0, 1]]).float()
    assert most_confusing_absent(logits, present).tolist() == [2, 0, -1, 1, 2]
    assert most_confusing_absent(logits, present.bool()).tolist() == [2, 0, -1, 1, 2]
    w = confusing_weights(logits, present)
    assert w.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0],
                          [0, 0, 1, 0]]
    # a zero row selects nothing: zero gradient, an all-zero map
    f, tiny_logits = _tiny()
    (a,) = class_attention(tiny_logits, [f], torch.zeros(2, 3), "px")
    assert torch.equal(a, torch.zeros(2, 2, 2))


# ---- the method on the multi-label digits

@pytest.fixture(scope="module")
def ml_train() -> data.Split:
    return data.build("cluttered-digits-multilabel", "train", n_train=16, n_test=8)


def _ml_batch(split: data.Split, n: int = 6) -> dict[str, torch.Tensor]:
    """``n`` images; the second holds every class and the third none (the two edge
    cases of the multi-label objective)."""
    batch = _batch(split, n)
    batch["labels"] = batch["labels"].clone()
    batch["labels"][1] = 1.0
    batch["labels"][2] = 0.0
    return batch


def _ml_model(name: str, cfg: config.RunConfig, split: data.Split, steps: int = 3,
              **options: object) -> discattn.DiscriminativeAttention:
    """A model whose attention is not degenerate: a few SGD steps on the sigmoid loss."""
    model = train.build_method(name, cfg, split, **options)
    assert isinstance(model, discattn.DiscriminativeAttention) and model.info.multi_label
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batch = _batch(split, 16)
    model.train()
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(batch["image"]).logits,
                                                  batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_the_three_variants_take_multi_label_targets(ml_train: data.Split) -> None:
    assert all(METHODS.entry(n).meta["multi_label"] for n in KINDS)
    assert drop_unsupported(list(KINDS), ml_train.info, explicit=True) == list(KINDS)


@pytest.mark.parametrize("name", KINDS)
def test_multi_label_objective_equals_eq9_computed_per_image(
        name: str, smoke_cfg: config.RunConfig, ml_train: data.Split) -> None:
    """Batch objective (eval-mode BN: images independent) == Eq. 9 from per-image
    gradients of the summed scores of the classes present, the highest-scoring absent
    class as the confusing one, the multi-label soft margin loss; an image holding
    every class has no sIoU terms, one holding none a zero target map (L_ac = alpha)."""
    model = _ml_model(name, smoke_cfg, ml_train).eval()
    batch = _ml_batch(ml_train)
    x, labels = batch["image"], batch["labels"]
    with torch.no_grad():  # image 0 also holds its top-scoring class: not the confusing one
        top = int(model(x[:1]).logits.argmax())
    labels[0, top] = 1.0
    loss, logs = model.objective(x, labels)

    inner, last, logits = model.layers(x)
    mlsm = F.multilabel_soft_margin_loss(logits, labels).item()
    s_i, s_l, l_ac = [], [], []
    for b in range(len(x)):
        held = labels[b].nonzero().flatten().tolist()
        absent = [c for c in range(10) if c not in held]
        if not held:  # zero target attention: mask ~0, no overlap, L_ac = alpha
            s_i.append(0.0)
            s_l.append(0.0)
            l_ac.append(0.8)
            continue
        score = logits[b, held].sum()
        g_in, g_last = torch.autograd.grad(score, [inner, last], retain_graph=True)
        t_in, t_last = (_np_map(model.kind, g[b].numpy(), f[b].detach().numpy())
                        for g, f in ((g_in, inner), (g_last, last)))
        mask = 1 / (1 + np.exp(-100 * (t_last / t_last.max() - 0.55)))
        mask_in = F.interpolate(torch.from_numpy(mask)[None, None].float(),
                                size=t_in.shape, mode="bilinear",
                                align_corners=False)[0, 0].numpy()
        l_ac.append(0.8 - (t_in * mask_in).sum() / t_in.sum())
        if not absent:  # no confusing class
            s_i.append(0.0)
            s_l.append(0.0)
            continue
        conf = max(absent, key=lambda c: (float(logits[b, c].detach()), -c))
        g_in, g_last = torch.autograd.grad(logits[b, conf], [inner, last], retain_graph=True)
        c_in, c_last = (_np_map(model.kind, g[b].numpy(), f[b].detach().numpy())
                        for g, f in ((g_in, inner), (g_last, last)))
        s_l.append(_np_siou(t_last, c_last, mask))
        s_i.append(_np_siou(t_in, c_in, mask_in))
    want = {"ce": mlsm, "siou_i": np.mean(s_i), "siou_l": np.mean(s_l), "l_ac": np.mean(l_ac)}
    for k, v in want.items():
        assert logs[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert loss.item() == pytest.approx(sum(want.values()), rel=1e-4)
    assert 0 < logs["siou_l"] < 1 and 0 < logs["siou_i"] < 1  # non-degenerate case
    assert min(len(labels[b].nonzero()) for b in (0, 3, 4, 5)) >= 2  # real concurrences
    assert int(logits[0].argmax()) == top != int(confusing_weights(logits, labels)[0].argmax())


def test_objective_backpropagates_finite_gradients_in_train_mode(
        smoke_cfg: config.RunConfig, ml_train: data.Split,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Training mode (batch statistics couple the images, so a zero row's inner map need
    not be exactly zero): every term is finite and reaches the feature extractor, and
    the image holding every class still counts 0 in both sIoU means."""
    model = _ml_model("discattn-px", smoke_cfg, ml_train, steps=0).train()
    batch = _ml_batch(ml_train, 4)
    loss, logs = model.objective(batch["image"], batch["labels"])
    assert all(np.isfinite(v) for v in logs.values()), logs
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.features")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # every image's sIoU replaced by 1: the mean counts the three with a confusing class
    monkeypatch.setattr(discattn, "soft_iou", lambda a, b, m: torch.ones(len(a)))
    _, ones = model.objective(batch["image"], batch["labels"])
    assert ones["siou_i"] == ones["siou_l"] == 0.75


@pytest.mark.parametrize("name,create_graph", [(n, False) for n in KINDS]
                         + [("discattn-ch", True)])
def test_one_multi_label_step_changes_weights(name: str, create_graph: bool,
                                              smoke_cfg: config.RunConfig,
                                              ml_train: data.Split) -> None:
    model = _ml_model(name, smoke_cfg, ml_train, steps=0, create_graph=create_graph)
    assert_step_updates(model, _ml_batch(ml_train, 8), smoke_cfg)


def test_explanations_stay_one_class_each(smoke_cfg: config.RunConfig,
                                          ml_train: data.Split) -> None:
    """explain / class_maps on a multi-label model: each class's own (one-hot) map."""
    model = _ml_model("discattn-gradcam", smoke_cfg, ml_train).eval()
    x = _batch(ml_train, 4)["image"]
    classes = torch.tensor([[0, 5], [1, 6], [2, 7], [3, 8]])
    with torch.no_grad():
        maps = model.class_maps(x, classes)
    with torch.enable_grad():
        _, last, logits = model.layers(x)
        for j in range(2):
            (want,) = class_attention(logits, [last], classes[:, j], "gradcam")
            assert torch.equal(maps[:, j], want.detach())

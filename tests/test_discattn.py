"""Discriminative attention as a Method: Eq. 9 against an independent per-sample
computation, one training step, and no hooks or gradient side effects on errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from harness import config, data, train
from methods import discattn
from methods.base import upsample
from tests.conftest import all_hooks

KINDS = ("discattn-ch", "discattn-px", "discattn-gradcam")


def _batch(split: data.Split, n: int = 6) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(split.dataset, batch_size=n)))


def _np_map(kind: str, g: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Eqs. 1-5 for one image, ``g`` and ``f`` ``[K,h,w]``, in numpy."""
    if kind == "px":
        return np.maximum((g * f).mean(0), 0)
    w = np.maximum(g, 0).mean((1, 2)) if kind == "ch" else g.mean((1, 2))
    return np.maximum(np.tensordot(w, f, axes=1), 0)


def _np_siou(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(2 * (np.minimum(a, b) * mask).sum() / (a + b).sum())


def _trained_a_little(name: str, cfg: config.RunConfig, split: data.Split
                      ) -> discattn.DiscriminativeAttention:
    """A model whose attention is not degenerate: a few plain SGD steps."""
    model = train.build_method(name, cfg, split)
    assert isinstance(model, discattn.DiscriminativeAttention)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batch = _batch(split, 16)
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(batch["image"]).logits, batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("name", KINDS)
def test_objective_equals_eq9_computed_per_sample(name: str, smoke_cfg: config.RunConfig,
                                                  smoke_train: data.Split) -> None:
    """Batch objective (eval-mode BN: samples independent) == Eq. 9 from per-sample
    gradients of single logits, maps, mask, sIoU and L_ac recomputed in numpy."""
    model = _trained_a_little(name, smoke_cfg, smoke_train).eval()
    batch = _batch(smoke_train)
    x, y = batch["image"], batch["label"]
    loss, logs = model.objective(x, y)

    inner, last, logits = model.layers(x)
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    s_i, s_l, l_ac = [], [], []
    for b in range(len(y)):
        wrong = logits[b].detach().clone()
        wrong[y[b]] = -np.inf
        conf = int(wrong.argmax())
        maps = {}
        for c in (int(y[b]), conf):
            g_in, g_last = torch.autograd.grad(logits[b, c], [inner, last], retain_graph=True)
            maps[c] = [_np_map(model.kind, g[b].numpy(), f[b].detach().numpy())
                       for g, f in ((g_in, inner), (g_last, last))]
        (t_in, t_last), (c_in, c_last) = maps[int(y[b])], maps[conf]
        mask = 1 / (1 + np.exp(-100 * (t_last / t_last.max() - 0.55)))  # Eq. 7 on A / max A
        mask_in = torch.nn.functional.interpolate(
            torch.from_numpy(mask)[None, None].float(), size=t_in.shape, mode="bilinear",
            align_corners=False)[0, 0].numpy()
        s_l.append(_np_siou(t_last, c_last, mask))
        s_i.append(_np_siou(t_in, c_in, mask_in))
        l_ac.append(0.8 - (t_in * mask_in).sum() / t_in.sum())
    want = {"ce": ce, "siou_i": np.mean(s_i), "siou_l": np.mean(s_l), "l_ac": np.mean(l_ac)}
    for k, v in want.items():
        assert logs[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert loss.item() == pytest.approx(sum(want.values()), rel=1e-4)
    assert 0 < logs["siou_l"] < 1 and 0 < logs["siou_i"] < 1  # non-degenerate case


def test_last_layer_maps_are_per_sample_in_train_mode(smoke_cfg: config.RunConfig,
                                                      smoke_train: data.Split) -> None:
    """The head (GAP + linear) couples no samples, so last-layer maps are per-sample
    exact even with batch-norm batch statistics; the inner layer's are exact in eval
    mode (previous test)."""
    model = _trained_a_little("discattn-px", smoke_cfg, smoke_train).train()
    x = _batch(smoke_train)["image"]
    classes = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        batch_maps = model.last_maps(x, classes.view(-1, 1))
    for b in range(len(x)):
        _, last, logits = model.layers(x)
        (g,) = torch.autograd.grad(logits[b, classes[b]], [last])
        want = torch.relu((g[b] * last[b]).mean(0))
        assert torch.allclose(batch_maps[b, 0], want.detach(), atol=1e-6)


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("name", KINDS)
def test_one_smoke_step_changes_weights_with_finite_losses(
        name: str, create_graph: bool, smoke_cfg: config.RunConfig,
        smoke_train: data.Split) -> None:
    model = train.build_method(name, smoke_cfg, smoke_train, create_graph=create_graph)
    model.train()
    assert_step_updates(model, _batch(smoke_train, 16), smoke_cfg)


def assert_step_updates(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                        cfg: config.RunConfig) -> None:
    """One training step on ``batch``: finite logs of Eq. 9's parts that add up to the
    loss, the feature extractor's weights changed, every weight finite."""
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opts = model.configure_optimizers(cfg.train)  # type: ignore[operator]
    logs = model.training_step(batch, opts)  # type: ignore[operator]
    assert set(logs) == {"loss", "ce", "siou_i", "siou_l", "l_ac"}
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["loss"] == pytest.approx(logs["ce"] + logs["siou_i"] + logs["siou_l"]
                                         + logs["l_ac"], rel=1e-5)
    changed = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    assert changed and any(k.startswith("backbone.features") for k in changed)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_create_graph_changes_the_update(smoke_cfg: config.RunConfig,
                                         smoke_train: data.Split) -> None:
    """With ``create_graph`` the sIoU/L_ac gradients include the gradient weights' own
    dependence on the parameters, so the same batch gives a different update."""
    batch = _batch(smoke_train, 16)
    grads = []
    for cg in (False, True):
        model = train.build_method("discattn-ch", smoke_cfg, smoke_train, create_graph=cg)
        model.train()
        loss, _ = model.objective(batch["image"], batch["label"])
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    assert grads[0].shape == grads[1].shape and not torch.allclose(grads[0], grads[1])


def test_no_hooks_or_graph_side_effects_after_an_exception_in_the_loss(
        smoke_cfg: config.RunConfig, smoke_train: data.Split,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = train.build_method("discattn-px", smoke_cfg, smoke_train).train()
    hooks0 = all_hooks(model)
    req0 = [p.requires_grad for p in model.parameters()]
    batch = _batch(smoke_train, 4)
    opts = model.configure_optimizers(smoke_cfg.train)

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("loss failed")

    monkeypatch.setattr(discattn, "attention_consistency", broken)
    with pytest.raises(RuntimeError, match="loss failed"):
        model.training_step(batch, opts)
    assert all_hooks(model) == hooks0
    assert [p.requires_grad for p in model.parameters()] == req0
    assert all(p.grad is None for p in model.parameters())
    assert not batch["image"].requires_grad
    monkeypatch.setattr(discattn, "class_attention", broken)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="loss failed"):
            model.explain(batch["image"], batch["label"])
        assert not torch.is_grad_enabled()  # explain's enable_grad was undone
    assert all_hooks(model) == hooks0 and all(p.grad is None for p in model.parameters())
    monkeypatch.undo()
    logs = model.training_step(batch, opts)  # the model still trains afterwards
    assert np.isfinite(logs["loss"]) and all_hooks(model) == hooks0


@pytest.mark.parametrize("name", KINDS)
def test_explain_is_the_upsampled_last_layer_map(name: str, smoke_cfg: config.RunConfig,
                                                 smoke_train: data.Split) -> None:
    model = _trained_a_little(name, smoke_cfg, smoke_train).eval()
    batch = _batch(smoke_train)
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        sal = model.explain(x, y)
        maps = model.class_maps(x, torch.stack([y, (y + 1) % 10], 1))
    assert maps.shape[:2] == (len(y), 2) and (maps >= 0).all()
    assert torch.allclose(sal, upsample(maps[:, :1], tuple(x.shape[-2:])), atol=1e-6)
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # class-specific


def test_last_stage_maps_of_a_gap_linear_head_are_clipped_cam(
        smoke_cfg: config.RunConfig, smoke_train: data.Split) -> None:
    """dY^c/dF^k_ij = w_ck / hw for global average pooling + linear, so at the last stage
    A_px = ReLU(CAM) / (K hw), Grad-CAM = ReLU(CAM) / hw and A_ch keeps the channels of
    positive weight: ReLU(sum_k ReLU(w_ck) F^k) / hw."""
    cam = train.build_method("cam", smoke_cfg, smoke_train).eval()
    x = _batch(smoke_train)["image"]
    classes = torch.tensor([[0, 3], [1, 4], [2, 5], [3, 6], [4, 7], [5, 8]])
    with torch.no_grad():
        raw = cam.class_maps(x, classes)
        fmap = cam.backbone.last_stage(cam.backbone.features(x))
    k, hw = fmap.shape[1], fmap.shape[2] * fmap.shape[3]
    w_pos = cam.backbone.fc.weight.clamp_min(0)[classes]
    want = {"discattn-px": raw.clamp_min(0) / (k * hw),
            "discattn-gradcam": raw.clamp_min(0) / hw,
            "discattn-ch": torch.einsum("bck,bkhw->bchw", w_pos, fmap).clamp_min(0) / hw}
    for name, ref in want.items():
        model = train.build_method(name, smoke_cfg, smoke_train).eval()
        model.load_state_dict(cam.state_dict())
        with torch.no_grad():
            got = model.class_maps(x, classes)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-7), name

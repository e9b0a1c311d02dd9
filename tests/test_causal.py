"""Insertion/deletion against a per-image, per-step NumPy reference (RISE's algorithm)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from metrics import causal


def np_blur(img: np.ndarray) -> np.ndarray:
    """RISE substrate: 11x11 kernel from gaussian_filter of an impulse (sigma 5), applied
    per channel as a zero-padded correlation, written as explicit loops."""
    k = np.zeros((11, 11))
    k[5, 5] = 1
    k = gaussian_filter(k, 5)
    c, h, w = img.shape
    pad = np.zeros((c, h + 10, w + 10))
    pad[:, 5:-5, 5:-5] = img
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = (pad[:, i : i + 11, j : j + 11] * k).sum((1, 2))
    return out


def np_curve(model: nn.Module, img: np.ndarray, sal: np.ndarray, cls: int, mode: str,
             step: int, substrate: str) -> np.ndarray:
    """Per-step loop: rank by a stable descending sort, change ``step`` positions per step."""
    c, h, w = img.shape
    hw = h * w
    order = sorted(range(hw), key=lambda p: (-sal.reshape(-1)[p], p))
    if substrate == "blur":
        base = np_blur(img)
    elif substrate == "zero":
        base = np.zeros_like(img)
    else:
        base = np.broadcast_to(img.mean((1, 2), keepdims=True), img.shape).copy()
    cur = (img if mode == "deletion" else base).reshape(c, hw).copy()
    fin = (base if mode == "deletion" else img).reshape(c, hw)
    n = math.ceil(hw / step)
    scores = []
    for i in range(n + 1):
        with torch.no_grad():
            logits = model(torch.from_numpy(cur.reshape(1, c, h, w)).float())
        scores.append(torch.softmax(logits, 1)[0, cls].item())
        idx = order[i * step : (i + 1) * step]
        cur[:, idx] = fin[:, idx]
    return np.array(scores)


def small_model(h: int = 6, w: int = 5, k: int = 4) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * h * w, k)).eval()


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
@pytest.mark.parametrize("substrate", ["blur", "zero", "mean"])
@pytest.mark.parametrize("step", [1, 5, 7])
def test_curves_match_numpy_reference(mode: str, substrate: str, step: int) -> None:
    model = small_model()
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    sal = rng.random((3, 6, 5)).astype(np.float32)
    sal[1, 0, :3] = sal[1, 2, 1]  # ties: raster order must win
    classes = np.array([0, 2, 3])
    ours = causal.causal_curves(model, torch.from_numpy(imgs), torch.from_numpy(sal),
                                torch.from_numpy(classes), mode=mode, step=step,
                                substrate=substrate, batch_size=7)
    assert ours.shape == (3, math.ceil(30 / step) + 1)
    for b in range(3):
        ref = np_curve(model, imgs[b], sal[b], int(classes[b]), mode, step, substrate)
        np.testing.assert_allclose(ours[b].numpy(), ref, atol=2e-5)
        ref_auc = np.trapezoid(ref, dx=1.0 / (len(ref) - 1))
        assert causal.auc(ours[b : b + 1]).item() == pytest.approx(ref_auc, abs=2e-5)


def test_batch_at_once_equals_one_at_a_time() -> None:
    model = small_model()
    imgs, sal = torch.randn(5, 3, 6, 5), torch.rand(5, 1, 6, 5)
    cls = torch.tensor([0, 1, 2, 3, 0])
    kw = {"mode": "insertion", "step": 5, "substrate": "blur"}
    whole = causal.causal_curves(model, imgs, sal, cls, batch_size=1000, **kw)
    single = torch.cat([causal.causal_curves(model, imgs[i : i + 1], sal[i : i + 1],
                                             cls[i : i + 1], batch_size=3, **kw)
                        for i in range(5)])
    assert torch.allclose(whole, single, atol=1e-6)


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_known_unperturbed_point_is_not_computed_again(mode: str) -> None:
    """Given the images' own probabilities, deletion's first and insertion's last
    points are those values and the model sees one image fewer per curve; the other
    points are unchanged."""
    model = small_model()
    imgs, sal = torch.randn(4, 3, 6, 5), torch.rand(4, 6, 5)
    cls = torch.tensor([0, 1, 2, 3])
    seen = {"n": 0}

    def counted(x: torch.Tensor) -> torch.Tensor:
        seen["n"] += len(x)
        return model(x)

    kw = {"mode": mode, "step": 5, "substrate": "blur", "batch_size": 3}
    full = causal.causal_curves(counted, imgs, sal, cls, **kw)
    n_full, seen["n"] = seen["n"], 0
    with torch.no_grad():
        own = torch.softmax(model(imgs), 1).gather(1, cls.view(-1, 1)).squeeze(1)
    fake = own + 0.5  # the given values are used as they are
    short = causal.causal_curves(counted, imgs, sal, cls, unperturbed=fake, **kw)
    assert n_full == 4 * 7 and seen["n"] == 4 * 6
    col = 0 if mode == "deletion" else -1
    torch.testing.assert_close(full[:, col], own, rtol=0, atol=1e-6)
    assert torch.equal(short[:, col], fake)
    keep = [k for k in range(7) if k != (col % 7)]
    torch.testing.assert_close(short[:, keep], full[:, keep], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unperturbed"):
        causal.causal_curves(model, imgs, sal, cls, unperturbed=own[:2], **kw)


def test_channels_last_images_give_the_same_curves() -> None:
    model = small_model()
    imgs, sal = torch.randn(3, 3, 6, 5), torch.rand(3, 6, 5)
    cls = torch.tensor([0, 1, 2])
    kw = {"mode": "insertion", "step": 1, "substrate": "blur", "batch_size": 8}
    a = causal.causal_curves(model, imgs, sal, cls, **kw)
    b = causal.causal_curves(model, imgs.contiguous(memory_format=torch.channels_last),
                             sal, cls, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_blur_kernel_is_the_rise_kernel() -> None:
    k = causal.blur_kernel()
    imp = np.zeros((11, 11))
    imp[5, 5] = 1
    assert np.array_equal(k.numpy(), gaussian_filter(imp, 5))
    img = torch.randn(2, 3, 9, 8)
    ours = causal.make_substrate(img, "blur")
    for b in range(2):
        np.testing.assert_allclose(ours[b].numpy(), np_blur(img[b].double().numpy()), atol=1e-5)


def test_known_answers() -> None:
    # A model whose probability of class 0 is the fraction of non-zero pixels:
    # deletion with zero substrate falls linearly 1 -> 0, AUC = 1/2 exactly.
    class Frac(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = (x != 0).float().mean((1, 2, 3))
            return torch.log(torch.stack([p, 1 - p], 1).clamp_min(1e-30))

    img = torch.ones(1, 3, 4, 4)
    curve = causal.causal_curves(Frac(), img, torch.rand(1, 4, 4), torch.tensor([0]),
                                 mode="deletion", step=4, substrate="zero")
    assert torch.allclose(curve, torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]]))
    assert causal.auc(curve).item() == pytest.approx(0.5)
    assert causal.auc(torch.full((2, 9), 0.3)).tolist() == pytest.approx([0.3, 0.3])


def test_ranking_is_stable_descending() -> None:
    sal = torch.tensor([[[0.5, 1.0, 0.5], [1.0, 0.0, 0.5]]])
    rank = causal.rank_positions(sal)
    # order: pos1 (1.0), pos3 (1.0), pos0, pos2, pos5 (0.5 ties, raster), pos4
    assert rank.tolist() == [[2, 0, 3, 1, 5, 4]]


def test_bad_inputs_raise() -> None:
    model = small_model()
    with pytest.raises(ValueError, match="mode"):
        causal.causal_curves(model, torch.zeros(1, 3, 6, 5), torch.zeros(1, 6, 5),
                             torch.tensor([0]), mode="insert", step=1, substrate="zero")
    with pytest.raises(ValueError, match="saliency shape"):
        causal.causal_curves(model, torch.zeros(1, 3, 6, 5), torch.zeros(1, 3, 3),
                             torch.tensor([0]), mode="deletion", step=1, substrate="zero")
    with pytest.raises(ValueError, match="substrate"):
        causal.make_substrate(torch.zeros(1, 3, 2, 2), "noise")


def test_scores_depend_on_the_forward_batch_by_rounding_only() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5)).eval()
    x, sal = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    cls = torch.tensor([0, 2, 4])
    curves = [causal.causal_curves(net, x, sal, cls, mode="deletion", step=8,
                                   substrate="zero", batch_size=bs) for bs in (1, 7, 64, 0)]
    for c in curves[1:]:  # the same up to float rounding (kernels differ by batch size)
        torch.testing.assert_close(c, curves[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("streams", [2, 3])
@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_streams_give_the_reference_curves(streams: int, mode: str) -> None:
    """Passes run at once (each pass's images as with one stream) give the reference
    curves, with and without the known unperturbed point; a short last pass too."""
    model = small_model()
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(4, 3, 6, 5)).astype(np.float32)
    sal = rng.random((4, 6, 5)).astype(np.float32)
    classes = np.array([1, 0, 3, 2])
    x, s, c = torch.from_numpy(imgs), torch.from_numpy(sal), torch.from_numpy(classes)
    kw = {"mode": mode, "step": 4, "substrate": "blur", "batch_size": 5}
    one = causal.causal_curves(model, x, s, c, **kw)
    many = causal.causal_curves(model, x, s, c, streams=streams, **kw)
    with torch.no_grad():
        own = torch.softmax(model(x), 1).gather(1, c.view(-1, 1).long()).squeeze(1)
    known = causal.causal_curves(model, x, s, c, streams=streams, unperturbed=own, **kw)
    torch.testing.assert_close(many, one, rtol=0, atol=1e-6)
    torch.testing.assert_close(known, one, rtol=0, atol=1e-6)
    for b in range(4):
        ref = np_curve(model, imgs[b], sal[b], int(classes[b]), mode, 4, "blur")
        np.testing.assert_allclose(many[b].numpy(), ref, atol=2e-5)


def test_streams_share_the_threads_and_give_them_back() -> None:
    """Each stream runs in its own thread with its share of the intra-op threads and
    under inference mode; the process's thread count is restored afterwards."""
    import threading
    import time

    model = small_model()
    seen: list[tuple[int, int, bool]] = []
    lock = threading.Lock()

    def recorded(z: torch.Tensor) -> torch.Tensor:
        with lock:
            seen.append((threading.get_ident(), torch.get_num_threads(),
                         torch.is_inference_mode_enabled()))
        time.sleep(0.02)  # the passes take turns from a shared queue: both streams get some
        return model(z)

    imgs, sal = torch.randn(3, 3, 6, 5), torch.rand(3, 6, 5)
    cls = torch.tensor([0, 1, 2])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        causal.causal_curves(recorded, imgs, sal, cls, mode="deletion", step=5,
                             substrate="zero", batch_size=4, streams=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(seen) == -(-3 * 7 // 4)  # one call a pass
    assert len({t for t, _, _ in seen}) == 2 and threading.get_ident() not in {
        t for t, _, _ in seen}
    assert {n for _, n, _ in seen} == {1} and all(inf for _, _, inf in seen)


def test_a_failing_stream_stops_the_others_and_raises() -> None:
    model = small_model()
    calls = {"n": 0}

    def failing(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return model(z)

    imgs, sal = torch.randn(4, 3, 6, 5), torch.rand(4, 6, 5)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        causal.causal_curves(failing, imgs, sal, torch.tensor([0, 1, 2, 3]),
                             mode="insertion", step=1, substrate="zero", batch_size=2,
                             streams=2)
    assert torch.get_num_threads() == before
    assert calls["n"] < 4 * 31 // 2  # the other stream did not run to the end
    # a class outside the model's output is caught in a stream, as with one
    with pytest.raises(ValueError, match="classes"):
        causal.causal_curves(model, imgs, sal, torch.tensor([0, 1, 2, 9]),
                             mode="insertion", step=5, substrate="zero", batch_size=2,
                             streams=2)
    assert torch.get_num_threads() == before

"""The trust lenses of :mod:`metrics.lenses`: known answers on hand-made maps, parity with
scikit-image, SciPy, Quantus and pytorch-grad-cam where they are right, and the
differences pinned where they are not."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity

from harness.geometry import normalize
from metrics import EvalBatch, lenses
from metrics.standard import AvgDrop, ClassSensitivity, Complexity, IncreaseConf, Sparseness


def _pair_range(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(a.max(), b.max()) - min(a.min(), b.min()))


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(7, 7), (16, 16), (9, 23), (64, 64)])
def test_ssim_matches_scikit_image(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    a = rng.random((5, *shape))
    b = np.abs(a + rng.normal(scale=0.3, size=a.shape))
    b[0] = a[0] * 3 + 1  # a scaled copy: structure kept, luminance and contrast not
    ours = lenses.ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [structural_similarity(a[i], b[i], data_range=_pair_range(a[i], b[i]))
           for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_ssim_known_answers() -> None:
    x = torch.rand(3, 1, 10, 12, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(lenses.ssim(x, x).numpy(), 1.0, atol=1e-12)
    # one and the same constant: R = 0, where scikit-image says NaN
    c = torch.full((2, 8, 8), 0.3)
    assert lenses.ssim(c, c).tolist() == [1.0, 1.0]
    # two constants 0 and 1: R = 1, no variance: (2*0*1 + C1) / (0 + 1 + C1), C1 = 1e-4
    zero, one = torch.zeros(1, 8, 8), torch.ones(1, 8, 8)
    assert lenses.ssim(zero, one).item() == pytest.approx(1e-4 / (1 + 1e-4), rel=1e-12)
    # symmetric, and blind to the [B,1,H,W] / [B,H,W] layout
    y = torch.rand(3, 1, 10, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(lenses.ssim(x, y), lenses.ssim(y, x))
    assert torch.equal(lenses.ssim(x, y), lenses.ssim(x[:, 0], y[:, 0]))


def test_by_max_scales_each_map_to_a_peak_of_one() -> None:
    m = torch.tensor([[[0.0, 2.0], [-4.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]).unsqueeze(1)
    out = lenses.by_max(m)
    assert out[0, 0].tolist() == [[0.0, 0.5], [-1.0, 0.25]]
    assert out[1].abs().sum() == 0  # no mass: stays 0


def test_ssim_refuses_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="smaller than the 7 x 7"):
        lenses.ssim(torch.rand(1, 6, 9), torch.rand(1, 6, 9))
    with pytest.raises(ValueError, match="different shapes"):
        lenses.ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 9))
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):  # several channels: not a map
        lenses.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(lenses.ssim(x, x[:, 0]), lenses.ssim(x, x))  # layouts mix


# ---------------------------------------------------------------- complexity


def test_sparseness_known_answers() -> None:
    n = 16
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 2, 1] = 5.0
    assert lenses.sparseness(one_hot).item() == pytest.approx((n - 1) / n, abs=1e-15)
    assert lenses.sparseness(torch.full((1, 4, 4), 2.0)).item() == pytest.approx(0, abs=1e-15)
    assert lenses.sparseness(torch.zeros(2, 1, 4, 4)).tolist() == [0.0, 0.0]  # no mass
    # [0, 0, 1, 1]: (2*3 - 5) * 1 + (2*4 - 5) * 1 = 4, over n * sum = 4 * 2
    assert lenses.sparseness(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])).item() == 0.5
    # the magnitude counts, not the sign; the scale does not
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lenses.sparseness(-x), lenses.sparseness(x.abs() * 7))


def test_sparseness_matches_the_gini_mean_difference() -> None:
    # an independent form: G = sum_ij |a_i - a_j| / (2 n^2 mean(a))
    a = np.abs(np.random.default_rng(2).normal(size=(4, 50)))
    ref = np.abs(a[:, :, None] - a[:, None, :]).sum((1, 2)) / (2 * 50**2 * a.mean(1))
    ours = lenses.sparseness(torch.from_numpy(a).view(4, 5, 10)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_complexity_known_answers_and_scipy() -> None:
    one_hot = torch.zeros(1, 1, 4, 4)
    one_hot[0, 0, 0, 3] = 1.0
    assert lenses.complexity(one_hot).item() == 0.0
    assert lenses.complexity(torch.ones(1, 4, 4)).item() == pytest.approx(math.log(16))
    assert lenses.complexity(torch.zeros(1, 4, 4)).item() == pytest.approx(math.log(16))
    two = torch.zeros(1, 4, 4)
    two[0, 0, :2] = -3.0
    assert lenses.complexity(two).item() == pytest.approx(math.log(2))
    a = np.abs(np.random.default_rng(3).normal(size=(3, 9, 11)))
    ref = [scipy.stats.entropy(m.ravel()) for m in a]
    np.testing.assert_allclose(lenses.complexity(torch.from_numpy(a)).numpy(), ref,
                               rtol=1e-12)


def test_sparseness_and_complexity_agree_with_quantus() -> None:
    import quantus
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3, 16, 16)).astype(np.float32)  # an RGB image, a gray map
    a = np.abs(rng.normal(size=(6, 1, 16, 16))).astype(np.float32)
    y = np.arange(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_sparse = quantus.Sparseness(disable_warnings=True)(
            model=None, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu")
        q_complex = quantus.Complexity(disable_warnings=True)(
            model=None, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu")
    maps = torch.from_numpy(a)
    # Quantus adds 1e-7 to every value (after scaling the map to a maximum of 1)
    np.testing.assert_allclose(lenses.sparseness(maps).numpy(), q_sparse, atol=1e-5)
    np.testing.assert_allclose(lenses.complexity(maps).numpy(), q_complex, atol=1e-5)


# ---------------------------------------------------------------- class sensitivity


def test_other_classes_are_uniform_never_the_label_and_fixed_per_image() -> None:
    k, n = 5, 20000
    labels = torch.arange(n) % k
    ids = torch.arange(n)
    other = lenses.other_classes(labels, k, ids, seed=7)
    assert not bool((other == labels).any())
    assert int(other.min()) >= 0 and int(other.max()) < k
    for c in range(k):  # each of the 4 others about a quarter of the time
        share = torch.bincount(other[labels == c], minlength=k).float() / (n / k)
        assert share[c] == 0
        assert torch.all((share[torch.arange(k) != c] - 0.25).abs() < 0.03)
    # an image's draw does not depend on which other images were asked for, or in
    # which order: batches, ranks and split lengths agree
    some = torch.tensor([250, 3, 17, 4])  # a stream of 251 words, not 20000
    assert torch.equal(lenses.other_classes(labels[some], k, some, seed=7), other[some])
    assert torch.equal(lenses.other_classes(labels[:10], k, ids[:10], seed=7), other[:10])
    assert not torch.equal(lenses.other_classes(labels, k, ids, seed=8), other)
    with pytest.raises(ValueError, match="two classes"):
        lenses.other_classes(labels[:3] * 0, 1, ids[:3], seed=0)


def _class_maps(k: int = 4, size: int = 12):
    """A toy explainer: the map of class c is |x * W_c + W_c|, a different pattern each."""
    w = torch.rand(k, size, size, generator=torch.Generator().manual_seed(5))

    def explain(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] * w[classes].unsqueeze(1) + w[classes].unsqueeze(1)).abs()

    return explain


def _sens_batch(explain, n: int = 6, k: int = 4, size: int = 12, lo: int = 0) -> EvalBatch:
    g = torch.Generator().manual_seed(9)
    x = torch.rand(20, 3, size, size, generator=g)[lo:lo + n]
    labels = (torch.arange(20) % k)[lo:lo + n]
    return EvalBatch(images=x, labels=labels, logits=torch.zeros(n, k),
                     saliency=explain(x, labels), explain=explain,
                     indices=torch.arange(lo, lo + n))


def test_class_sensitivity_is_ssim_to_one_other_class() -> None:
    explain = _class_maps()
    b = _sens_batch(explain)
    m = ClassSensitivity(seed=3)
    m.update(b)
    other = lenses.other_classes(b.labels, 4, b.indices, seed=3)
    mine = b.saliency[:, 0].double().numpy()
    theirs = explain(b.images, other)[:, 0].double().numpy()
    mine = mine / mine.max((1, 2), keepdims=True)  # each map divided by its maximum
    theirs = theirs / theirs.max((1, 2), keepdims=True)
    ref = [structural_similarity(mine[i], theirs[i], data_range=_pair_range(mine[i], theirs[i]))
           for i in range(6)]
    np.testing.assert_allclose(m.per_image()[0], ref, atol=1e-6)
    assert float(m.compute()) < 0.9

    # a map that ignores the class scores 1 exactly (ABN's attention map)
    def agnostic(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return explain(x, torch.zeros_like(classes))

    flat = ClassSensitivity(seed=3)
    flat.update(_sens_batch(agnostic))
    assert flat.per_image()[0].tolist() == [1.0] * 6

    # a weaker map of the same shape is the same explanation: the maps are compared
    # after dividing each by its maximum
    def weaker(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return agnostic(x, classes) * torch.where(classes == 0, 1.0, 0.2).view(-1, 1, 1, 1)

    scaled = ClassSensitivity(seed=3)
    scaled.update(_sens_batch(weaker))
    np.testing.assert_allclose(scaled.per_image()[0], 1.0, atol=1e-6)
    assert float(lenses.ssim(explain(b.images, b.labels),
                             0.2 * explain(b.images, b.labels)).max()) < 0.9  # raw SSIM


def test_class_sensitivity_pairs_images_whatever_the_batching() -> None:
    explain = _class_maps()
    whole, parts = ClassSensitivity(seed=1), ClassSensitivity(seed=1)
    whole.update(_sens_batch(explain, n=12))
    for lo in (0, 5, 9):
        parts.update(_sens_batch(explain, n={0: 5, 5: 4, 9: 3}[lo], lo=lo))
    np.testing.assert_array_equal(whole.per_image()[0], parts.per_image()[0])
    np.testing.assert_array_equal(whole.image_ids(), parts.image_ids())


def test_class_sensitivity_is_na_without_what_it_needs() -> None:
    m = ClassSensitivity()
    b = _sens_batch(_class_maps())
    m.update(EvalBatch(images=b.images, labels=b.labels, logits=b.logits,
                       saliency=b.saliency))  # no explainer to ask
    tiny = _class_maps(size=6)
    m.update(_sens_batch(tiny, size=6))  # smaller than the SSIM window
    assert m.per_image()[0].size == 0


def test_quantus_random_logit_scores_the_flattened_map() -> None:
    """Pinned difference: Quantus 0.6's RandomLogit reshapes both maps to ``[B, H*W]``
    before its SSIM, so the 7-pixel windows run along the flattened rows (a 1-D SSIM
    that wraps from one row to the next), not over 7 x 7 patches."""
    import quantus
    k, size = 5, 16
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, size, size)).astype(np.float32)
    w = rng.normal(size=(k, size, size)).astype(np.float32)
    asked: list[np.ndarray] = []

    def explain(model: object, inputs: np.ndarray, targets: np.ndarray,
                **kwargs: object) -> np.ndarray:
        t = np.asarray(targets)
        asked.append(t)
        return np.abs(inputs[:, 0] * w[t] + w[t])[:, None].astype(np.float32)

    labels = np.arange(4)
    a = explain(None, x, labels)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size * size, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = np.array(quantus.RandomLogit(num_classes=k, disable_warnings=True,
                                         similarity_func=quantus.similarity_func.ssim,
                                         normalise=False, abs=False)(
            model=model, x_batch=x, y_batch=labels, a_batch=a.copy(), explain_func=explain,
            device="cpu"))
    other = asked[-1]
    assert not np.any(other == labels)
    b = explain(None, x, other)
    flat = [structural_similarity(a[i].ravel(), b[i].ravel(), data_range=_pair_range(a[i], b[i]))
            for i in range(4)]
    np.testing.assert_allclose(q, flat, atol=1e-6)
    ours = lenses.ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.abs(ours - q).max() > 0.02  # the 2-D SSIM is another number


# ---------------------------------------------------------------- confidence change


class _MeanModel(torch.nn.Module):
    """logits = [s * mean(x), 0]: hand-checkable probabilities."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([self.s * m, torch.zeros_like(m)], 1)


def _conf_batch(model, x: torch.Tensor, maps: torch.Tensor) -> EvalBatch:
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    return EvalBatch(images=x, labels=pred, logits=logits, saliency=maps, model=model,
                     causal_images=x, causal_saliency=maps, causal_classes=pred)


def test_confidence_change_known_answers() -> None:
    model = _MeanModel(2.0)
    x = torch.ones(3, 3, 8, 8)
    maps = torch.zeros(3, 1, 8, 8)
    maps[0] = 1.0  # constant: min-max gives 0, the image becomes 0, O = 1/2
    maps[1, :, :, :4] = 1.0  # half the image kept: mean 1/2, O = sigmoid(1)
    maps[2, :, :, :] = torch.linspace(0, 1, 8)  # mean 1/2 again
    drop, inc = AvgDrop(), IncreaseConf()
    for m in (drop, inc):
        m.update(_conf_batch(model, x, maps))
    y = torch.sigmoid(torch.tensor(2.0)).item()
    o = [0.5, torch.sigmoid(torch.tensor(1.0)).item(), torch.sigmoid(torch.tensor(1.0)).item()]
    np.testing.assert_allclose(drop.per_image()[0], [(y - v) / y for v in o], rtol=1e-6)
    assert inc.per_image()[0].tolist() == [0.0, 0.0, 0.0]
    # a map that hides the counter-evidence raises the confidence: left half +1, right
    # half -1, mean 0 (Y = 1/2, class 0 by argmax); keeping the left half: O = sigmoid(1)
    x2 = torch.ones(3, 3, 8, 8)
    x2[..., 4:] = -1.0
    keep_left = torch.zeros(3, 1, 8, 8)
    keep_left[..., :4] = 1.0
    drop2, inc2 = AvgDrop(), IncreaseConf()
    for m in (drop2, inc2):
        m.update(_conf_batch(model, x2, keep_left))
    assert drop2.per_image()[0].tolist() == [0.0, 0.0, 0.0]
    assert inc2.per_image()[0].tolist() == [1.0, 1.0, 1.0]
    assert drop.higher_is_better is False and inc.higher_is_better is True


def test_confidence_change_against_pytorch_grad_cam() -> None:
    """pytorch-grad-cam multiplies the (normalised) input by the map as we do, and its
    IncreaseInConfidence is ours; its DropInConfidence is the absolute drop max(0, Y - O),
    not Grad-CAM++'s relative max(0, Y - O) / Y (pinned)."""
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 5)).eval()
    x = torch.randn(16, 3, 12, 12)
    maps = torch.rand(16, 1, 12, 12)
    b = _conf_batch(model, x, maps)
    drop, inc = AvgDrop(), IncreaseConf()
    for m in (drop, inc):
        m.update(b)
    cams = normalize(maps).numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in b.causal_classes]
    their_drop = DropInConfidence()(x, cams, targets, model)
    their_inc = IncreaseInConfidence()(x, cams, targets, model)
    y = torch.softmax(b.logits, 1).gather(1, b.causal_classes.view(-1, 1))[:, 0].numpy()
    np.testing.assert_allclose(drop.per_image()[0] * y, np.ravel(their_drop), atol=1e-6)
    np.testing.assert_array_equal(inc.per_image()[0], np.ravel(their_inc))
    assert np.ravel(their_drop).max() > 0  # the comparison has drops to compare


def test_map_lenses_score_the_ground_truth_map_of_every_image() -> None:
    maps = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    b = EvalBatch(images=torch.zeros(5, 3, 8, 8), labels=torch.zeros(5, dtype=torch.long),
                  logits=torch.zeros(5, 2), saliency=maps)
    s, c = Sparseness(), Complexity()
    s.update(b)
    c.update(b)
    np.testing.assert_allclose(s.per_image()[0], lenses.sparseness(maps).float().numpy())
    np.testing.assert_allclose(c.per_image()[0], lenses.complexity(maps).float().numpy())
    assert c.higher_is_better is False and s.higher_is_better is True


def test_avg_drop_and_increase_conf_share_one_call_per_batch() -> None:
    calls: list[int] = []
    model = _MeanModel(2.0)

    def counted(z: torch.Tensor) -> torch.Tensor:
        calls.append(len(z))
        return model(z)

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    b = _conf_batch(model, x, torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)))
    b.model = counted
    drop, inc = AvgDrop(), IncreaseConf()
    drop.update(b)
    inc.update(b)
    assert calls == [8]  # Y and O of the 4 images, once for both columns
    alone = AvgDrop()
    alone.update(_conf_batch(model, x, b.causal_saliency))
    np.testing.assert_array_equal(drop.per_image()[0], alone.per_image()[0])

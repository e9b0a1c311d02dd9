"""The robustness lenses of :mod:`metrics.robustness`: the perturbations (uniform in the
ball, fixed per image), known answers on hand-made explainers, parity with captum's
``sensitivity_max`` and Quantus' ``MaxSensitivity``, ``AvgSensitivity`` and
``LocalLipschitzEstimate`` given the same perturbations, and the peers' behaviours that
differ pinned (global random draws, the zero-norm map, channel values as features)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch

from metrics import robustness
from metrics.robustness import perturbations, sensitivity

SEED, R, N = 7, 0.1, 5
IDS = torch.tensor([3, 17, 0, 42])


def _images(b: int = 4, c: int = 3, size: int = 8, dtype: torch.dtype = torch.float64,
            seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


class _Toy(torch.nn.Module):
    """conv 3 -> 4, ReLU, global average pool, linear 4 -> 5: a CAM-able classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)
        g = torch.Generator().manual_seed(0)  # the same weights, the global seed untouched
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _np_state() -> np.ndarray:
    """NumPy's global generator's state: its key and position."""
    state = np.random.get_state(legacy=False)["state"]
    return np.append(state["key"], state["pos"])


def _toy(dtype: torch.dtype = torch.float64) -> _Toy:
    return _Toy().to(dtype).eval()


def _cam(model: _Toy) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """CAM (Zhou et al. 2016): the class's weights over the last feature maps."""
    def explain(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = torch.relu(model.conv(x))
            return torch.einsum("bk,bkhw->bhw", model.fc.weight[cls], feats).unsqueeze(1)
    return explain


def _grad_x_input(model: _Toy) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Gradient x input summed over the channels."""
    def explain(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score = model(x).gather(1, cls.view(-1, 1)).sum()
            (g,) = torch.autograd.grad(score, x)
        return (g * x).sum(1, keepdim=True).detach()
    return explain


# ---------------------------------------------------------------- perturbations


def test_perturbations_are_uniform_in_the_ball() -> None:
    x = _images()
    d = perturbations(x, IDS, R, 50, SEED)
    assert d.shape == (4, 50, 3, 8, 8) and d.dtype == torch.float32
    r32 = float(np.float32(R))
    assert d.abs().max().item() <= r32
    assert d.max().item() > 0.999 * R and d.min().item() < -0.999 * R  # both ends reached
    v = d.double().flatten().numpy()  # 38,400 values
    # mean 0 (sd of the mean r / sqrt(3 * 38400) ~ 0.003 r), variance r^2 / 3
    assert abs(v.mean()) < 0.02 * R
    assert v.var() == pytest.approx(R * R / 3, rel=0.03)
    assert scipy.stats.kstest(v, scipy.stats.uniform(loc=-R, scale=2 * R).cdf).pvalue > 1e-3
    # independent coordinates: no correlation between neighbours or between draws
    assert abs(np.corrcoef(v[:-1], v[1:])[0, 1]) < 0.03
    flat = d.flatten(2)
    assert abs(np.corrcoef(flat[:, 0].flatten(), flat[:, 1].flatten())[0, 1]) < 0.05
    # the recipe documented: PCG64 of SeedSequence([seed, id]), float32 u, (2u - 1) r
    u = np.random.Generator(np.random.PCG64(np.random.SeedSequence([SEED, 17])))
    ref = (u.random((50, 3, 8, 8), dtype=np.float32) * 2 - 1) * np.float32(R)
    assert np.array_equal(d[1].numpy(), ref)


def test_perturbations_are_fixed_by_seed_and_id_alone() -> None:
    x = _images()
    np_state, torch_state = _np_state(), torch.get_rng_state().clone()
    d = perturbations(x, IDS, R, N, SEED)
    # the global generators are neither read nor advanced
    assert np.array_equal(_np_state(), np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    # an image alone, in another order, among other images, of another dtype: same δ
    assert torch.equal(perturbations(x[2:3], IDS[2:3], R, N, SEED)[0], d[2])
    order = torch.tensor([3, 1, 0, 2])
    assert torch.equal(perturbations(x[order], IDS[order], R, N, SEED), d[order])
    other = torch.cat([_images(3, seed=5), x[1:2]])
    assert torch.equal(perturbations(other, torch.tensor([8, 9, 10, 17]), R, N, SEED)[3],
                       d[1])
    assert torch.equal(perturbations(x.float(), IDS, R, N, SEED), d)
    # more perturbations extend fewer; another seed or id draws another δ
    assert torch.equal(perturbations(x, IDS, R, N + 3, SEED)[:, :N], d)
    assert not torch.equal(perturbations(x, IDS, R, N, SEED + 1), d)
    assert not torch.equal(perturbations(x, IDS + 1, R, N, SEED), d)
    # the radius only scales the draw
    torch.testing.assert_close(perturbations(x, IDS, 2 * R, N, SEED), 2 * d, rtol=1e-6,
                               atol=0)


def test_perturbations_refuse_what_they_cannot_draw() -> None:
    x = _images()
    for bad in (0.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="radius"):
            perturbations(x, IDS, bad, N, SEED)
    with pytest.raises(ValueError, match="at least one"):
        perturbations(x, IDS, R, 0, SEED)
    with pytest.raises(ValueError, match="3 ids for 4 images"):
        perturbations(x, IDS[:3], R, N, SEED)
    with pytest.raises(ValueError, match="non-negative"):
        perturbations(x, IDS - 1, R, N, SEED)
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        perturbations(x[0], IDS[:1], R, N, SEED)
    assert perturbations(x[:0], IDS[:0], R, N, SEED).shape == (0, N, 3, 8, 8)


# ---------------------------------------------------------------- known answers


def test_an_input_independent_map_scores_zero() -> None:
    x = _images()
    fixed = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    calls: list[int] = []

    def constant(images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return fixed[cls]  # the class picks the map; the image does not matter

    s = sensitivity(constant, x, torch.arange(4), IDS, R, N, SEED)
    assert set(s) == set(robustness.SCORES)
    for k in robustness.SCORES:
        assert s[k].dtype == torch.float64 and s[k].tolist() == [0.0] * 4
    assert calls == [4, 4 * N]  # Φ(x), then all the perturbed images in one call
    # a map without mass that stays without mass: 0 / 0 counts as no change
    zero = sensitivity(lambda im, c: torch.zeros(len(im), 1, 8, 8), x, torch.arange(4),
                       IDS, R, N, SEED)
    assert all(zero[k].tolist() == [0.0] * 4 for k in robustness.SCORES)


def test_a_channel_of_the_image_as_map_gives_the_hand_computed_scores() -> None:
    """Φ(x) = x[:, 0] moves by δ[:, 0]: the Lipschitz ratio is ||δ_0|| / ||δ||, the
    sensitivity ||δ_0|| / ||x_0||."""
    x = _images()
    s = sensitivity(lambda im, c: im[:, :1], x, torch.zeros(4, dtype=torch.long), IDS, R, N,
                    SEED)
    d = perturbations(x, IDS, R, N, SEED).double()
    d0 = d[:, :, 0].flatten(2).norm(dim=2)  # [B,n]
    rel = d0 / x[:, 0].flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(s["local_lipschitz"], (d0 / d.flatten(2).norm(dim=2)).amax(1),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(s["max_sensitivity"], rel.amax(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(s["avg_sensitivity"], rel.mean(1), rtol=1e-12, atol=0)
    # a uniform δ over 3 channels: ||δ_0|| / ||δ|| is near 1 / sqrt(3)
    assert ((s["local_lipschitz"] - 3 ** -0.5).abs() < 0.15).all()


def test_a_linear_map_gives_the_hand_computed_scores() -> None:
    """Φ(x) = sum_c a_c x_c: the change is sum_c a_c δ_c, whatever x; scaling Φ scales
    the Lipschitz estimate and leaves the sensitivities alone."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    x = _images()
    cls = torch.zeros(4, dtype=torch.long)
    s = sensitivity(lambda im, c: (a * im).sum(1, keepdim=True), x, cls, IDS, R, N, SEED)
    d = perturbations(x, IDS, R, N, SEED).double().numpy()
    change = np.linalg.norm((d * a.numpy()[None]).sum(2).reshape(4, N, -1), axis=2)
    base = np.linalg.norm((x * a).sum(1).flatten(1).numpy(), axis=1)[:, None]
    np.testing.assert_allclose(s["max_sensitivity"], (change / base).max(1), rtol=1e-12)
    np.testing.assert_allclose(s["avg_sensitivity"], (change / base).mean(1), rtol=1e-12)
    lip = (change / np.linalg.norm(d.reshape(4, N, -1), axis=2)).max(1)
    np.testing.assert_allclose(s["local_lipschitz"], lip, rtol=1e-12)
    big = sensitivity(lambda im, c: 10 * (a * im).sum(1, keepdim=True), x, cls, IDS, R, N,
                      SEED)
    torch.testing.assert_close(big["max_sensitivity"], s["max_sensitivity"], rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(big["local_lipschitz"], 10 * s["local_lipschitz"],
                               rtol=1e-12, atol=0)


def test_a_map_without_mass_that_moves_is_infinitely_sensitive() -> None:
    x = _images()
    cls = torch.arange(4)
    s = sensitivity(lambda im, c: im[:, :1], x, cls, IDS, R, N, SEED,
                    maps=torch.zeros(4, 1, 8, 8))
    assert s["max_sensitivity"].tolist() == [math.inf] * 4
    assert s["avg_sensitivity"].tolist() == [math.inf] * 4
    # the Lipschitz estimate needs no map norm: ||x + δ||_0-channel / ||δ||, finite
    assert torch.isfinite(s["local_lipschitz"]).all() and (s["local_lipschitz"] > 1).all()


def test_scores_do_not_depend_on_chunks_batches_or_given_maps() -> None:
    model = _toy()
    explain = _cam(model)
    x, cls = _images(), torch.tensor([0, 3, 1, 4])
    whole = sensitivity(explain, x, cls, IDS, R, N, SEED)
    sizes: list[int] = []

    def counted(im: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sizes.append(len(im))
        return explain(im, c)

    for chunk in (1, 3, 7, 4 * N, 100):
        sizes.clear()
        part = sensitivity(counted, x, cls, IDS, R, N, SEED, chunk=chunk)
        assert max(sizes) <= chunk
        assert sum(sizes) == 4 + 4 * N  # Φ(x) once, each perturbed image once
        for k in robustness.SCORES:
            torch.testing.assert_close(part[k], whole[k], rtol=1e-12, atol=0)
    given = sensitivity(explain, x, cls, IDS, R, N, SEED, maps=explain(x, cls))
    alone = sensitivity(explain, x[1:2], cls[1:2], IDS[1:2], R, N, SEED)
    for k in robustness.SCORES:
        assert torch.equal(given[k], whole[k])
        torch.testing.assert_close(alone[k], whole[k][1:2], rtol=1e-12, atol=0)
    # another seed, other perturbations, other scores
    assert not torch.equal(sensitivity(explain, x, cls, IDS, R, N, SEED + 1)
                           ["max_sensitivity"], whole["max_sensitivity"])
    # float32 images: x + δ in float32, norms in float64
    s32 = sensitivity(_cam(_toy(torch.float32)), x.float(), cls, IDS, R, N, SEED)
    for k in robustness.SCORES:
        assert s32[k].dtype == torch.float64
        torch.testing.assert_close(s32[k], whole[k], rtol=1e-4, atol=0)


def test_sensitivity_refuses_what_it_cannot_score() -> None:
    x, cls = _images(), torch.arange(4)
    with pytest.raises(ValueError, match="returned 3 maps for 4 images"):
        sensitivity(lambda im, c: im[:3, :1], x, cls, IDS, R, N, SEED)
    with pytest.raises(ValueError, match="4 images, 3 classes"):
        sensitivity(lambda im, c: im[:, :1], x, cls[:3], IDS, R, N, SEED)
    with pytest.raises(ValueError, match="chunk"):
        sensitivity(lambda im, c: im[:, :1], x, cls, IDS, R, N, SEED, chunk=0)
    with pytest.raises(ValueError, match="values for perturbed images"):
        sensitivity(lambda im, c: im[:, :1], x, cls, IDS, R, N, SEED,
                    maps=torch.ones(4, 1, 4, 4))
    empty = sensitivity(lambda im, c: im[:, :1], x[:0], cls[:0], IDS[:0], R, N, SEED)
    assert all(empty[k].shape == (0,) for k in robustness.SCORES)


# ---------------------------------------------------------------- captum


class _Fixed:
    """A perturb_func handing a peer our δ, in the order it asks: ``k`` more
    perturbations of each image per call (captum: image-major ``[B*k]`` rows; Quantus:
    ``[B, C*H*W]`` rows, one perturbation per call)."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta, self.used = delta, 0

    def take(self, k: int) -> torch.Tensor:
        d = self.delta[:, self.used:self.used + k]
        self.used += k
        return d


def _captum_explain(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
    """As captum's ``attribute`` methods: a tuple of inputs in, a tuple of maps out
    (captum explains the formatted tuple ``(x,)`` first, then the perturbed tensor)."""
    def explanation(inputs: torch.Tensor | tuple[torch.Tensor, ...],
                    target: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if isinstance(inputs, tuple):
            return (explain(inputs[0], target),)
        return explain(inputs, target)
    return explanation


@pytest.mark.parametrize("per_batch", [None, 8])
@pytest.mark.parametrize("which", ["cam", "grad_x_input"])
def test_max_sensitivity_matches_captum(which: str, per_batch: int | None) -> None:
    from captum.metrics import sensitivity_max
    model = _toy()
    explain = _cam(model) if which == "cam" else _grad_x_input(model)
    x, cls = _images(), torch.tensor([0, 3, 1, 4])
    delta = perturbations(x, IDS, R, N, SEED).double()
    fixed = _Fixed(delta)

    def perturb(inputs: torch.Tensor) -> torch.Tensor:  # one argument: no radius passed
        k = len(inputs) // len(x)
        return inputs + fixed.take(k).flatten(0, 1)

    ref = sensitivity_max(_captum_explain(explain), x, perturb_func=perturb, n_perturb_samples=N,
                          max_examples_per_batch=per_batch, target=cls)
    assert fixed.used == N  # captum took each of our perturbations once
    ours = sensitivity(explain, x, cls, IDS, R, N, SEED, chunk=per_batch)
    np.testing.assert_allclose(ours["max_sensitivity"].numpy(), ref.numpy(), rtol=1e-12,
                               atol=0)  # the same float64 operations: equal to rounding
    assert (ref > 0).all()


def test_captum_measures_a_massless_map_in_map_units() -> None:
    """Pinned difference: where ||Φ(x)|| = 0 captum divides by 1 (its score is the
    change itself, ||Φ(x + δ)||); ours is +inf."""
    from captum.metrics import sensitivity_max
    x = _images()
    delta = perturbations(x, IDS, R, N, SEED).double()
    fixed = _Fixed(delta)

    def massless_at_x(images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        ref = x.repeat_interleave(len(images) // len(x), 0)
        return torch.relu(images[:, :1] - ref[:, :1])  # 0 at x, relu(δ_0) at x + δ

    ref = sensitivity_max(_captum_explain(massless_at_x), x,
                          perturb_func=lambda inputs: inputs + fixed.take(N).flatten(0, 1),
                          n_perturb_samples=N, target=torch.arange(4))
    hand = torch.relu(delta[:, :, 0]).flatten(2).norm(dim=2).amax(1)
    torch.testing.assert_close(ref, hand, rtol=1e-12, atol=0)
    ours = sensitivity(massless_at_x, x, torch.arange(4), IDS, R, N, SEED)
    assert ours["max_sensitivity"].tolist() == [math.inf] * 4


def test_captum_default_noise_is_torchs_global_generator() -> None:
    """Pinned: captum's ``default_perturb_func`` draws ``torch.FloatTensor(...).uniform_``
    from torch's global generator: repeatable only if the caller seeds it."""
    from captum.metrics import sensitivity_max
    model = _toy(torch.float32)
    explain = _cam(model)
    x, cls = _images(dtype=torch.float32), torch.arange(4)

    def run() -> torch.Tensor:
        return sensitivity_max(_captum_explain(explain), x, n_perturb_samples=3, target=cls)

    state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        a, b = run(), run()
        torch.manual_seed(0)
        c = run()
    finally:
        torch.set_rng_state(state)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


# ---------------------------------------------------------------- Quantus


def _quantus_explain(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> Callable[..., np.ndarray]:
    def q_explain(model: object, inputs: np.ndarray, targets: np.ndarray,
                  **kwargs: object) -> np.ndarray:
        assert inputs.dtype == np.float64  # Quantus hands the array on as given
        return explain(torch.from_numpy(np.ascontiguousarray(inputs)),
                       torch.as_tensor(targets)).numpy()
    return q_explain


def _quantus_perturb(delta: torch.Tensor) -> tuple[_Fixed, Callable[..., np.ndarray]]:
    fixed = _Fixed(delta)

    def perturb(arr: np.ndarray, indices: np.ndarray, **kwargs: object) -> np.ndarray:
        # called once per sample with the flattened batch [B, C*H*W] (and lower/upper
        # bound or perturb_mean/std, ignored): x + our δ of that sample
        return arr + fixed.take(1)[:, 0].flatten(1).numpy()
    return fixed, perturb


@pytest.mark.parametrize("which", ["cam", "grad_x_input"])
def test_sensitivities_and_lipschitz_match_quantus(which: str) -> None:
    """Quantus' robustness metrics flatten the one-channel map (H*W values) and the RGB
    image (3*H*W values) as they are: the map is not broadcast over the channels (were
    it, the Lipschitz numerator would grow by sqrt(3))."""
    import quantus
    model = _toy()
    explain = _cam(model) if which == "cam" else _grad_x_input(model)
    x, cls = _images(), torch.tensor([0, 3, 1, 4])
    delta = perturbations(x, IDS, R, N, SEED).double()
    ours = sensitivity(explain, x, cls, IDS, R, N, SEED)
    kinds: dict[str, Any] = {"max_sensitivity": quantus.MaxSensitivity,
             "avg_sensitivity": quantus.AvgSensitivity,
             "local_lipschitz": quantus.LocalLipschitzEstimate}
    for key, kind in kinds.items():
        fixed, perturb = _quantus_perturb(delta)
        metric = kind(nr_samples=N, perturb_func=perturb, normalise=False, abs=False,
                      disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = metric(model=model, x_batch=x.numpy(), y_batch=cls.numpy(), a_batch=None,
                       explain_func=_quantus_explain(explain), device="cpu")
        assert fixed.used == N, key
        # LocalLipschitzEstimate adds 1e-10 to ||δ|| (~0.8 here): a 1.3e-10 difference
        tol = 1e-9 if key == "local_lipschitz" else 1e-12
        np.testing.assert_allclose(ours[key].numpy(), q, rtol=tol, atol=0, err_msg=key)


def test_quantus_divides_by_a_massless_map() -> None:
    """Pinned difference: where ||Φ(x)|| = 0 Quantus divides by 0: +inf when the
    perturbed map has mass, NaN (0 / 0, skipped by ``np.nanmax``, so NaN if every
    perturbed map is 0) when it has none; ours is +inf and 0. And Quantus refuses a
    batch whose maps are all 0 (``assert_attributions``)."""
    import quantus
    model = _toy()
    x, cls = _images(), torch.arange(4)
    delta = perturbations(x, IDS, R, N, SEED).double()

    def rows(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x and "is image 0" for rows of images in image-major order (Quantus: one
        perturbation of each image a call; ours: all at once)."""
        k = len(images) // len(x)
        first = (torch.arange(len(x)) == 0).view(-1, 1, 1, 1)
        return x.repeat_interleave(k, 0), first.repeat_interleave(k, 0)

    def massless_at_x(images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ref, first = rows(images)  # image 0: 0 at x, relu(δ_0) at x + δ; others: x_0
        return torch.where(first, torch.relu(images[:, :1] - ref[:, :1]), images[:, :1])

    def nothing(images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        _, first = rows(images)  # image 0: always 0
        return torch.where(first, torch.zeros_like(images[:, :1]), images[:, :1])

    def run(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
        _, perturb = _quantus_perturb(delta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array(quantus.MaxSensitivity(
                nr_samples=N, perturb_func=perturb, normalise=False, abs=False,
                disable_warnings=True)(model=model, x_batch=x.numpy(), y_batch=cls.numpy(),
                                       explain_func=_quantus_explain(explain), device="cpu"))

    for explain, theirs, ours in ((massless_at_x, math.inf, math.inf),
                                  (nothing, math.nan, 0.0)):
        q = run(explain)
        s = sensitivity(explain, x, cls, IDS, R, N, SEED)["max_sensitivity"].numpy()
        np.testing.assert_array_equal(q[0], theirs)
        assert s[0] == ours
        np.testing.assert_allclose(s[1:], q[1:], rtol=1e-12, atol=0)  # the others agree
    with pytest.raises(AssertionError, match="all equal to zero"):
        run(lambda images, c: torch.zeros_like(images[:, :1]))


def test_quantus_default_noise_is_numpys_unseeded_global_generator() -> None:
    """Pinned: Quantus' MaxSensitivity perturbs with ``batch_uniform_noise``, which draws
    ``np.random.uniform(-lower_bound, lower_bound)`` from NumPy's global generator, never
    seeded by Quantus: two runs differ unless ``np.random.seed`` is called between them."""
    import quantus
    model = _toy()
    x, cls = _images(), torch.arange(4)
    metric = quantus.MaxSensitivity(nr_samples=3, disable_warnings=True)

    def run() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array(metric(model=model, x_batch=x.numpy(), y_batch=cls.numpy(),
                                   explain_func=_quantus_explain(_cam(model)),
                                   device="cpu"))

    state = np.random.get_state()
    try:
        np.random.seed(0)
        seeded = _np_state()
        a = run()
        drawn = not np.array_equal(_np_state(), seeded)  # the run drew from it
        b = run()
        np.random.seed(0)
        c = run()
    finally:
        np.random.set_state(state)
    assert drawn
    assert not np.array_equal(a, b)
    assert np.array_equal(a, c)


def test_quantus_faithfulness_counts_channel_values_as_features() -> None:
    """Pinned: given a one-channel map for an RGB image, Quantus' faithfulness metrics
    broadcast the map over the channels (``np.broadcast_to(a_batch, x_batch.shape)``) and
    rank the 3*H*W channel values, not the H*W pixels: PixelFlipping's curve has
    3*H*W / features_in_step steps, and ROAD, whose imputation indexes pixels, fails on
    a channel value's index. The robustness metrics do not (see the parity above)."""
    import quantus
    model = _toy(torch.float32)  # Quantus' predict casts the inputs to float32
    x, cls = _images(3, dtype=torch.float32), torch.arange(3)
    a = _cam(model)(x, cls).numpy()  # [3,1,8,8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curve = quantus.PixelFlipping(features_in_step=16, disable_warnings=True,
                                      normalise=False, abs=False)(
            model=model, x_batch=x.numpy(), y_batch=cls.numpy(), a_batch=a.copy(),
            device="cpu")
        # 3 * 64 / 16 = 12 steps, not 64 / 16 = 4
        assert [len(np.asarray(c)) for c in curve] == [12] * 3
        with pytest.raises(IndexError, match="out of bounds for axis 0 with size 64"):
            quantus.ROAD(percentages=[10], disable_warnings=True, normalise=False,
                         abs=False)(model=model, x_batch=x.numpy(), y_batch=cls.numpy(),
                                    a_batch=a.copy(), device="cpu")


def test_the_columns_share_one_set_of_explanations_and_skip_unbounded_images() -> None:
    """The three leaderboard columns: one set of n explanations per image for all three
    (EvalBatch.shared), the ground-truth class, and an image whose map is empty while a
    perturbed one is not is left out of the ratios (not scored as inf)."""
    from metrics.base import EvalBatch
    from metrics.standard import Sensitivity

    calls: list[int] = []

    def explain(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        m = x[:, :1].clamp_min(0) * (c.view(-1, 1, 1, 1) + 1)
        return m

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 6, 6, generator=g)
    x[1] = -0.05  # an empty map (ReLU), which noise of radius 0.1 makes non-empty
    y = torch.tensor([0, 1, 2])
    batch = EvalBatch(images=x, labels=y, logits=torch.zeros(3, 3), saliency=explain(x, y),
                      causal_images=x, indices=torch.tensor([4, 5, 6]), explain=explain)
    calls.clear()
    metrics = {k: Sensitivity(k, radius=0.1, n=4, seed=1) for k in robustness.SCORES}
    for m in metrics.values():
        m.update(batch)
    assert sum(calls) == 3 * 4  # one explanation per image and perturbation, shared
    want = sensitivity(explain, x, y, torch.tensor([4, 5, 6]), 0.1, 4, 1)
    assert math.isinf(float(want["max_sensitivity"][1]))
    scores, _ = metrics["max_sensitivity"].per_image()
    assert list(metrics["max_sensitivity"].image_ids()) == [4, 6]  # image 5 not scored
    assert np.allclose(scores, want["max_sensitivity"][[0, 2]].numpy(), rtol=1e-6)
    lip, _ = metrics["local_lipschitz"].per_image()
    assert len(lip) == 3  # bounded for every image

"""The trust lenses against their peers, side by side in one process (interleaved
rounds), on the same model, images, maps and randomness; the values are checked equal
before anything is timed:

- MPRT (:mod:`metrics.randomisation`) against Quantus' ``MPRT`` at its defaults
  (cascading top-down, ``batch_size`` 64: one explanation call per layer, as ours);
- ROAD (:func:`metrics.road.road_scores`) against pytorch-grad-cam's ``ROADCombined``
  (MoRF and LeRF at 10, 20, ..., 90 %);
- Max-Sensitivity (:func:`metrics.robustness.sensitivity`) against captum's
  ``sensitivity_max`` at its default ``max_examples_per_batch`` (all at once); ours
  explains in calls of the image count, as the evaluator (its evaluation batch).

The model is the harness' baseline on the default preset (cifar-resnet8, 64 x 64
images), untrained but with batch-norm scales, shifts and statistics set away from their
initial values (as after training, so that re-initialising a batch-norm layer changes
the model); the explanations are its Grad-CAM (:func:`methods.explainers.build`).
Each comparison also times the work neither side can avoid (the explanations, or the
forward passes) so the table shows where the time goes. Plain test runs
(``--benchmark-disable``) check the values on the quick mode's image counts and time
nothing."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.conftest import QUICK, interleaved_medians, record_pair, rounds
from harness import config, data, train
from harness import device as dev
from methods import explainers
from methods.base import Method
from metrics import randomisation, road, robustness
from tests.test_road import grad_cam_keeps

#: images per comparison, and in the quick mode and plain test runs
IMAGES = {"mprt": 32, "road": 16, "sensitivity": 32}
FEW_IMAGES = {"mprt": 8, "road": 4, "sensitivity": 8}
#: Quantus' MPRT seed (its default); it seeds every layer's reset with seed + 1
QUANTUS_SEED = 42
#: Max-Sensitivity's perturbations: per image, radius (input units), lens seed
SENS_N, SENS_R, SENS_SEED = 10, 0.1, 0
#: agreement asked of every compared value
TOL = 1e-6

# pytorch-grad-cam's imputer calls np.argwhere on a torch tensor (NumPy 2 deprecation)
GRAD_CAM_NUMPY = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


def _disabled(benchmark: Any) -> bool:
    """A plain test run (``--benchmark-disable``): check the values, time nothing."""
    return bool(getattr(benchmark, "disabled", False))


def _n_images(benchmark: Any, lens: str) -> int:
    return FEW_IMAGES[lens] if QUICK or _disabled(benchmark) else IMAGES[lens]


@pytest.fixture(scope="module")
def model(bench_cfg: config.RunConfig, bench_split: data.Split) -> Method:
    """The baseline of the default preset, prepared as the evaluator prepares it, with
    batch-norm parameters and statistics drawn from a fixed generator."""
    method = train.build_method("baseline", bench_cfg, bench_split)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in method.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.weight is not None and m.bias is not None
                assert m.running_mean is not None and m.running_var is not None
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=g))
                m.bias.copy_(torch.empty_like(m.bias).uniform_(-0.2, 0.2, generator=g))
                m.running_mean.copy_(torch.empty_like(m.running_mean).uniform_(
                    -0.1, 0.1, generator=g))
                m.running_var.copy_(torch.empty_like(m.running_var).uniform_(
                    0.5, 1.5, generator=g))
    out = dev.prepare(method, torch.device("cpu")).eval()
    assert isinstance(out, Method)
    return out


def _batch(split: data.Split, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, test-split indices) of the split's first ``n`` images."""
    b = next(iter(DataLoader(split.dataset, batch_size=n)))
    return b["image"], b["label"], b["index"]


def _gradcam(method: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``[B,1,H,W]`` (float32) of ``method``, explainer built on it, as the
    evaluator explains (no gradient kept)."""
    assert isinstance(method, Method)
    with torch.no_grad():
        return explainers.build("gradcam", method).explain(x, classes).float()


# ---------------------------------------------------------------- MPRT vs Quantus


def _quantus_layers(method: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """One group per module with ``reset_parameters``, top-down: the layers Quantus'
    ``get_random_layer_generator`` randomises, in its order."""
    return [(name, [m]) for name, m in method.named_modules()
            if hasattr(m, "reset_parameters")][::-1]


def test_mprt_vs_quantus(benchmark: Any, model: Method, bench_split: data.Split) -> None:
    """Cascading randomisation, one layer per step: our copies
    (:func:`metrics.randomisation.randomised_models` with Quantus' seeds, which also
    makes the independent scheme's copies), each copy's Grad-CAM of all the images in
    one call and :func:`metrics.randomisation.spearman` against the original maps,
    against ``quantus.MPRT`` at its defaults (|map| normalised by the maximum, scipy's
    Spearman) with the same explain function. Per layer and image the Spearman values
    agree within 1e-6 where Quantus' are defined (checked with the maps handed to
    Quantus in float64: its float32 division by the batch maximum merges neighbouring
    values and moves a value by up to 5e-6); where a map is constant (a Grad-CAM of no
    mass) scipy's is NaN and ours 0 or 1. Timed with the float32 maps."""
    import quantus

    x, y, _ = _batch(bench_split, _n_images(benchmark, "mprt"))
    original = _gradcam(model, x, y)
    layers = _quantus_layers(model)
    seeds = [QUANTUS_SEED + 1] * len(layers)
    q_batch = inspect.signature(quantus.MPRT.__call__).parameters["batch_size"].default

    def cascade() -> list[tuple[str, nn.Module]]:
        steps = randomisation.randomised_models(model, layers, 0, seeds=seeds)
        return [(group, copy) for mode, group, copy in steps if mode == "cascading"]

    def similarities(models: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
        a = original.abs()
        return {group: randomisation.spearman(a, _gradcam(copy, x, y).abs())
                for group, copy in models}

    def ours() -> dict[str, torch.Tensor]:
        return similarities(cascade())

    def quantus_mprt(dtype: type[np.floating[Any]]) -> Callable[[], dict[str, list[float]]]:
        def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                         **_: object) -> np.ndarray:
            maps = _gradcam(model, torch.from_numpy(np.ascontiguousarray(inputs)),
                            torch.as_tensor(targets))
            return maps.numpy().astype(dtype)

        def run() -> dict[str, list[float]]:
            metric = quantus.MPRT(seed=QUANTUS_SEED, disable_warnings=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                             a_batch=original.numpy().astype(dtype),
                             explain_func=explain_func, device="cpu")
            assert isinstance(out, dict)
            return out

        return run

    benchmark.group = (f"MPRT (cascading), {len(x)} images x {len(layers)} layers "
                       f"(Grad-CAM, {bench_split.info.image_size[0]} px)")
    mine = benchmark.pedantic(ours, rounds=rounds(3), iterations=1)
    theirs = quantus_mprt(np.float64)()
    assert list(theirs) == ["original"] + [g for g, _ in layers]
    ours_v = np.stack([mine[g].numpy() for g, _ in layers])
    q_v = np.stack([np.asarray(theirs[g], dtype=np.float64) for g, _ in layers])
    defined = np.isfinite(q_v)
    assert defined.mean() > 0.5, "most maps should have mass"
    np.testing.assert_allclose(ours_v[defined], q_v[defined], rtol=0, atol=TOL)
    assert set(np.unique(ours_v[~defined]).tolist()) <= {0.0, 1.0}
    if _disabled(benchmark):
        return

    models = cascade()
    randomised_maps = [_gradcam(copy, x, y).abs() for _group, copy in models]

    def explanations() -> None:  # the explanations alone, of the copies made above
        for _group, copy in models:
            _gradcam(copy, x, y)

    def spearman() -> None:  # the similarities alone, of the maps made above
        a = original.abs()
        for m in randomised_maps:
            randomisation.spearman(a, m)

    t = interleaved_medians({"ours": ours, "Quantus": quantus_mprt(np.float32),
                             "models": cascade, "explanations": explanations,
                             "spearman": spearman}, repeats=5)
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    benchmark.extra_info["quantus_batch_size"] = q_batch
    r = record_pair(f"MPRT: ours / Quantus MPRT ({len(x)} images, {len(layers)} layers, "
                    f"its batch {q_batch})", t["ours"], t["Quantus"])
    record_pair("MPRT: ours / the explanations alone", t["ours"], t["explanations"])
    record_pair("MPRT: Quantus / the explanations alone", t["Quantus"], t["explanations"])
    print(f"MPRT: throughput, ours / Quantus = {1 / r:.2f}x; ours = "
          f"{t['models']:.3f} s randomised copies ({2 * len(layers) - 1} deep copies: both "
          f"schemes) + {t['explanations']:.3f} s explanations + {t['spearman']:.3f} s "
          "Spearman")


# ---------------------------------------------------------------- ROAD vs pytorch-grad-cam


def _untied(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` ``[B,H,W]`` as maps without ties and in the same order (ties broken in
    raster order, as :func:`metrics.road.road_keep_masks` breaks them): the top pixel
    1, the next (n - 1) / n, ..., the last 1 / n; exact in float32, and so is 1 - map
    (pytorch-grad-cam ranks LeRF by 1 - map)."""
    flat = maps.flatten(1)
    n = flat.shape[1]
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    values = (n - torch.arange(n, dtype=torch.float32)) / n
    return torch.empty_like(flat).scatter_(1, order, values.expand_as(flat)).view_as(maps)


def _percentile(fraction: float) -> int:
    """pytorch-grad-cam's percentile that removes ``fraction``: it keeps the pixels
    below the percentile (of the map for MoRF, of 1 - map for LeRF)."""
    return round(100 * (1 - fraction))


@GRAD_CAM_NUMPY
def test_road_vs_pytorch_grad_cam(benchmark: Any, model: Method,
                                  bench_split: data.Split) -> None:
    """MoRF and LeRF at the 9 fractions of both for the predicted class, on maps
    without ties (the Grad-CAM maps' order, :func:`_untied`), against pytorch-grad-cam's
    ``ROADCombined`` (default percentiles, its imputer's default noise 0.01; ours
    noise 0.01 in input units: noise does not change either side's cost). Checked at
    noise 0 on both sides at the fractions where the two remove the same pixels: on
    64 x 64 = 4096 pixels pytorch-grad-cam's percentile cut removes 1 + floor(4095 f),
    ours round(4096 f), which differ at 20 % (820 / 819) and 40 % (1639 / 1638); the
    probabilities agree within 1e-6 at the other seven."""
    from pytorch_grad_cam.metrics.road import (
        ROADCombined,
        ROADLeastRelevantFirst,
        ROADMostRelevantFirst,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    logits = explainers._Logits(model).eval()
    x, _, _ = _batch(bench_split, _n_images(benchmark, "road"))
    with torch.no_grad():
        p_all = torch.softmax(logits(x), 1)
    pred = p_all.argmax(1)
    p0 = p_all.gather(1, pred.view(-1, 1)).flatten()
    maps = _untied(_gradcam(model, x, pred)[:, 0])
    cams = maps.numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in pred]

    agree = tuple(f for f in road.FRACTIONS if all(
        torch.equal(grad_cam_keeps(o, _percentile(f), maps[i]),
                    road.road_keep_masks(maps[i:i + 1], (f,), o)[0, 0])
        for o in road.ORDERS for i in range(len(maps))))
    assert agree == (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)

    def ours() -> tuple[torch.Tensor, torch.Tensor]:
        return road.road_scores(logits, x, maps, pred, fractions=road.FRACTIONS, noise=0.01,
                                seed=0)

    def theirs() -> np.ndarray:
        out = ROADCombined(percentiles=[_percentile(f) for f in road.FRACTIONS])(
            x, cams, targets, logits)
        return np.asarray(out)

    h, w = x.shape[-2:]
    benchmark.group = (f"ROAD MoRF + LeRF, {len(x)} images x {len(road.FRACTIONS)} "
                       f"fractions ({h} x {w})")
    morf, lerf = benchmark.pedantic(ours, rounds=rounds(3), iterations=1)
    assert morf.shape == lerf.shape == (len(x), len(road.FRACTIONS))
    exact = road.road_scores(logits, x, maps, pred, fractions=agree, noise=0)
    for j, f in enumerate(agree):
        for kind, mine in ((ROADMostRelevantFirst, exact[0]), (ROADLeastRelevantFirst, exact[1])):
            metric = kind(percentile=_percentile(f))
            metric.perturbation.imputer.noise = 0
            # it returns the probability after the imputation minus the one before
            diff = metric(x, cams, targets, logits)
            np.testing.assert_allclose((mine[:, j] - p0).numpy(), np.asarray(diff).ravel(),
                                       rtol=0, atol=TOL, err_msg=f"{kind.__name__} {f}")
    if _disabled(benchmark):
        return

    rows = 2 * len(road.FRACTIONS) * len(x)
    fake = torch.randn(rows, *x.shape[1:])

    def plain() -> None:  # the forward passes both need, in one batch (as ours)
        with torch.no_grad():
            logits(fake)

    t = interleaved_medians({"ours": ours, "pytorch-grad-cam": theirs, "plain": plain},
                            repeats=3)
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    r = record_pair(f"ROAD: ours / pytorch-grad-cam ROADCombined ({len(x)} images, "
                    f"{len(road.FRACTIONS)} fractions)", t["ours"], t["pytorch-grad-cam"])
    record_pair(f"ROAD: ours / plain forwards ({rows} images)", t["ours"], t["plain"])
    print(f"ROAD: throughput, ours / pytorch-grad-cam = {1 / r:.2f}x")


# ---------------------------------------------------------------- Max-Sensitivity vs captum


class _Delta:
    """captum's ``perturb_func``: our δ of the images (:func:`metrics.robustness.
    perturbations`, drawn here so that both sides pay for the draw), ``k`` more of each
    image per call, image-major as captum expands its inputs."""

    def __init__(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        self.x, self.ids, self.used = x, ids, 0

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:  # one argument: no radius
        k = len(inputs) // len(self.x)
        delta = robustness.perturbations(self.x, self.ids, SENS_R, self.used + k, SENS_SEED)
        self.used += k
        return inputs + delta[:, self.used - k:self.used].flatten(0, 1).to(inputs.dtype)


def _captum_explain(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
    """As captum's ``attribute`` methods: a tuple of inputs gives a tuple of maps
    (captum explains the formatted ``(x,)`` first, then the perturbed tensor)."""
    def explanation(inputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor
                    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if isinstance(inputs, tuple):
            return tuple(explain(z, target) for z in inputs)
        return explain(inputs, target)
    return explanation


def test_max_sensitivity_vs_captum(benchmark: Any, model: Method,
                                   bench_split: data.Split) -> None:
    """Max-Sensitivity of the Grad-CAM maps for the labels (as the evaluator), n = 10
    perturbations of radius 0.1 per image: ours explains the images and then their
    perturbations in calls of the image count (the evaluator's chunk: its evaluation
    batch), captum all the perturbations in one call (its default
    ``max_examples_per_batch``), fed our δ. The values agree within 1e-6 on images whose
    map has mass (checked with the maps handed to captum in float64, whose norms it then
    takes in float64 as ours); where it has none captum divides by 1 (the change in map
    units) and ours is +inf (or 0 if nothing moved). Timed with the float32 maps."""
    from captum.metrics import sensitivity_max

    x, y, ids = _batch(bench_split, _n_images(benchmark, "sensitivity"))
    ex = explainers.build("gradcam", model)

    def explain(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ex.explain(z, c).float()

    def ours() -> torch.Tensor:
        return robustness.sensitivity(explain, x, y, ids, SENS_R, SENS_N, SENS_SEED,
                                      chunk=len(x))["max_sensitivity"]

    def captum_run(dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            out = sensitivity_max(_captum_explain(lambda z, c: explain(z, c).to(dtype)), x,
                                  perturb_func=_Delta(x, ids), n_perturb_samples=SENS_N,
                                  target=y)
            assert isinstance(out, torch.Tensor)
            return out
        return run

    benchmark.group = (f"Max-Sensitivity, {len(x)} images x {SENS_N} perturbations "
                       "(Grad-CAM)")
    mine = benchmark.pedantic(ours, rounds=rounds(3), iterations=1)
    theirs = captum_run(torch.float64)().double()
    mass = explain(x, y).flatten(1).norm(dim=1) > 0
    assert mass.float().mean() > 0.5, "most maps should have mass"
    np.testing.assert_allclose(mine[mass].numpy(), theirs[mass].numpy(), rtol=0, atol=TOL)
    assert set(mine[~mass].tolist()) <= {0.0, float("inf")}
    if _disabled(benchmark):
        return

    def explanations() -> None:  # the explanations alone: the images, then n per image
        explain(x, y)
        z = x.repeat_interleave(SENS_N, 0)
        c = y.repeat_interleave(SENS_N, 0)
        for s in range(0, len(z), len(x)):
            explain(z[s:s + len(x)], c[s:s + len(x)])

    t = interleaved_medians({"ours": ours, "captum": captum_run(torch.float32),
                             "explanations": explanations}, repeats=5)
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    r = record_pair(f"Max-Sensitivity: ours / captum sensitivity_max ({len(x)} images, "
                    f"n={SENS_N}, ours chunk {len(x)}, captum batch all)",
                    t["ours"], t["captum"])
    record_pair("Max-Sensitivity: ours / the explanations alone", t["ours"],
                t["explanations"])
    record_pair("Max-Sensitivity: captum / the explanations alone", t["captum"],
                t["explanations"])
    print(f"Max-Sensitivity: throughput, ours / captum = {1 / r:.2f}x")

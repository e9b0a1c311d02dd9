"""Model-parameter randomisation (Adebayo et al. 2018): the groups, the randomised
copies, Spearman against SciPy, the MPRT columns, and parity with Quantus' MPRT."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import methods  # noqa: F401  (registers the methods)
from harness import backbones
from harness.data import DatasetInfo
from methods.base import METHODS
from metrics import randomisation
from metrics.base import EvalBatch
from metrics.standard import MPRT

INFO = DatasetInfo("t", 5, (16, 16), (0.5,) * 3, (0.25,) * 3, True)


def _method(name: str) -> nn.Module:
    torch.manual_seed(0)
    return METHODS.get(name)(backbones.build("cifar-resnet8", INFO.num_classes), INFO).eval()


def test_ranks_and_spearman_match_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(6, 50, generator=g).round(decimals=1)  # many ties
    b = torch.rand(6, 50, generator=g)
    b[b < 0.4] = 0  # a ReLU map: a block of zeros
    for i in range(6):
        assert np.allclose(randomisation.ranks(a)[i].numpy(), scipy.stats.rankdata(a[i]))
    want = [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(6)]
    assert np.allclose(randomisation.spearman(a, b).numpy(), want, atol=1e-12)


def test_spearman_of_constant_maps() -> None:
    c = torch.ones(1, 9)
    v = torch.arange(9.0).view(1, 9)
    assert randomisation.spearman(c, 2 * c).item() == 1.0  # nothing to reorder
    assert randomisation.spearman(c, v).item() == 0.0  # scipy: NaN
    assert randomisation.spearman(v, -v).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_partitions_its_parameters(name: str) -> None:
    model = _method(name)
    groups = model.parameter_groups()
    randomisation.check_groups(model, groups)  # raises if not a partition
    names = [g for g, _ in groups]
    if hasattr(model, "attention_branch"):
        assert names == ["perception branch", "attention branch", "feature extractor"]
    else:  # top-down: the classifier first, the stem last
        assert names[0] == "backbone.fc" and names[-1] == "backbone.features.0"


def test_check_groups_refuses_gaps_overlaps_and_unresettable_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="in no group"):
        randomisation.check_groups(model, [("a", [model[0]])])
    with pytest.raises(ValueError, match="groups 'a' and 'b'"):
        randomisation.check_groups(model, [("a", [model]), ("b", [model[1]])])

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

    odd = nn.Sequential(Scale())
    with pytest.raises(ValueError, match="no reset_parameters"):
        randomisation.check_groups(odd, [("a", [odd])])


def _changed(a: nn.Module, b: nn.Module) -> set[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def test_cascading_and_independent_steps_randomise_the_right_groups() -> None:
    model = _method("gradcam")
    for m in model.modules():  # batch norm as after training (not at its reset values)
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    steps = randomisation.randomised_models(model, model.parameter_groups(), seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # global generator untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    groups = [g for g, _ in model.parameter_groups()]
    prefix = {g: {k for k in before if k.startswith(g + ".")} for g in groups}
    assert [m for m, _g, _ in steps] == ["cascading"] * 5 + ["independent"] * 5
    for i, (_mode, group, copy) in enumerate(steps):
        changed = _changed(model, copy)
        want = (set().union(*(prefix[g] for g in groups[: i + 1])) if i < 5 else prefix[group])
        # every tensor that changed is in the groups randomised so far (a BN's
        # num_batches_tracked of an untrained model may stay 0)
        assert changed and changed <= want, (i, group)
        assert {k for k in want if "weight" in k} <= changed
    assert steps[5][2] is steps[0][2]  # the first step is one model in both schemes
    again = randomisation.randomised_models(model, model.parameter_groups(), seed=3)
    other = randomisation.randomised_models(model, model.parameter_groups(), seed=4)
    assert not _changed(steps[4][2], again[4][2])  # reproducible from the seed
    assert _changed(steps[4][2], other[4][2])


def test_batch_norm_in_a_randomised_group_is_reset_to_identity() -> None:
    model = _method("baseline")
    bn = model.backbone.features[0][1]
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(5.0)
    _m, _g, copy = randomisation.randomised_models(model, model.parameter_groups(), 0)[4]
    bn_r = copy.backbone.features[0][1]
    assert torch.equal(bn_r.running_mean, torch.zeros(16))
    assert torch.equal(bn_r.running_var, torch.ones(16))
    assert torch.equal(bn_r.weight.data, torch.ones(16))


def test_abn_map_ignores_the_perception_branch_its_prediction_does_not() -> None:
    model = _method("abn")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)
    steps = randomisation.randomised_models(model, model.parameter_groups(), seed=0)
    mode, group, perception = steps[0]
    assert (mode, group) == ("cascading", "perception branch")
    with torch.no_grad():
        assert torch.equal(perception.explain(x, y), model.explain(x, y))
        assert not torch.allclose(perception(x).logits, model(x).logits)
        assert not torch.equal(steps[1][2].explain(x, y), model.explain(x, y))


def _batch(original: torch.Tensor, steps: list[tuple[str, str, object]]) -> EvalBatch:
    n = original.shape[0]
    return EvalBatch(images=torch.zeros(n, 3, *original.shape[-2:]),
                     labels=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 2),
                     saliency=original, causal_images=torch.zeros(n, 3, *original.shape[-2:]),
                     randomised=lambda: steps)  # type: ignore[arg-type, return-value]


def test_mprt_columns_known_answers() -> None:
    g = torch.Generator().manual_seed(0)
    original = torch.rand(3, 1, 9, 9, generator=g)
    same = lambda x, c: original.clone()  # noqa: E731  (a map that ignores the model)
    flipped = lambda x, c: -original * 2  # noqa: E731  (|map| twice as large: same order)
    reversed_ = lambda x, c: 1 - original  # noqa: E731  (the order reversed)
    steps = [("cascading", "a", same), ("cascading", "b", reversed_),
             ("independent", "a", same), ("independent", "b", flipped)]
    batch = _batch(original, steps)
    sp, ss = MPRT("spearman"), MPRT("ssim")
    sp.update(batch)
    ss.update(batch)
    scores, _ = sp.per_image()
    # mean over the cascade's two steps: 1 and -1; the unrandomised map is not a step
    assert np.allclose(scores, 0.0, atol=1e-12)
    assert np.allclose(sp.mean_curve(), [1, -1, 1, 1])
    s_scores, _ = ss.per_image()
    assert np.all(s_scores < 1) and ss.mean_curve()[0] == pytest.approx(1.0)
    assert ss.mean_curve()[3] == pytest.approx(1.0)  # by_max: twice the map is the map


def test_an_input_only_explainer_fails_mprt() -> None:
    """A map that does not read the model (the random explainer, the centre prior)
    keeps similarity 1 whatever is randomised."""
    from methods.explainers import build

    model = _method("gradcam")
    ex = build("random", model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 2])
    steps = [(m, g, build("random", copy).explain) for m, g, copy in
             randomisation.randomised_models(model, model.parameter_groups(), 0)]
    batch = _batch(ex.explain(x, y), steps)
    batch.causal_images, batch.labels, batch.images = x, y, x
    metric = MPRT("spearman")
    metric.update(batch)
    assert np.allclose(metric.per_image()[0], 1.0)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|d logit_y / d x| summed over channels: [B,1,H,W]."""
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, y.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(out, x)
    return grad.abs().sum(1, keepdim=True)


def test_parity_with_quantus_mprt_per_layer_and_its_averaging_bug() -> None:
    import quantus

    torch.manual_seed(0)
    model = _Toy().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 10, 10, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    a = _saliency(model, x, y).detach()

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                     **_: object) -> np.ndarray:
        return _saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    kw = dict(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
              explain_func=explain_func, device="cpu")
    q = quantus.MPRT(seed=42, disable_warnings=True)(**kw)
    # Quantus re-seeds with seed + 1 before each layer, top-down over the modules that
    # have reset_parameters; the same groups and seeds give the same models here
    groups = [("net.6", [model.net[6]]), ("net.2", [model.net[2]]), ("net.0", [model.net[0]])]
    steps = randomisation.randomised_models(model, groups, 0, seeds=[43, 43, 43])
    assert list(q) == ["original", "net.6", "net.2", "net.0"]
    ours = {}
    for mode, group, copy in steps:
        if mode == "cascading":
            ours[group] = randomisation.spearman(a, _saliency(copy, x, y)).numpy()
            assert np.allclose(ours[group], q[group], atol=1e-10), group
    # Quantus' per-image average skips a key named "orig"; its key is "original", so
    # the unrandomised map's similarity (1) is averaged in. Ours leaves it out.
    q_avg = quantus.MPRT(seed=42, disable_warnings=True, return_average_correlation=True)(**kw)
    layers = np.stack([ours[k] for k in ("net.6", "net.2", "net.0")])
    assert np.allclose(q_avg, (1 + layers.sum(0)) / 4, atol=1e-10)
    assert not np.allclose(q_avg, layers.mean(0), atol=1e-3)

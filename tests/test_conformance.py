"""Registry-generated: every registered method, explainer, metric, backbone and dataset
meets the contract plugin authors check theirs with (harness.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import testing
from harness.backbones import BACKBONES
from harness.data import DATASETS
from harness.registry import registering
from methods.base import METHODS
from methods.explainers import EXPLAINERS
from metrics.base import METRICS
from tests import dataset_fixtures


@pytest.mark.parametrize("name", METHODS.names())
def test_method(name: str) -> None:
    testing.check_method(name)


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_on_every_method_it_fits(name: str) -> None:
    fitted = testing.check_explainer(name)
    if name in ("native", "random"):  # they fit every model
        assert fitted == METHODS.names()


@pytest.mark.parametrize("name", METRICS.names())
def test_metric(name: str) -> None:
    metric = testing.check_metric(name)
    assert (metric is None) == (METRICS.get(name).factory is None)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone(name: str) -> None:
    testing.check_backbone(name)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_a_fixture_and_meets_the_contract(name: str, tmp_path: Path
                                                             ) -> None:
    if DATASETS.entry(name).meta.get("embedded"):
        testing.check_dataset(name, n_train=16, n_test=8)
        return
    assert name in dataset_fixtures.BUILDERS, (
        f"dataset {name!r} has no fixture in tests/dataset_fixtures.py: write one in its "
        "published on-disk layout")
    fx = dataset_fixtures.BUILDERS[name](tmp_path)
    testing.check_dataset(name, data_dir=fx.root, image_size=64)


@pytest.mark.parametrize("example", ["new_method", "custom_metric", "captum_explainer"])
def test_the_examples_pass_the_checks(example: str) -> None:
    from harness import plugins

    root = Path(__file__).resolve().parent.parent / "examples"
    try:
        plugins.include(str(root / f"{example}.py"))
        if example == "new_method":
            testing.check_method("gate")
            assert "gate" in testing.check_explainer("gradcam", ["gate"])
        elif example == "custom_metric":
            assert testing.check_metric("relevance_rank_acc") is not None
        else:
            assert testing.check_explainer("captum-ig", ["baseline", "abn"]) == [
                "baseline", "abn"]
            assert testing.check_explainer("pgc-eigencam", ["baseline"]) == ["baseline"]
    finally:
        plugins.reset()


def test_the_checks_catch_what_they_are_for() -> None:
    """Each contract check fails on a plugin that breaks it, naming what broke."""
    import torch

    from methods.explainers import Explainer
    from methods.posthoc import Baseline
    from metrics.base import MetricSpec, PerImageMetric

    class Stashing(Baseline):
        def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
            out = super().forward(x)
            self.last_logits = out.logits  # state stashed in forward
            return out

    with pytest.raises(AssertionError, match="forward stored attributes"):
        testing.check_method(Stashing)

    class Negative(Baseline):
        def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return -super().explain(x, target)

    with pytest.raises(AssertionError, match="negative map values"):
        testing.check_method(Negative)

    def hooked(method: torch.nn.Module) -> Explainer:
        def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            method.backbone.fc.register_forward_hook(lambda *a: None)  # never removed
            return torch.ones(len(x), 1, *x.shape[-2:])
        return Explainer("hooked", explain, None)

    with registering("a test"):
        EXPLAINERS.add("hooked-test", hooked)
    try:
        with pytest.raises(AssertionError, match="hooked-test on baseline: hooks left"):
            testing.check_explainer("hooked-test", ["baseline"])
    finally:
        EXPLAINERS.remove_source("a test")

    class TooHigh(PerImageMetric):
        def score(self, batch):  # type: ignore[no-untyped-def]
            return torch.full((len(batch.labels),), 2.0), torch.ones(
                len(batch.labels), dtype=torch.bool)

    with registering("a test"):
        METRICS.add("too-high-test", MetricSpec("too-high-test", True, "",
                                                factory=lambda c: TooHigh()))
    try:
        with pytest.raises(AssertionError, match=r"too-high-test: 2.0 outside \(0.0, 1.0\)"):
            testing.check_metric("too-high-test")
    finally:
        METRICS.remove_source("a test")

"""Speed suite (``tox -e benchmark``). Run as plain tests, each benchmark runs once."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

import methods  # noqa: F401
import metrics  # noqa: F401
from harness import config, data, train


@pytest.fixture(scope="session")
def bench_split() -> data.Split:
    cfg = config.resolve("default")
    return data.build(cfg.dataset, "test", **{**cfg.dataset_kwargs, "n_test": 64})


@pytest.fixture(scope="session")
def bench_cfg() -> config.RunConfig:
    return config.resolve("default")


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ratio_to(benchmark: pytest.FixtureDef, reference_s: float) -> float | None:  # type: ignore[type-arg]
    """The benchmark's median over ``reference_s``, or None when benchmarks are disabled."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or reference_s <= 0:
        return None
    return float(stats.stats.median / reference_s)


@pytest.fixture
def eval_model(bench_cfg: config.RunConfig,
               bench_split: data.Split) -> Callable[[str], torch.nn.Module]:
    def make(name: str) -> torch.nn.Module:
        return train.build_method(name, bench_cfg, bench_split).eval()

    return make

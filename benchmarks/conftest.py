"""Speed suite (``tox -e benchmark``). Run as plain tests, each benchmark runs once."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import methods  # noqa: F401
import metrics  # noqa: F401
from harness import config, data, train
from harness import device as dev


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


def record_ratio(benchmark: Any, label: str, reference_s: float) -> float | None:
    """Store and print the benchmark's median over ``reference_s`` (measured in the same
    process just before); None when benchmarks are disabled (plain test runs)."""
    stats = getattr(benchmark, "stats", None)
    benchmark.extra_info["reference_median_s"] = reference_s
    if stats is None or reference_s <= 0:
        return None
    ratio = float(stats.stats.median / reference_s)
    benchmark.extra_info["ratio"] = ratio
    print(f"\n{label} = {ratio:.2f}")
    return ratio


@pytest.fixture
def eval_model(bench_cfg: config.RunConfig,
               bench_split: data.Split) -> Callable[[str], torch.nn.Module]:
    def make(name: str) -> torch.nn.Module:
        model = train.build_method(name, bench_cfg, bench_split)
        return dev.prepare(model, torch.device("cpu")).eval()

    return make

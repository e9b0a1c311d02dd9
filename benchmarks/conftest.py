"""Speed suite (``tox -e benchmark``). Run as plain tests, each benchmark runs once.

``ATTNBENCH_BENCH_QUICK=1`` (with ``--benchmark-min-rounds=1``, as CI runs it) measures
every pair once, on few images: every ratio is printed, none is worth quoting. At the
end the suite prints one table: each measured pair, the two medians and their ratio.
"""

from __future__ import annotations

import os
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


#: one measurement of each pair, on few images (CI: every ratio printed, quickly)
QUICK = os.environ.get("ATTNBENCH_BENCH_QUICK", "") not in ("", "0")
#: (pair, median seconds, reference median seconds) of every ratio printed this session
PAIRS: list[tuple[str, float, float]] = []


def rounds(n: int) -> int:
    """``n`` repeats, or 1 in the quick mode."""
    return 1 if QUICK else n


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``fn`` after one warm-up call (one timed call when quick)."""
    repeats = rounds(repeats)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 3
                        ) -> dict[str, float]:
    """Median wall time of each of ``fns`` after one warm-up call each, measured in
    ``repeats`` rounds that call every one in turn (one round when quick): a shared
    machine slowing down or speeding up during the measurement moves all sides alike,
    where timing one side after the other moved a ratio by 20 % from run to run."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds(repeats)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def record_ratio(benchmark: Any, label: str, reference_s: float) -> float | None:
    """Store and print the benchmark's median over ``reference_s`` (measured in the same
    process just before); None when benchmarks are disabled (plain test runs)."""
    stats = getattr(benchmark, "stats", None)
    benchmark.extra_info["reference_median_s"] = reference_s
    if stats is None or reference_s <= 0:
        return None
    ratio = record_pair(label, float(stats.stats.median), reference_s)
    benchmark.extra_info["ratio"] = ratio
    return ratio


def record_pair(label: str, measured_s: float, reference_s: float) -> float:
    """Print ``label = measured / reference`` and keep the pair for the summary table."""
    ratio = measured_s / reference_s
    PAIRS.append((label, measured_s, reference_s))
    print(f"\n{label} = {ratio:.2f}")
    return ratio


def summary_table(pairs: list[tuple[str, float, float]]) -> list[str]:
    """The lines of the end-of-run table: pair, the two medians (ms), their ratio."""
    width = max([len("pair (measured / reference)")] + [len(p) for p, _, _ in pairs])
    head = f"{'pair (measured / reference)':<{width}}  {'measured ms':>12}  " \
           f"{'reference ms':>12}  {'ratio':>6}"
    rows = [f"{p:<{width}}  {1e3 * a:>12.2f}  {1e3 * b:>12.2f}  {a / b:>6.2f}"
            for p, a, b in pairs]
    return [head, "-" * len(head), *rows]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables: the last thing shown
def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not PAIRS:  # benchmarks disabled (plain test runs): nothing was measured
        return
    terminalreporter.section("attnbench speed ratios (medians, side by side in this run)")
    for line in summary_table(PAIRS):
        terminalreporter.write_line(line)
    if QUICK:
        terminalreporter.write_line("quick mode (ATTNBENCH_BENCH_QUICK): one measurement "
                                    "per side on few images; not for quoting")


@pytest.fixture
def eval_model(bench_cfg: config.RunConfig,
               bench_split: data.Split) -> Callable[[str], torch.nn.Module]:
    def make(name: str) -> torch.nn.Module:
        model = train.build_method(name, bench_cfg, bench_split)
        return dev.prepare(model, torch.device("cpu")).eval()

    return make

"""Speed suite (``tox -e benchmark``). Run as plain tests, each benchmark runs once.

``ATTNBENCH_BENCH_QUICK=1`` (with ``--benchmark-min-rounds=1``, as CI runs it) measures
every pair once, on few images: every ratio is printed, none is worth quoting. At the
end the suite prints two tables: each measured pair, the two medians and their ratio;
and the insertion/deletion throughput over TorchCAM's, quiet and under a competing load.

``ATTNBENCH_BENCH_LOAD`` sets how many competing CPU-bound processes the loaded
scenarios start (default 1); each ends with its scenario, or after
``ATTNBENCH_BENCH_LOAD_SECONDS`` (default 1200) whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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


#: competing processes of a loaded scenario, and the most each may live (seconds)
LOAD_PROCESSES = int(os.environ.get("ATTNBENCH_BENCH_LOAD", "1"))
LOAD_SECONDS = float(os.environ.get("ATTNBENCH_BENCH_LOAD_SECONDS", "1200"))
#: a CPU-bound loop that ends by itself after argv[1] seconds
_BUSY = ("import sys, time\n"
         "end = time.monotonic() + float(sys.argv[1])\n"
         "n = 0\n"
         "while time.monotonic() < end:\n"
         "    for _ in range(10000):\n"
         "        n += 1\n")


@contextlib.contextmanager
def competing_load(on: bool, processes: int = LOAD_PROCESSES,
                   seconds: float = LOAD_SECONDS) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``processes`` CPU-bound processes running beside the block (none when not
    ``on``), as another job on a shared machine would: started here, stopped when the
    block ends (or fails), and ending by themselves after ``seconds`` in any case."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if on:
            procs = [subprocess.Popen([sys.executable, "-c", _BUSY, str(seconds)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                     for _ in range(processes)]
            time.sleep(0.2)  # scheduled and spinning before anything is measured
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


#: (model, engine) -> {"quiet"/"loaded": (throughput over TorchCAM, forward batch)}
THROUGHPUT: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}


def record_throughput(model: str, engine: str, load: str, ratio: float, batch: str) -> None:
    """Keep one insertion/deletion throughput over TorchCAM's for the summary."""
    THROUGHPUT.setdefault((model, engine), {})[load] = (ratio, batch)


def throughput_table(rows: dict[tuple[str, str], dict[str, tuple[float, str]]]
                     ) -> list[str]:
    """The lines of the quiet / loaded table: model, engine, both throughputs over
    TorchCAM's and the forward batch each used."""
    head = (f"{'model':<16} {'engine':<12} {'quiet':>7} {'loaded':>7}  "
            "forward batch (quiet / loaded)")
    lines = [head, "-" * len(head)]
    for (model, engine), by in rows.items():
        q, lo = by.get("quiet"), by.get("loaded")
        cell = [f"{v[0]:.2f}x" if v else "-" for v in (q, lo)]
        lines.append(f"{model:<16} {engine:<12} {cell[0]:>7} {cell[1]:>7}  "
                     f"{q[1] if q else '-'} / {lo[1] if lo else '-'}")
    return lines


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


#: where a full (not quick) run of the suite writes its tables for the documentation's
#: performance page (``ATTNBENCH_BENCH_REPORT`` overrides; empty: not written)
REPORT = os.environ.get("ATTNBENCH_BENCH_REPORT",
                        str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))


def markdown_report(pairs: list[tuple[str, float, float]],
                    throughput: dict[tuple[str, str], dict[str, tuple[float, str]]], *,
                    when: str, revision: str, machine: str, load: int) -> str:
    """The suite's two tables as the Markdown page the performance docs include: what
    was measured, when, at which revision and on what machine."""
    lines = [f"Measured by `tox -e benchmark` on {when} at revision `{revision}` ({machine}); "
             "medians of the sides timed in turn in one run.", ""]
    if throughput:
        lines += [f"**Insertion + deletion throughput over TorchCAM's**, quiet and beside {load} "
                  f"CPU-bound process{'es' if load != 1 else ''}:", "",
                  "| model | engine | quiet | beside a busy process | forward batch "
                  "(quiet / busy) |", "|---|---|---|---|---|"]
        for (model, engine), by in throughput.items():
            q, lo = by.get("quiet"), by.get("loaded")
            lines.append(f"| {model} | {engine} | {f'{q[0]:.2f}×' if q else '—'} | "
                         f"{f'{lo[0]:.2f}×' if lo else '—'} | {q[1] if q else '—'} / "
                         f"{lo[1] if lo else '—'} |")
        lines.append("")
    lines += ["**Every pair measured** (measured / reference; below 1: ours faster):", "",
              "| pair | measured ms | reference ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {p} | {1e3 * a:.2f} | {1e3 * b:.2f} | {a / b:.2f} |" for p, a, b in pairs]
    return "\n".join(lines) + "\n"


def _revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables: the last thing shown
def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not PAIRS:  # benchmarks disabled (plain test runs): nothing was measured
        return
    if REPORT and not QUICK:
        from harness import safeio

        text = markdown_report(PAIRS, THROUGHPUT, when=time.strftime("%Y-%m-%d"),
                               revision=_revision(), machine=_machine(), load=LOAD_PROCESSES)
        safeio.write_text(Path(REPORT), text)
        terminalreporter.write_line(f"tables written to {REPORT} (the performance page)")
    terminalreporter.section("attnbench speed ratios (medians, side by side in this run)")
    for line in summary_table(PAIRS):
        terminalreporter.write_line(line)
    if THROUGHPUT:
        terminalreporter.section("insertion + deletion throughput over TorchCAM "
                                 f"(quiet, and beside {LOAD_PROCESSES} CPU-bound "
                                 f"process{'es' if LOAD_PROCESSES != 1 else ''})")
        for line in throughput_table(THROUGHPUT):
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

"""Explanation cost relative to a plain forward pass, and insertion/deletion throughput
relative to the plain batched forward passes the metric needs. Ratios are measured side
by side in the same process; nothing asserts an absolute time."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.conftest import median_seconds, record_ratio, rounds
from harness import data
from harness import device as dev
from methods import METHODS
from metrics import causal


def _batch(split: data.Split, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = next(iter(DataLoader(split.dataset, batch_size=n)))
    return b["image"], b["label"]


@pytest.mark.parametrize("name", METHODS.names())
def test_explain_vs_forward(benchmark, name: str, eval_model: Callable[[str], torch.nn.Module],
                            bench_split: data.Split) -> None:
    model = eval_model(name)
    x, y = _batch(bench_split, 64)
    with torch.no_grad():
        fwd = median_seconds(lambda: model(x))
        benchmark.group = "explain / forward (batch 64)"
        sal = benchmark(lambda: model.explain(x, y))
    assert sal.shape == (64, 1, 64, 64)
    r = record_ratio(benchmark, f"{name}: explain / forward", fwd)
    assert r is None or r > 0


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_causal_vs_plain_forwards(benchmark, mode: str,
                                  eval_model: Callable[[str], torch.nn.Module],
                                  bench_split: data.Split) -> None:
    model = eval_model("baseline")
    x, _ = _batch(bench_split, 16)
    sal = torch.rand(16, 64, 64)
    cls = torch.zeros(16, dtype=torch.long)
    n = causal.n_steps(64, 64, 64)
    total = 16 * (n + 1)
    fb = 256  # forward batch of both sides
    fake = dev.channels_last(torch.randn(fb, 3, 64, 64))

    def logits(z: torch.Tensor) -> torch.Tensor:
        return model(dev.channels_last(z)).logits

    def plain() -> None:
        with torch.no_grad():
            for lo in range(0, total, fb):
                logits(fake[: min(fb, total - lo)])

    ref = median_seconds(plain, repeats=3)
    benchmark.group = "causal curves / plain forwards (16 images x 65 steps)"
    curves = benchmark(lambda: causal.causal_curves(model=logits, images=x, saliency=sal,
                                                    classes=cls, mode=mode, step=64,
                                                    batch_size=fb,
                                                    substrate="blur" if mode == "insertion"
                                                    else "zero"))
    assert curves.shape == (16, n + 1)
    r = record_ratio(benchmark, f"{mode}: causal curves / plain forwards", ref)
    assert r is None or r > 0


#: (method, reference method) pairs whose training-step cost the papers compare (MSABN:
#: about 2x ABN; discriminative attention: its objective's extra gradient passes)
TRAIN_PAIRS = [("abn", "baseline"), ("msabn", "abn"), ("msabn-puzzle", "msabn"),
               ("discattn-ch", "baseline"), ("discattn-px", "baseline"),
               ("discattn-gradcam", "baseline")]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
@pytest.mark.parametrize(("name", "reference"), TRAIN_PAIRS)
def test_training_step_vs_reference(benchmark, name: str, reference: str, precision: str,
                                    bench_cfg, bench_split: data.Split) -> None:
    """One optimisation step (batch 64, the default preset) relative to the reference
    method's, side by side."""
    from harness import train

    cpu = torch.device("cpu")
    batch = dev.to_device(next(iter(DataLoader(bench_split.dataset, batch_size=64))), cpu)

    def stepper(method: str) -> Callable[[], object]:
        model = dev.prepare(train.build_method(method, bench_cfg, bench_split), cpu).train()
        opts = model.configure_optimizers(bench_cfg.train)

        def step() -> object:
            with dev.autocast(cpu, precision):
                return model.training_step(batch, opts)

        return step

    ref = median_seconds(stepper(reference), repeats=3)
    benchmark.group = f"training step / reference ({dev.resolve_precision(precision, cpu)})"
    logs = benchmark.pedantic(stepper(name), rounds=rounds(3), warmup_rounds=1)
    assert logs and all(math.isfinite(v) for v in logs.values())
    record_ratio(benchmark, f"{name} / {reference} training step "
                            f"({dev.resolve_precision(precision, cpu)})", ref)

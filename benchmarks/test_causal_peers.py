"""Insertion + deletion against TorchCAM's ``DeletionInsertionMetric`` and against the
bare forward passes both need, side by side in one process (in interleaved rounds),
on identical maps and images: one row of pixels per step, softmax of the logits, zero
substrate for both curves (so the AUCs must agree). ``ATTNBENCH_BENCH_IMAGES`` sets the image count
(default 64; 8 in the quick mode).

Every comparison runs twice: on a quiet machine, and ``loaded``, with a competing
CPU-bound process (:func:`benchmarks.conftest.competing_load`) beside both sides from
the choice of our forward batch to the last timing. Ours runs as the evaluator runs it:
the forward batch tuned while the passes run (a tuner of its own per scenario, so under
load it is found under load), or for ``--compile`` chosen up front."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.conftest import (
    QUICK,
    competing_load,
    interleaved_medians,
    record_pair,
    record_throughput,
)
from harness import backbones, data, fold
from metrics import causal, tuning
from metrics.tuning import BatchTuner

N_IMAGES = int(os.environ.get("ATTNBENCH_BENCH_IMAGES", "8" if QUICK else "64"))
#: TorchCAM's default forward batch (the project's is chosen per model and device)
TORCHCAM_BATCH = 32


class Logits(nn.Module):
    def __init__(self, backbone: backbones.SplitBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def _model(name: str, num_classes: int) -> Logits:
    torch.manual_seed(0)
    return Logits(backbones.build(name, num_classes)).eval()


@pytest.fixture(scope="module", params=["cifar-resnet8", "resnet18"])
def setup(request: pytest.FixtureRequest, bench_split: data.Split
          ) -> tuple[str, Logits, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(name, model, images, maps [B,H,W] (TorchCAM's CAM, resized as it resizes),
    predicted classes)."""
    from torchcam.methods import CAM

    model = _model(request.param, bench_split.info.num_classes)
    x = next(iter(DataLoader(bench_split.dataset, batch_size=N_IMAGES)))["image"]
    bb = model.backbone
    with CAM(model, target_layer=bb.last_stage, fc_layer=bb.fc,
             input_shape=tuple(x.shape[1:])) as extractor, torch.no_grad():
        scores = model(x)
        pred = scores.argmax(1)
        (cam,) = extractor(pred.tolist(), scores)
    sal = nn.functional.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear",
                                    align_corners=False)[:, 0]
    return request.param, model, x, sal, pred


def _torchcam_metric(model: Logits, sal: torch.Tensor) -> object:
    """TorchCAM's metric at its defaults (forward batch 32) with its CAM extractor on
    the same layer: it computes the same maps as ``setup`` (CAM of the predicted class,
    min-max normalised, bilinear to the input), one forward pass more than ours."""
    from torchcam.methods import CAM
    from torchcam.metrics import DeletionInsertionMetric

    bb = model.backbone
    extractor = CAM(model, target_layer=bb.last_stage, fc_layer=bb.fc,
                    input_shape=(3, *sal.shape[-2:]))
    w = sal.shape[-1]
    return DeletionInsertionMetric(extractor, functools.partial(torch.softmax, dim=-1),
                                   steps=sal[0].numel() // w, batch_size=TORCHCAM_BATCH)


def _ours(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sal: torch.Tensor,
          cls: torch.Tensor, batch: int | BatchTuner, streams: int = 1
          ) -> tuple[torch.Tensor, torch.Tensor]:
    w = x.shape[-1]
    ins, dele = (causal.causal_curves(model, x, sal, cls, mode=mode, step=w, substrate="zero",
                                      batch_size=batch, streams=streams)
                 for mode in ("insertion", "deletion"))
    return causal.auc(ins), causal.auc(dele)


def _tuner(sample: torch.Tensor, streams: int) -> BatchTuner:
    """A tuner as the evaluator makes one for a model kind."""
    sizes = tuning.candidates(sample, streams=streams)
    return BatchTuner(sizes, tuning.start_size(sizes, sample.device))


def _torchcam_run(model: Logits, sal: torch.Tensor, x: torch.Tensor
                  ) -> Callable[[], dict[str, float]]:
    theirs = _torchcam_metric(model, sal)

    def run() -> dict[str, float]:
        theirs.reset()  # type: ignore[attr-defined]
        # TorchCAM computes its own CAM of the predicted class: the same maps as ``sal``
        theirs.update(x)  # type: ignore[attr-defined]
        return theirs.summary()  # type: ignore[attr-defined, no-any-return]

    return run


def _batch_used(tuner: BatchTuner | int, before: dict[int, int]) -> str:
    if isinstance(tuner, int):
        return str(tuner)
    used = tuning.summary(before, tuner.usage())
    return str(used.get("forward_batch", tuner.current))


LOADS = ["quiet", "loaded"]


@pytest.mark.parametrize("load", LOADS)
def test_insertion_deletion_vs_torchcam(benchmark, setup, load: str) -> None:  # type: ignore[no-untyped-def]
    name, model, x, sal, pred = setup
    if getattr(benchmark, "disabled", False):  # a plain test run: the same checks, small
        if load == "loaded":
            pytest.skip("benchmarks disabled: the quiet run checks the numbers")
        x, sal, pred = x[:2], sal[:2], pred[:2]
    b, _, h, w = x.shape
    n = causal.n_steps(h, w, w)
    total = 2 * b * (n + 1)  # the forwards of the two curves
    with competing_load(load == "loaded"):
        # as the evaluator scores: batch norm folded into the convolutions (eval mode
        # only, the same outputs up to float rounding), as many passes at once as the
        # evaluator runs (eval.streams) and the forward batch tuned while they run
        scoring = fold.folded(model)
        streams = tuning.choose_streams(tuning.START["cpu"], x[0])
        tuner = _tuner(x[0], streams)
        benchmark.extra_info["streams"] = streams
        torchcam_run = _torchcam_run(model, sal, x)

        def ours() -> tuple[torch.Tensor, torch.Tensor]:  # as the evaluator runs it
            return _ours(scoring, x, sal, pred, tuner, streams)

        def one_stream() -> tuple[torch.Tensor, torch.Tensor]:
            return _ours(scoring, x, sal, pred, tuner)

        benchmark.group = f"insertion + deletion, {b} images x {n + 1} steps ({name}, {load})"
        ins, dele = benchmark.pedantic(ours, rounds=1, iterations=1)
        ref = torchcam_run()
        assert abs(float(ins.mean()) - ref["insertion_auc"]) <= 1e-5
        assert abs(float(dele.mean()) - ref["deletion_auc"]) <= 1e-5
        one = one_stream()
        assert float((ins - one[0]).abs().max()) <= 1e-6
        assert float((dele - one[1]).abs().max()) <= 1e-6
        if getattr(benchmark, "disabled", False):  # a plain test run on two images
            return
        fb = tuner.current
        fake = torch.randn(fb, *x.shape[1:])

        def plain(net: nn.Module) -> Callable[[], None]:
            def run() -> None:  # the same number of forwards at the batch in use
                with torch.inference_mode():
                    for lo in range(0, total, fb):
                        net(fake[: min(fb, total - lo)])
            return run

        before = tuner.usage()
        t = interleaved_medians({"ours": ours, "one stream": one_stream,
                                 "TorchCAM": torchcam_run, "plain": plain(scoring),
                                 "plain model": plain(model)})
    used = _batch_used(tuner, before)
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    benchmark.extra_info["forward_batch"] = used
    print(f"\n{name} ({load}): forward batch {used}, {streams} streams")
    r_peer = record_pair(f"{name}: ours / TorchCAM DeletionInsertion ({load})", t["ours"],
                         t["TorchCAM"])
    record_pair(f"{name}: ours / plain forwards of the scored copy ({load})", t["ours"],
                t["plain"])
    record_pair(f"{name}: ours, one stream / TorchCAM DeletionInsertion ({load})",
                t["one stream"], t["TorchCAM"])
    record_pair(f"{name}: TorchCAM / plain forwards of the model ({load})", t["TorchCAM"],
                t["plain model"])
    record_throughput(name, "eager", load, t["TorchCAM"] / t["ours"], used)
    print(f"{name} ({load}): throughput, ours / TorchCAM = {1 / r_peer:.2f}x")


@pytest.mark.parametrize("load", LOADS)
@pytest.mark.parametrize("engine", ["compile", "onnxruntime"])
def test_insertion_deletion_engines_vs_torchcam(benchmark, setup, engine: str, load: str) -> None:  # type: ignore[no-untyped-def]
    """``--compile`` (the scoring copy through torch.compile, at one batch chosen up
    front, one stream) and ``--engine onnxruntime`` (the scoring copy exported to ONNX
    with a free batch dimension, fp32; the batch tuned while the passes run, passes at
    once as the evaluator runs them), against TorchCAM at its defaults and against the
    engine's own plain forwards; the AUCs agree with TorchCAM's and with the eager ones
    within 1e-5."""
    if getattr(benchmark, "disabled", False):  # compiling takes tens of seconds
        pytest.skip("benchmarks disabled: tests/test_evaluate_compile.py checks the numbers")
    from harness import device as dev

    name, model, x, sal, pred = setup
    b, _, h, w = x.shape
    n = causal.n_steps(h, w, w)
    total = 2 * b * (n + 1)
    with competing_load(load == "loaded"):
        scoring = fold.folded(model)
        batch: int | BatchTuner
        if engine == "onnxruntime":
            pytest.importorskip("onnxruntime")
            # the plain forwards one at a time with every thread; the curves as the
            # evaluator computes them, several passes at once with a share of the threads
            streams = tuning.choose_streams(tuning.START["cpu"], x[0])
            batch = _tuner(x[0], streams)
            whole = dev.onnx_logits(scoring, batch.current, x[0])
            compiled = dev.onnx_logits(scoring, batch.current, x[0],
                                       threads=causal.stream_threads(streams))
        else:  # as the evaluator: one shape chosen up front, one stream
            streams = 1
            batch = tuning.choose_batch(scoring, x[0], key=(name, "folded", load))
            whole = compiled = dev.compiled_logits(scoring, batch)
        benchmark.extra_info["streams"] = streams
        torchcam_run = _torchcam_run(model, sal, x)

        def ours() -> tuple[torch.Tensor, torch.Tensor]:
            return _ours(compiled, x, sal, pred, batch, streams)

        eager = _ours(scoring, x, sal, pred, 32)
        benchmark.group = (f"insertion + deletion {engine}, {b} images x {n + 1} steps "
                           f"({name}, {load})")
        ours()  # the first call compiles (or warms up the session)
        ins, dele = benchmark.pedantic(ours, rounds=1, iterations=1)
        ref = torchcam_run()
        assert abs(float(ins.mean()) - ref["insertion_auc"]) <= 1e-5
        assert abs(float(dele.mean()) - ref["deletion_auc"]) <= 1e-5
        assert float((ins - eager[0]).abs().max()) <= 1e-5
        assert float((dele - eager[1]).abs().max()) <= 1e-5
        fb = batch if isinstance(batch, int) else batch.current
        fake = torch.randn(fb, *x.shape[1:])

        def plain() -> None:
            with torch.inference_mode():
                for lo in range(0, total, fb):
                    whole(fake[: min(fb, total - lo)])

        before = batch.usage() if isinstance(batch, BatchTuner) else {}
        t = interleaved_medians({"ours": ours, "TorchCAM": torchcam_run, "plain": plain})
    used = _batch_used(batch, before)
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    benchmark.extra_info["forward_batch"] = used
    r_peer = record_pair(f"{name}: ours {engine} / TorchCAM DeletionInsertion ({load})",
                         t["ours"], t["TorchCAM"])
    record_pair(f"{name}: ours {engine} / plain {engine} forwards ({load})", t["ours"],
                t["plain"])
    record_throughput(name, engine, load, t["TorchCAM"] / t["ours"], used)
    print(f"{name} ({load}): throughput, ours {engine} / TorchCAM = {1 / r_peer:.2f}x")

"""Insertion + deletion against TorchCAM's ``DeletionInsertionMetric`` and against the
bare forward passes both need, side by side in one process (in interleaved rounds),
on identical maps and images: one row of pixels per step, softmax of the logits, zero
substrate for both curves (so the AUCs must agree). ``ATTNBENCH_BENCH_IMAGES`` sets the image count
(default 64; 8 in the quick mode)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.conftest import QUICK, interleaved_medians, record_pair
from harness import backbones, data, fold
from metrics import causal

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
          cls: torch.Tensor, batch: int, streams: int = 1
          ) -> tuple[torch.Tensor, torch.Tensor]:
    w = x.shape[-1]
    ins, dele = (causal.causal_curves(model, x, sal, cls, mode=mode, step=w, substrate="zero",
                                      batch_size=batch, streams=streams)
                 for mode in ("insertion", "deletion"))
    return causal.auc(ins), causal.auc(dele)


def test_insertion_deletion_vs_torchcam(benchmark, setup) -> None:  # type: ignore[no-untyped-def]
    name, model, x, sal, pred = setup
    if getattr(benchmark, "disabled", False):  # a plain test run: the same checks, small
        x, sal, pred = x[:2], sal[:2], pred[:2]
    b, _, h, w = x.shape
    n = causal.n_steps(h, w, w)
    total = 2 * b * (n + 1)  # the forwards of the two curves
    # as the evaluator scores: batch norm folded into the convolutions (eval mode only,
    # the same outputs up to float rounding), the forward batch chosen for the model and
    # as many passes at once as the evaluator runs (eval.streams)
    scoring = fold.folded(model)
    fb = causal.choose_batch(scoring, x[0], key=(name, "folded"))
    streams = causal.choose_streams(fb, x[0])
    benchmark.extra_info["forward_batch"] = fb
    benchmark.extra_info["streams"] = streams
    print(f"\n{name}: forward batch {fb}, {streams} streams")
    fake = torch.randn(fb, *x.shape[1:])

    def plain(net: nn.Module) -> Callable[[], None]:
        def run() -> None:  # the same number of forwards at the same batch
            with torch.inference_mode():
                for lo in range(0, total, fb):
                    net(fake[: min(fb, total - lo)])
        return run

    theirs = _torchcam_metric(model, sal)

    def torchcam_run() -> dict[str, float]:
        theirs.reset()  # type: ignore[attr-defined]
        # TorchCAM computes its own CAM of the predicted class: the same maps as ``sal``
        theirs.update(x)  # type: ignore[attr-defined]
        return theirs.summary()  # type: ignore[attr-defined, no-any-return]

    def ours() -> tuple[torch.Tensor, torch.Tensor]:  # as the evaluator runs it
        return _ours(scoring, x, sal, pred, fb, streams)

    def one_stream() -> tuple[torch.Tensor, torch.Tensor]:
        return _ours(scoring, x, sal, pred, fb)

    benchmark.group = f"insertion + deletion, {b} images x {n + 1} steps ({name})"
    ins, dele = benchmark.pedantic(ours, rounds=1, iterations=1)
    ref = torchcam_run()
    assert abs(float(ins.mean()) - ref["insertion_auc"]) <= 1e-5
    assert abs(float(dele.mean()) - ref["deletion_auc"]) <= 1e-5
    one = one_stream()
    assert float((ins - one[0]).abs().max()) <= 1e-6
    assert float((dele - one[1]).abs().max()) <= 1e-6
    if getattr(benchmark, "disabled", False):  # a plain test run on two images: no timing
        return
    t = interleaved_medians({"ours": ours, "one stream": one_stream,
                             "TorchCAM": torchcam_run, "plain": plain(scoring),
                             "plain model": plain(model)})
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    r_peer = record_pair(f"{name}: ours / TorchCAM DeletionInsertion", t["ours"],
                         t["TorchCAM"])
    record_pair(f"{name}: ours / plain forwards of the scored copy", t["ours"], t["plain"])
    record_pair(f"{name}: ours, one stream / TorchCAM DeletionInsertion", t["one stream"],
                t["TorchCAM"])
    record_pair(f"{name}: TorchCAM / plain forwards of the model", t["TorchCAM"],
                t["plain model"])
    print(f"{name}: throughput, ours / TorchCAM = {1 / r_peer:.2f}x")


@pytest.mark.parametrize("engine", ["compile", "onnxruntime"])
def test_insertion_deletion_engines_vs_torchcam(benchmark, setup, engine: str) -> None:  # type: ignore[no-untyped-def]
    """``--compile`` (the scoring copy through torch.compile, one shape) and
    ``--engine onnxruntime`` (the scoring copy exported to ONNX, fp32; passes at once as
    the evaluator runs them), against TorchCAM at its defaults and against the engine's
    own plain forwards; the AUCs agree with TorchCAM's and with the eager ones within
    1e-5."""
    if getattr(benchmark, "disabled", False):  # compiling takes tens of seconds
        pytest.skip("benchmarks disabled: tests/test_evaluate_compile.py checks the numbers")
    from harness import device as dev

    name, model, x, sal, pred = setup
    b, _, h, w = x.shape
    n = causal.n_steps(h, w, w)
    total = 2 * b * (n + 1)
    scoring = fold.folded(model)
    fb = causal.choose_batch(scoring, x[0], key=(name, "folded"))
    streams = 1  # as the evaluator: compiled kernels keep their thread count
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
        # the plain forwards one at a time with every thread; the curves as the evaluator
        # computes them, several passes at once with a share of the threads each
        whole = dev.onnx_logits(scoring, fb, x[0])
        streams = causal.choose_streams(fb, x[0])
        compiled = dev.onnx_logits(scoring, fb, x[0], threads=causal.stream_threads(streams))
    else:
        whole = compiled = dev.compiled_logits(scoring, fb)
    benchmark.extra_info["streams"] = streams
    fake = torch.randn(fb, *x.shape[1:])

    def plain() -> None:
        with torch.inference_mode():
            for lo in range(0, total, fb):
                whole(fake[: min(fb, total - lo)])

    theirs = _torchcam_metric(model, sal)

    def torchcam_run() -> dict[str, float]:
        theirs.reset()  # type: ignore[attr-defined]
        theirs.update(x)  # type: ignore[attr-defined]
        return theirs.summary()  # type: ignore[attr-defined, no-any-return]

    def ours() -> tuple[torch.Tensor, torch.Tensor]:
        return _ours(compiled, x, sal, pred, fb, streams)

    eager = _ours(scoring, x, sal, pred, fb)
    benchmark.group = f"insertion + deletion {engine}, {b} images x {n + 1} steps ({name})"
    ours()  # the first call compiles (or warms up the session)
    ins, dele = benchmark.pedantic(ours, rounds=1, iterations=1)
    ref = torchcam_run()
    assert abs(float(ins.mean()) - ref["insertion_auc"]) <= 1e-5
    assert abs(float(dele.mean()) - ref["deletion_auc"]) <= 1e-5
    assert float((ins - eager[0]).abs().max()) <= 1e-5
    assert float((dele - eager[1]).abs().max()) <= 1e-5
    t = interleaved_medians({"ours": ours, "TorchCAM": torchcam_run, "plain": plain})
    benchmark.extra_info.update({f"median_s {k}": v for k, v in t.items()})
    r_peer = record_pair(f"{name}: ours {engine} / TorchCAM DeletionInsertion", t["ours"],
                         t["TorchCAM"])
    record_pair(f"{name}: ours {engine} / plain {engine} forwards", t["ours"], t["plain"])
    print(f"{name}: throughput, ours {engine} / TorchCAM = {1 / r_peer:.2f}x")

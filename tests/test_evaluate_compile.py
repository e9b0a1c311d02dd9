"""``--compile`` (``eval.compile``) and ``--engine onnxruntime`` (``eval.engine``): the
causal metrics through torch.compile of the scoring copy, or through ONNX Runtime,
give the eager AUCs within 1e-5, and the engines see one shape only. Several
forward passes at once (``eval.streams``) give the one-stream AUCs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness import config, data, train
from harness import device as dev
from harness.evaluate import RowSpec, evaluate

CPU = torch.device("cpu")


def test_compiled_logits_pads_to_one_shape() -> None:
    shapes: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))  # runs while tracing: once per compiled shape
        return x.flatten(1).sum(1, keepdim=True) * torch.arange(1, 4)

    run = dev.compiled_logits(fn, 4)
    x = torch.randn(10, 2, 3)
    eager = x.flatten(1).sum(1, keepdim=True) * torch.arange(1, 4)
    for part in (x[:4], x[:3], x[:1], x):  # exact, shorter (padded), longer (split)
        torch.testing.assert_close(run(part), eager[: len(part)])
    assert shapes and set(shapes) == {(4, 2, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("engine", [{"compile": True}, {"engine": "onnxruntime"}],
                         ids=["compile", "onnxruntime"])
def test_engines_give_the_eager_aucs(engine: dict[str, object], smoke_cfg: config.RunConfig,
                                     smoke_test: data.Split) -> None:
    if engine.get("engine") == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model = train.build_method("abn", train.method_config("abn", smoke_cfg), smoke_test)
    ecfg = dataclasses.replace(smoke_cfg.eval, causal_n=6, forward_batch=16)
    only = {"insertion_auc", "deletion_auc", "comb_insertion_auc"}
    comb = torch.zeros(len(smoke_test), dtype=torch.bool)
    comb[:4] = True
    kw = dict(progress=False, only=only, parts=(), comb_subset=comb)
    eager = evaluate(RowSpec(model, "abn"), smoke_test, ecfg, CPU, **kw)  # type: ignore[arg-type]
    comp = evaluate(RowSpec(model, "abn"), smoke_test, dataclasses.replace(ecfg, **engine), CPU,
                    **kw)  # type: ignore[arg-type]
    assert set(eager.values) == set(comp.values) == only
    for k in only:
        a, b = eager.per_image[k], comp.per_image[k]
        assert len(a.scores) == len(b.scores) > 0 and (a.ids == b.ids).all()
        assert abs(a.scores - b.scores).max() <= 1e-5, k
        assert abs(eager.curves[k] - comp.curves[k]).max() <= 1e-5, k


@pytest.mark.parametrize("change, message", [
    ({"engine": "tensorrt"}, "eval.engine must be one of auto, torch, onnxruntime"),
    ({"engine": "onnxruntime", "compile": True}, "exclude each other"),
    ({"streams": -1}, "eval.streams must be >= 0"),
    ({"streams": 2, "compile": True}, "eval.streams > 1 and --compile exclude each other"),
])
def test_engine_choices_are_checked(change: dict[str, object], message: str,
                                    smoke_cfg: config.RunConfig,
                                    smoke_test: data.Split) -> None:
    from harness.errors import UserError

    model = train.build_method("baseline", smoke_cfg, smoke_test)
    ecfg = dataclasses.replace(smoke_cfg.eval, causal_n=2, forward_batch=8, **change)
    with pytest.raises(UserError, match=message):
        evaluate(RowSpec(model, "baseline"), smoke_test, ecfg, CPU, progress=False, parts=())


def test_auto_engine_is_onnxruntime_on_a_cpu_in_fp32_where_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    installed = importlib.util.find_spec("onnxruntime") is not None
    assert dev.resolve_engine("auto", cpu, "fp32", False) == (
        "onnxruntime" if installed else "torch")
    assert dev.resolve_engine("auto", cpu, "bf16", False) == "torch"
    assert dev.resolve_engine("auto", cpu, "fp32", True) == "torch"  # --compile
    assert dev.resolve_engine("auto", cuda, "fp32", False) == "torch"
    assert dev.resolve_engine("torch", cpu, "fp32", False) == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert dev.resolve_engine("auto", cpu, "fp32", False) == "torch"  # not installed


def test_onnxruntime_refuses_lower_precision(smoke_cfg: config.RunConfig,
                                             smoke_test: data.Split) -> None:
    from harness.errors import UserError

    model = train.build_method("baseline", smoke_cfg, smoke_test)
    ecfg = dataclasses.replace(smoke_cfg.eval, causal_n=2, forward_batch=8,
                               engine="onnxruntime")
    with pytest.raises(UserError, match="computes in fp32"):
        evaluate(RowSpec(model, "baseline"), smoke_test, ecfg, CPU, progress=False, parts=(),
                 precision="bf16")


def test_onnx_logits_match_eager() -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5)).eval()
    run = dev.onnx_logits(net, 4, torch.zeros(3, 8, 8))
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
    for part in (x[:4], x[:1], x):
        torch.testing.assert_close(run(part), ref[: len(part)], rtol=0, atol=1e-5)
    # one thread a call, called from two threads at once (the causal metrics' streams)
    from concurrent.futures import ThreadPoolExecutor

    single = dev.onnx_logits(net, 4, torch.zeros(3, 8, 8), threads=1)
    parts = [x[:4], x[2:6]] * 4
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(single, parts))
    for part, out, lo in zip(parts, outs, [0, 2] * 4, strict=True):
        torch.testing.assert_close(out, ref[lo : lo + len(part)], rtol=0, atol=1e-5)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_streams_give_the_one_stream_aucs(engine: str, smoke_cfg: config.RunConfig,
                                          smoke_test: data.Split) -> None:
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model = train.build_method("abn", train.method_config("abn", smoke_cfg), smoke_test)
    ecfg = dataclasses.replace(smoke_cfg.eval, causal_n=5, forward_batch=16, engine=engine)
    only = {"insertion_auc", "deletion_auc"}
    kw = dict(progress=False, only=only, parts=())
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = evaluate(RowSpec(model, "abn"), smoke_test,
                       dataclasses.replace(ecfg, streams=1), CPU, **kw)  # type: ignore[arg-type]
        two = evaluate(RowSpec(model, "abn"), smoke_test,
                       dataclasses.replace(ecfg, streams=2), CPU, **kw)  # type: ignore[arg-type]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for k in only:
        a, b = one.per_image[k], two.per_image[k]
        assert len(a.scores) == len(b.scores) == 5 and (a.ids == b.ids).all()
        assert abs(a.scores - b.scores).max() <= 1e-6, k
        assert abs(one.curves[k] - two.curves[k]).max() <= 1e-6, k


def test_causal_streams_resolution(smoke_cfg: config.RunConfig) -> None:
    from harness.evaluate import causal_streams
    from metrics import tuning

    ecfg = dataclasses.replace(smoke_cfg.eval, forward_batch=16)
    size = torch.zeros(3, 64, 64)
    assert causal_streams(ecfg, CPU, size) == tuning.choose_streams(16, size)
    # no forward batch set: streams for the tuner's first size
    assert causal_streams(dataclasses.replace(ecfg, forward_batch=0), CPU, size) == \
        tuning.choose_streams(tuning.START["cpu"], size)
    assert causal_streams(dataclasses.replace(ecfg, streams=3), CPU, size) == 3
    assert causal_streams(dataclasses.replace(ecfg, compile=True), CPU, size) == 1
    assert causal_streams(dataclasses.replace(ecfg, compile=True, streams=1), CPU, size) == 1


class _Shifted(torch.nn.Module):
    """Another model's logits: what a wrong trace would export."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 1


def test_onnx_export_falls_back_when_the_traced_graph_is_wrong(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast TorchScript export is checked against the model at another batch than
    traced; a graph that does not reproduce the model's logits is exported again by
    torch.export, and one that does is kept."""
    pytest.importorskip("onnxruntime")
    used: list[bool] = []
    real = dev._export_onnx

    def wrong_trace(model: torch.nn.Module, x: torch.Tensor, path: str, *,
                    dynamo: bool) -> None:
        used.append(dynamo)
        real(model if dynamo else _Shifted(model), x, path, dynamo=dynamo)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).eval()
    monkeypatch.setattr(dev, "_export_onnx", wrong_trace)
    run = dev.onnx_logits(net, 4, torch.zeros(3, 5, 5))
    assert used == [False, True]
    x = torch.randn(7, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x), rtol=0, atol=1e-5)
    used.clear()
    monkeypatch.setattr(dev, "_export_onnx", lambda m, x, p, *, dynamo: (
        used.append(dynamo), real(m, x, p, dynamo=dynamo)))
    dev.onnx_logits(net, 4, torch.zeros(3, 5, 5))
    assert used == [False]


def test_an_exported_graph_is_judged_on_the_logits_scale() -> None:
    """Rounding grows with the values a network carries: logits of order 1e9 (an
    untrained deep ResNet) that differ by hundreds after a reordered sum, a logit near 0
    among them too, are the same logits; a shift of 1e-3 of the scale is not."""
    want = torch.tensor([[1.2e9, -3.0e8, 5.0]])
    assert dev._same_logits(want + torch.tensor([[480.0, -384.0, 300.0]]), want)
    assert not dev._same_logits(want + torch.tensor([[0.0, 0.0, 2e6]]), want)
    small = torch.tensor([[0.5, -0.2]])
    assert dev._same_logits(small + 5e-4, small)
    assert not dev._same_logits(small + 1e-2, small)
    over = torch.tensor([[float("nan"), float("inf"), 1.0]])
    assert dev._same_logits(over.clone(), over)
    assert not dev._same_logits(torch.tensor([[float("nan"), float("-inf"), 1.0]]), over)
    assert not dev._same_logits(torch.tensor([[0.0, float("inf"), 1.0]]), over)


def test_non_finite_maps_of_misclassified_images_are_scored_as_zero(
        smoke_cfg: config.RunConfig, smoke_test: data.Split,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A method whose maps break (NaN) is scored on zeros with a warning, also where the
    causal subset explains a misclassified image again for its predicted class."""
    torch.manual_seed(0)
    model = train.build_method("cam", train.method_config("cam", smoke_cfg), smoke_test)
    model.eval()
    with torch.no_grad():
        batch = torch.stack([smoke_test.dataset[i]["image"] for i in range(6)])
        labels = torch.tensor([smoke_test.dataset[i]["label"] for i in range(6)])
        assert (model(batch).logits.argmax(1) != labels).any()  # some are misclassified

    def broken(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 1, *x.shape[-2:]), math.nan)

    model.explain = broken  # type: ignore[method-assign]
    ecfg = dataclasses.replace(smoke_cfg.eval, causal_n=6, forward_batch=16)
    out = evaluate(RowSpec(model, "cam"), smoke_test, ecfg, CPU, progress=False,
                   only={"insertion_auc"}, parts=(), comb_subset=None)
    scores = out.per_image["insertion_auc"].scores
    assert len(scores) == 6 and bool(torch.isfinite(torch.as_tensor(scores)).all())
    assert "NaN or inf values" in capsys.readouterr().err

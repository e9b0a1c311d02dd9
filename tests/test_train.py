"""The generic trainer: cache keys, cached reload, resume after an interruption."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness import config, data, train


def test_cache_key_depends_on_what_matters(smoke_cfg: config.RunConfig) -> None:
    k = train.cache_key("abn", smoke_cfg, {})
    assert k == train.cache_key("abn", smoke_cfg, {})
    assert k != train.cache_key("abn", dataclasses.replace(smoke_cfg, seed=1), {})
    assert k != train.cache_key("abn", smoke_cfg, {"mechanism": "multiply"})
    assert k != train.cache_key("baseline", smoke_cfg, {})
    fp32 = dataclasses.replace(smoke_cfg, precision="fp32")
    assert train.cache_key("abn", fp32, {}) != train.cache_key(
        "abn", dataclasses.replace(smoke_cfg, precision="bf16"), {})
    # the method's defaults are part of the key: changing one retrains
    assert train.cache_key("abn", smoke_cfg, {"mechanism": "residual"}) == k
    assert train.resolved_options("msabn-cr", {}) == {
        "lambda_out": "auto", "auto_share": 0.2, "mechanism": "residual"}
    other_eval = dataclasses.replace(smoke_cfg, eval=config.EvalConfig(causal_n=3))
    assert k == train.cache_key("abn", other_eval, {})  # evaluation does not retrain
    # a child's key follows its parent's
    longer = config.with_train_overrides(smoke_cfg, {"epochs": 2})
    assert train.cache_key("cam", smoke_cfg, {}) != train.cache_key("cam", longer, {})


def test_obtain_trains_once_then_loads(smoke_cfg: config.RunConfig, smoke_train: data.Split,
                                       tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    first = train.obtain("abn", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    assert not first.cached and len(first.history) == smoke_cfg.train.epochs
    second = train.obtain("abn", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    assert second.cached
    for (k, a), b in zip(first.method.state_dict().items(),
                         second.method.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    cam = train.obtain("cam", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    base = train.obtain("baseline", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    assert base.cached and cam.train_seconds < 1.0
    for a, b in zip(cam.method.state_dict().values(), base.method.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_interrupted_training_resumes(smoke_cfg: config.RunConfig, smoke_train: data.Split,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.with_train_overrides(smoke_cfg, {"epochs": 2})
    cpu = torch.device("cpu")
    full = train.obtain("baseline", cfg, smoke_train, cpu, None, progress=False)

    from methods.posthoc import Baseline

    calls = {"n": 0}
    orig = Baseline.training_step

    def crash_in_epoch_two(self, batch, opts, run):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > len(smoke_train.dataset) // cfg.train.batch_size:
            raise KeyboardInterrupt
        return orig(self, batch, opts, run)

    monkeypatch.setattr(Baseline, "training_step", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.obtain("baseline", cfg, smoke_train, cpu, tmp_path, progress=False)
    assert list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.pt"))
    monkeypatch.setattr(Baseline, "training_step", orig)
    resumed = train.obtain("baseline", cfg, smoke_train, cpu, tmp_path, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert not list(tmp_path.glob("*.partial"))
    for a, b in zip(full.method.state_dict().values(), resumed.method.state_dict().values(),
                    strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_method_needing_boxes_errors_without_them(smoke_cfg: config.RunConfig,
                                                  smoke_train: data.Split) -> None:
    from harness.errors import UserError
    from methods.base import METHODS

    METHODS.add("needs-boxes-probe", METHODS.get("baseline"), needs_boxes=True)
    try:
        no_boxes = data.Split(smoke_train.dataset,
                              dataclasses.replace(smoke_train.info, has_boxes=False))
        with pytest.raises(UserError, match="needs bounding boxes"):
            train.build_method("needs-boxes-probe", smoke_cfg, no_boxes)
    finally:
        METHODS._entries.pop("needs-boxes-probe")


def test_key_tracks_training_data_not_test_size(smoke_cfg: config.RunConfig,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    k = train.cache_key("abn", smoke_cfg, {})
    more_test = dataclasses.replace(smoke_cfg, dataset_kwargs={**smoke_cfg.dataset_kwargs,
                                                               "n_test": 999})
    assert train.cache_key("abn", more_test, {}) == k
    more_train = dataclasses.replace(smoke_cfg, dataset_kwargs={**smoke_cfg.dataset_kwargs,
                                                                "n_train": 65})
    assert train.cache_key("abn", more_train, {}) != k
    entry = data.DATASETS.entry("cluttered-digits")
    monkeypatch.setitem(entry.meta, "version", entry.meta["version"] + 1)
    assert train.cache_key("abn", smoke_cfg, {}) != k


def test_child_weights_do_not_depend_on_how_the_parent_was_obtained(
        smoke_cfg: config.RunConfig, smoke_train: data.Split, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    fresh = train.obtain("abn-amb", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    (next(tmp_path.glob("abn-amb-*.pt"))).unlink()  # parent cached, child retrained
    again = train.obtain("abn-amb", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    assert not again.cached
    for (k, a), b in zip(fresh.method.state_dict().items(),
                         again.method.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_unreadable_checkpoint_is_retrained(smoke_cfg: config.RunConfig,
                                            smoke_train: data.Split, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cpu = torch.device("cpu")
    train.obtain("baseline", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    ckpt = next(tmp_path.glob("baseline-*.pt"))
    ckpt.write_bytes(b"truncated")
    again = train.obtain("baseline", smoke_cfg, smoke_train, cpu, tmp_path, progress=False)
    assert not again.cached and "unreadable checkpoint" in capsys.readouterr().err
    assert torch.load(ckpt, weights_only=True)["state_dict"]


def test_epoch_milestones() -> None:
    assert train.epoch_milestones((0.5, 0.75), 300) == [150, 225]
    assert train.epoch_milestones((0.5, 0.75), 5) == [3, 4]
    assert train.epoch_milestones((0.5, 0.75), 1) == [1]


def test_precision_resolution_and_autocast() -> None:
    from harness import device as dev
    from harness.errors import UserError

    cpu = torch.device("cpu")
    assert dev.resolve_precision("auto", cpu) == ("bf16" if dev.native_bf16(cpu) else "fp32")
    assert dev.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError, match="--precision"):
        dev.resolve_precision("fp16x", cpu)
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with dev.autocast(cpu, "fp32"):
        assert lin(x).dtype == torch.float32
    with dev.autocast(cpu, "bf16"):
        assert lin(x).dtype == torch.bfloat16

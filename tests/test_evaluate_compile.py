"""``--compile`` (``eval.compile``): the causal metrics through torch.compile of the
scoring copy give the eager AUCs within 1e-5, and the compiled function sees one
shape only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness import config, data, train
from harness import device as dev
from harness.evaluate import evaluate

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
def test_compiled_scoring_gives_the_eager_aucs(smoke_cfg: config.RunConfig,
                                               smoke_test: data.Split) -> None:
    model = train.build_method("abn", train.method_config("abn", smoke_cfg), smoke_test)
    ecfg = dataclasses.replace(smoke_cfg.eval, causal_n=6, forward_batch=16)
    only = {"insertion_auc", "deletion_auc", "comb_insertion_auc"}
    comb = torch.zeros(len(smoke_test), dtype=torch.bool)
    comb[:4] = True
    kw = dict(progress=False, only=only, parts=(), comb_subset=comb)
    eager = evaluate(model, "abn", smoke_test, ecfg, CPU, **kw)  # type: ignore[arg-type]
    comp = evaluate(model, "abn", smoke_test, dataclasses.replace(ecfg, compile=True), CPU,
                    **kw)  # type: ignore[arg-type]
    assert set(eager.values) == set(comp.values) == only
    for k in only:
        a, b = eager.per_image[k], comp.per_image[k]
        assert len(a.scores) == len(b.scores) > 0 and (a.ids == b.ids).all()
        assert abs(a.scores - b.scores).max() <= 1e-5, k
        assert abs(eager.curves[k] - comp.curves[k]).max() <= 1e-5, k

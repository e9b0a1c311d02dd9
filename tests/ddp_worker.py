"""Checks run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        grads OUT.json
    ... tests/ddp_worker.py evaluate OUT.json

``grads``: for every method, one training step of 2 ranks x b images through the DDP
engine against one process's step on the same 2b images (batch norm in eval mode on
both, so that the samples do not interact through batch statistics: the comparison is
of the gradient averaging itself). Writes each method's largest gradient and parameter
difference.

``evaluate``: the sharded evaluation of an untrained model against rank 0's
unsharded one, with a causal subset and a comb subset that only rank 0 holds images
of. Writes the largest per-image score and curve differences.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

import methods  # noqa: F401  (registers methods)
import metrics  # noqa: F401  (registers metrics)
from harness import config, data, distributed, train
from harness.evaluate import RowSpec, evaluate
from methods.base import METHODS

CPU = torch.device("cpu")
PER_RANK = 8


def eval_bn(model: nn.Module) -> nn.Module:
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def batch_of(split: data.Split, idx: list[int]) -> dict[str, Any]:
    view = split.eval_view()
    return default_collate([view[i] for i in idx])


def grads(out: str) -> None:
    world = distributed.current()
    cfg = config.resolve("smoke")
    split = data.build(cfg.dataset, "train", **cfg.dataset_kwargs)
    n = PER_RANK * world.size
    full = batch_of(split, list(range(n)))
    mine = batch_of(split, list(range(world.rank * PER_RANK, (world.rank + 1) * PER_RANK)))
    cases: list[tuple[str, dict[str, Any]]] = [
        (name, {}) for name in METHODS.names() if name != "msabn-cr"]
    cases.append(("discattn-ch", {"create_graph": True}))
    report: dict[str, dict[str, float]] = {}
    for name, options in cases:
        mcfg = train.method_config(name, cfg)
        model = train.build_method(name, mcfg, split, **options)
        model.eval().on_fit_start(split, CPU)  # as the trainer does
        if name == "abn-hk":  # edit every other image (the map term on both paths)
            model.selected = torch.arange(len(split.dataset)) % 2 == 0  # type: ignore[arg-type]
        ref = eval_bn(copy.deepcopy(model))
        eval_bn(model)
        torch.manual_seed(1)
        ref.training_step(full, ref.configure_optimizers(mcfg.train))
        torch.manual_seed(1)
        with distributed.ddp_engine(model, CPU) as run:
            model.training_step(mine, model.configure_optimizers(mcfg.train), run)
        g_ref = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
        g = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        label = name + ("+create_graph" if options else "")
        if set(g) != set(g_ref):
            report[label] = {"grad": float("inf"), "param": float("inf"), "n": len(g)}
            continue
        p_ref = dict(ref.named_parameters())
        report[label] = {
            "grad": max(float((g[k] - g_ref[k]).abs().max()) for k in g),
            "grad_scale": max(float(g_ref[k].abs().max()) for k in g),
            "param": max(float((p - p_ref[k]).abs().max())
                         for k, p in model.named_parameters()),
            "n": len(g)}
    if world.main:
        with open(out, "w") as f:
            json.dump(report, f)


def evaluate_check(out: str) -> None:
    world = distributed.current()
    cfg = config.resolve("smoke")
    test = data.build(cfg.dataset, "test", **cfg.dataset_kwargs)
    ecfg = dataclasses.replace(cfg.eval, causal_n=1, forward_batch=16)  # rank 0 alone
    comb = torch.zeros(len(test), dtype=torch.bool)
    comb[[0, 2, 4]] = True  # images of rank 0 only
    report: dict[str, dict[str, float]] = {}
    for name in ("abn", "baseline"):
        model = train.build_method(name, train.method_config(name, cfg), test).eval()
        kw: dict[str, Any] = dict(progress=False, comb_subset=comb)
        sharded = evaluate(RowSpec(model, name), test, ecfg, CPU, **kw)
        if not world.main:
            continue
        single = evaluate(RowSpec(model, name), test, ecfg, CPU, shard=False, **kw)
        diffs: dict[str, float] = {}
        for k, s in single.per_image.items():
            a = sharded.per_image[k]
            same = (len(a.scores) == len(s.scores) and (a.ids == s.ids).all()
                    and (a.classes == s.classes).all())
            diffs[k] = float(abs(a.scores - s.scores).max()) if same and len(s.scores) else (
                0.0 if same else float("inf"))
            diffs[f"{k}:n"] = float(len(a.scores))
        for k, c in single.curves.items():
            diffs[f"curve:{k}"] = float(abs(sharded.curves[k] - c).max())
        diffs["gallery"] = float(max(abs(sharded.gallery[k] - v).max()
                                     for k, v in single.gallery.items()))
        diffs["columns"] = float(set(single.values) == set(sharded.values))
        report[name] = diffs
    if world.main:
        with open(out, "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    distributed.init("cpu")
    mode, path = sys.argv[1], sys.argv[2]
    {"grads": grads, "evaluate": evaluate_check}[mode](path)
    distributed.finish()

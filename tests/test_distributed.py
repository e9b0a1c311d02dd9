"""Distributed runs: torchrun with 2 gloo processes on CPU against one process.

The torchrun checks live in ``ddp_worker.py`` (gradients of one DDP step of every
method, sharded evaluation) and in the command line itself (a run trained in one
process evaluated by two, and the reverse); the sampler, sharding and batch-norm
helpers are checked in this process with a pretended world.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from harness import distributed, fold
from harness.errors import UserError
from methods.base import METHODS

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def pretend(rank: int, size: int) -> None:
        monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank, size, rank, "gloo"))
    return pretend


def test_global_batches_are_a_shuffling_loaders_batches() -> None:
    """One process: the same batches, in the same order, as DataLoader(shuffle=True,
    drop_last=True) with the same generator (checkpoints trained before keep their
    meaning), the worker seed drawn first in both."""
    data = list(range(37))
    old = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, drop_last=True,
                                      generator=torch.Generator().manual_seed(3))
    new = torch.utils.data.DataLoader(data, generator=torch.Generator().manual_seed(3),
                                      batch_sampler=distributed.GlobalBatches(
                                          37, 8, torch.Generator().manual_seed(3)))
    gen = torch.Generator().manual_seed(3)
    shared = torch.utils.data.DataLoader(data, generator=gen, batch_sampler=distributed
                                         .GlobalBatches(37, 8, gen))
    for _ in range(2):  # two epochs from one generator
        a = [b.tolist() for b in old]
        assert a == [b.tolist() for b in shared]
    assert len(new) == 4 == len(old)


def test_ranks_split_each_global_batch(world) -> None:  # type: ignore[no-untyped-def]
    parts = []
    for rank in (0, 1):
        world(rank, 2)
        parts.append(list(distributed.GlobalBatches(20, 8, torch.Generator().manual_seed(0))))
    world(0, 1)
    whole = list(distributed.GlobalBatches(20, 8, torch.Generator().manual_seed(0)))
    assert len(whole) == 2 and all(len(p) == 2 for p in parts)
    for i, batch in enumerate(whole):
        assert parts[0][i] == batch[:4] and parts[1][i] == batch[4:]


def test_global_batch_must_divide(world) -> None:  # type: ignore[no-untyped-def]
    world(0, 3)
    with pytest.raises(UserError, match="not divisible by the world size 3"):
        distributed.GlobalBatches(20, 8, torch.Generator())


def test_shard_deals_every_image_once(world) -> None:  # type: ignore[no-untyped-def]
    got = []
    for rank in range(3):
        world(rank, 3)
        got += list(distributed.shard(10))
    assert sorted(got) == list(range(10))


def test_one_process_helpers_are_identities() -> None:
    assert distributed.current().size == 1
    assert distributed.share(lambda: 5) == 5
    with distributed.ddp_engine(nn.Linear(2, 2), torch.device("cpu")) as run:
        assert run is distributed.direct and run(lambda: 3) == 3
    assert distributed.mean_over_ranks({"a": 1.0}) == {"a": 1.0}


def test_sync_bn_needs_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--sync-bn needs CUDA"):
        distributed.init("auto", sync_bn=True)
    assert distributed.current().size == 1


def test_sync_batchnorm_shares_state_and_restores_the_originals() -> None:
    """The conversion (checked here without a GPU: only the device type is asked) keeps
    every parameter and statistic shared, so the originals put back hold what the
    synchronised modules trained; other batch-norm kinds are refused."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    originals = [net[1], net[3][1]]
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    ref = net(x)
    with pytest.raises(UserError, match="needs CUDA"):
        distributed.sync_batchnorm(net, torch.device("cpu"))
    restore = distributed.sync_batchnorm(net, torch.device("cuda"))
    synced = [net[1], net[3][1]]
    assert all(type(m) is nn.SyncBatchNorm for m in synced)
    assert synced[0].weight is originals[0].weight
    assert synced[1].running_mean is originals[1].running_mean
    assert torch.equal(net(x), ref)  # eval mode: plain batch norm arithmetic
    with torch.no_grad():
        synced[0].running_mean.add_(1.0)  # as training would update it
        synced[0].weight.mul_(2.0)
    restore()
    assert net[1] is originals[0] and net[3][1] is originals[1]
    assert torch.equal(originals[0].running_mean, synced[0].running_mean)
    torch.testing.assert_close(fold.folded(net)(x), net(x), rtol=1e-5, atol=1e-6)

    class BatchNormAct(nn.BatchNorm2d):
        pass

    with pytest.raises(UserError, match="BatchNorm2d only; this model also has BatchNormAct"):
        distributed.sync_batchnorm(nn.Sequential(BatchNormAct(3)), torch.device("cuda"))


def test_two_ranks_step_as_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """2 ranks x 8 images through DDP give the gradients (and the parameters after
    the step) of 1 process x 16 images, for every method: two optimisers (COT, COMB),
    a frozen extractor (HK), gradients inside the loss (discriminative attention, also
    with create_graph)."""
    out = tmp_path / "grads.json"
    torchrun("tests/ddp_worker.py", "grads", str(out))
    report = json.loads(out.read_text())
    expected = {n for n in METHODS.names() if n != "msabn-cr"} | {"discattn-ch+create_graph"}
    assert set(report) == expected
    for name, r in report.items():
        assert r["n"] > 0, name
        assert r["grad"] <= 2e-5 * max(1.0, r["grad_scale"]), (name, r)
        assert r["param"] <= 1e-6, (name, r)
    # the second-order terms change the gradients: the create_graph case is not a copy
    assert report["discattn-ch+create_graph"]["grad_scale"] != report["discattn-ch"]["grad_scale"]


def test_sharded_evaluation_is_one_process_evaluation(tmp_path: Path) -> None:
    """Per-image scores, ids and classes gathered in image order equal rank 0's
    unsharded evaluation, also where one rank scored no image (a causal subset of one
    image, a comb subset on rank 0's images only)."""
    out = tmp_path / "eval.json"
    torchrun("tests/ddp_worker.py", "evaluate", str(out))
    report = json.loads(out.read_text())
    assert set(report) == {"abn", "baseline"}
    for name, diffs in report.items():
        assert diffs["columns"] == 1.0
        assert diffs["insertion_auc:n"] == 1.0 and diffs["curve:insertion_auc"] == 0.0
        if name == "abn":
            assert diffs["attn_fix_gain_top1:n"] == 3.0
        for k, v in diffs.items():
            if not k.endswith(":n") and k != "columns":
                assert v <= 1e-6, (name, k, v)


def _run(cmd: list[str], **kw: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kw}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def _scores(db: Path) -> pd.DataFrame:
    import sqlite3

    with sqlite3.connect(db) as con:
        return pd.read_sql("select r.row, s.metric, s.pos, s.image_id, s.class, s.score "
                           "from image_scores s join rows r on r.id = s.row_id", con)


def test_torchrun_run_shares_checkpoints_with_one_process(tmp_path: Path) -> None:
    """``torchrun -m harness.run``: a checkpoint trained in one process is evaluated,
    not retrained, by two (same numbers within 1e-6, per image), and one trained by two
    ranks is read by one process; the run records its world size and backend."""
    cache = tmp_path / "cache"
    common = ["--preset", "smoke", "--cache-dir", str(cache), "--no-progress",
              "--set", "eval.forward_batch=32"]
    one = [sys.executable, "-m", "harness.run", *common]
    _run([*one, "--methods", "baseline,abn,abn-cot", "--db", str(tmp_path / "a.sqlite"),
          "--out", str(tmp_path / "a")])
    two = torchrun("-m", "harness.run", *common, "--methods", "baseline,abn,abn-cot",
                   "--db", str(tmp_path / "b.sqlite"), "--out", str(tmp_path / "b"))
    meta = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert meta["run"]["world_size"] == 2 and meta["run"]["backend"] == "gloo"
    assert "2 processes (gloo)" in meta["run"]["protocol"]
    assert all(m["cached"] for m in meta["methods"].values()), two.stdout
    a = pd.read_csv(tmp_path / "a" / "leaderboard.csv")
    b = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    assert list(a["method"]) == list(b["method"])
    cols = [c for c in a.columns if a[c].dtype.kind == "f" and not c.startswith("explain")
            and "seconds" not in c]
    # the CSV prints 6 significant digits: float rounding (thread counts, batch
    # composition) may flip the last one, a step of 1e-6 on a value near 1
    diff = (a[cols] - b[cols]).abs().max()
    assert diff.max() <= 2e-6, diff[diff > 2e-6]
    sa, sb = _scores(tmp_path / "a.sqlite"), _scores(tmp_path / "b.sqlite")
    key = ["row", "metric", "pos"]
    m = sa.merge(sb, on=key, suffixes=("_a", "_b"), validate="one_to_one")
    assert len(m) == len(sa) == len(sb) > 0
    assert (m["image_id_a"] == m["image_id_b"]).all() and (m["class_a"] == m["class_b"]).all()
    assert (m["score_a"] - m["score_b"]).abs().max() <= 1e-6
    # trained by two ranks (its parent abn read from the cache), then read by one
    torchrun("-m", "harness.run", *common, "--methods", "abn-comb",
             "--db", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "c"))
    assert len(list(cache.glob("abn-comb-*.pt"))) == 1
    assert not list(cache.glob("*.partial"))
    _run([*one, "--methods", "abn-comb", "--db", str(tmp_path / "d.sqlite"),
          "--out", str(tmp_path / "d")])
    meta = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert meta["methods"]["abn-comb"]["cached"] is True
    assert meta["run"]["world_size"] == 1
    c = pd.read_csv(tmp_path / "c" / "leaderboard.csv")
    d = pd.read_csv(tmp_path / "d" / "leaderboard.csv")
    assert abs(float(c["top1"].iloc[0]) - float(d["top1"].iloc[0])) == 0.0

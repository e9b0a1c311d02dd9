"""The evaluation cache: what is read from the store and what is computed again."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness import codedigest, config, data, evalcache, run, train
from harness.evaluate import GALLERY, TIMING, RowSpec, evaluate
from harness.store import Store

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> Any:
    cfg = config.resolve("smoke")
    split = data.build(cfg.dataset, "test", **cfg.dataset_kwargs)
    m = train.build_method("abn", cfg, split).eval()
    return m, split, cfg


class Spy:
    """Records which metrics and parts each evaluation computed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[set[str] | None, tuple[str, ...]]] = []

        def spy(*a: Any, **k: Any) -> Any:
            self.calls.append((k.get("only"), k.get("parts", (TIMING, GALLERY))))
            return evaluate(*a, **k)

        monkeypatch.setattr(evalcache, "evaluate", spy)


def _eval(store: Store, m: Any, split: data.Split, ecfg: config.EvalConfig, **kw: Any
          ) -> tuple[Any, dict[str, str], int]:
    row = {k: kw.pop(k) for k in ("explainer", "checkpoint", "weights", "seed") if k in kw}
    args: dict[str, Any] = {"split_key": "split", "progress": False}
    args.update(kw)
    spec = evalcache.RowSpec(m, "abn", **{"checkpoint": "ckpt", **row})
    return evalcache.evaluate_cached(store, spec, split, ecfg, DEVICE, **args)


def _same(a: Any, b: Any, skip: tuple[str, ...] = ("explain_ms", "explain_overhead")) -> None:
    assert set(a.values) == set(b.values)
    for k in a.values:
        if k not in skip:
            assert a.values[k] == b.values[k] or (np.isnan(a.values[k])
                                                  and np.isnan(b.values[k])), k
    for k in a.per_image:
        np.testing.assert_array_equal(a.per_image[k].scores, b.per_image[k].scores)


def test_hits_and_misses(model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, split, cfg = model
    # batches of 8 and 8 causal images: a causal-only evaluation stops after one batch
    ecfg = dataclasses.replace(cfg.eval, timing_batches=1, causal_n=8, batch_size=8)
    spy = Spy(monkeypatch)
    with Store(tmp_path / "db.sqlite") as st:
        def stored(**kw: Any) -> tuple[Any, int]:
            res, keys, hits = _eval(st, m, split, kw.pop("ecfg", ecfg), **kw)
            rid = st.begin_run(meta={}, config={}, argv=[])  # a run per evaluation
            st.add_row(rid, res, eval_keys=keys)
            return res, hits

        first, hits = stored()
        assert hits == 0 and spy.calls[-1] == (set(first.per_image), (TIMING, GALLERY))
        n_parts = len(first.per_image) + 2

        again, hits = stored()
        assert hits == n_parts and len(spy.calls) == 1  # nothing evaluated
        _same(first, again, skip=())
        np.testing.assert_array_equal(first.gallery["saliency"], again.gallery["saliency"])

        # a causal option: only the causal metrics are computed again
        changed = dataclasses.replace(ecfg, causal_step=4)
        mixed, hits = stored(ecfg=changed)
        assert spy.calls[-1] == ({"insertion_auc", "deletion_auc"}, ())
        assert hits == n_parts - 2
        # and the row is the one a full evaluation with the new option gives
        _same(mixed, evaluate(RowSpec(m, "abn"), split, changed, DEVICE, progress=False))
        assert mixed.values["insertion_auc"] != first.values["insertion_auc"]

        # options that do not change a number: nothing computed
        for change in ({"bootstrap": 50}, {"forward_batch": 7}):
            _, hits = stored(ecfg=dataclasses.replace(ecfg, **change))
            assert hits == n_parts, change
        assert len(spy.calls) == 2

        # the gallery's size: the gallery alone; the timing budget: the timing alone
        stored(ecfg=dataclasses.replace(ecfg, gallery_n=3))
        assert spy.calls[-1] == (set(), (GALLERY,))
        stored(ecfg=dataclasses.replace(ecfg, timing_batches=2))
        assert spy.calls[-1] == (set(), (TIMING,))

        # another explainer, checkpoint, split, precision: everything (another
        # explainer's row has the explanation columns only)
        for kw in ({"explainer": "gradcam"}, {"checkpoint": "other"}, {"split_key": "other"},
                   {"precision": "bf16"}):
            _, hits = stored(**kw)
            assert hits == 0, kw
            want = set(evalcache.row_metrics(split, ecfg, kw.get("explainer", "native")))
            assert spy.calls[-1][0] == want, kw
        other = set(evalcache.row_metrics(split, ecfg, "gradcam"))
        assert "top1" not in other and "attn_fix_gain_top1" not in other
        assert "insertion_auc" in other and "siou_confusion" in other

        # the same checkpoint key with other weights (trained again): everything
        with torch.no_grad():
            p = next(m.parameters())
            p.add_(1e-3)
        try:
            _, hits = stored()
        finally:
            with torch.no_grad():
                p.sub_(1e-3)
        assert hits == 0

        # the store is not read when asked not to (--no-cache)
        _, hits = stored(read=False)
        assert hits == 0


def test_comb_subset_is_part_of_the_comb_metrics_keys(model: Any) -> None:
    _, split, cfg = model
    names = ["top1", "insertion_auc", "comb_insertion_auc", "attn_fix_gain_top1"]
    mask = torch.zeros(len(split), dtype=torch.bool)
    k0 = evalcache.part_keys(checkpoint="c", explainer="native", split_id="s", device=DEVICE,
                             precision="fp32", cfg=cfg.eval, metrics=names, comb_subset=mask)
    mask[3] = True
    k1 = evalcache.part_keys(checkpoint="c", explainer="native", split_id="s", device=DEVICE,
                             precision="fp32", cfg=cfg.eval, metrics=names, comb_subset=mask)
    changed = {k for k in k0 if k0[k] != k1[k]}
    assert changed == {"comb_insertion_auc", "attn_fix_gain_top1"}


def test_each_part_knows_its_own_code() -> None:
    """A metric's key holds its own code's digest (its factory and what that names): two
    metrics of one module have different ones, and the evaluator's shared kernels are
    in every key (code_version)."""
    from metrics.base import METRICS

    assert evalcache.metric_code("sparseness") != evalcache.metric_code("complexity")
    assert evalcache.metric_code("road_morf") != evalcache.metric_code("road_lerf")
    # the evaluator's own columns have no factory: their code is the evaluator's
    assert METRICS.get("explain_ms").factory is None
    closure = " ".join(codedigest.closure([evaluate]))
    for kernel in ("metrics.causal:causal_curves", "metrics.road:road_scores",
                   "methods.explainers:build"):
        assert kernel in closure
    assert evalcache.explainer_code("native") == ""
    assert evalcache.explainer_code("gradcam") != evalcache.explainer_code("cam")


def test_a_warm_rerun_evaluates_nothing(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--methods", "baseline,abn", "--preset", "smoke", "--db", str(tmp_path / "db"),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert run.main(args) == 0
    first = (tmp_path / "out" / "leaderboard.csv").read_text()
    capsys.readouterr()
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("evaluation cached") == 3  # and the random reference row
    assert "baseline+random" in out
    assert "parts read from the store, 0 computed" in out
    again = (tmp_path / "out" / "leaderboard.csv").read_text()
    assert first.splitlines()[0] == again.splitlines()[0]
    # the numbers are the same; the 'cached' column now says the checkpoints were
    drop = [first.splitlines()[0].split(",").index(c) for c in ("cached", "train_s")]
    def strip(text: str) -> list[list[str]]:
        return [[v for i, v in enumerate(line.split(",")) if i not in drop]
                for line in text.splitlines()]
    assert strip(first) == strip(again)
    assert run.main([*args, "--no-cache"]) == 0
    assert "evaluation cached" not in capsys.readouterr().out

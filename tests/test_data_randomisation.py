"""Data randomisation (Adebayo et al. 2018, Sec. 3.2): the permuted training split, the
data_rand columns, their cache keys, and ``--sanity data`` end to end."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import config, data, evalcache, run
from harness.evaluate import RowSpec, evaluate
from harness.train import build_method
from metrics import METRICS
from metrics.base import EvalBatch
from metrics.standard import DataRandomisation
from tests import dataset_fixtures as fixtures

DATA_RAND = ("data_rand_spearman", "data_rand_ssim")


def _counts(labels: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(labels, minlength=k).tolist()


def test_permuted_labels_keep_images_boxes_and_class_counts(smoke_train: data.Split) -> None:
    orig = smoke_train.dataset.labels  # type: ignore[attr-defined]
    a = data.permuted_labels(smoke_train, 3)
    b = data.permuted_labels(smoke_train, 3)
    c = data.permuted_labels(smoke_train, 4)
    new = a.dataset.labels  # type: ignore[attr-defined]
    k = smoke_train.info.num_classes
    assert _counts(new, k) == _counts(orig, k)
    assert (new != orig).float().mean() > 0.5  # most images get another class's label
    assert torch.equal(new, b.dataset.labels)  # type: ignore[attr-defined]
    assert not torch.equal(new, c.dataset.labels)  # type: ignore[attr-defined]
    # its own fingerprint (hence checkpoint key), the seed's: never the original's
    assert len({smoke_train.fingerprint, a.fingerprint, c.fingerprint}) == 3
    assert a.fingerprint == b.fingerprint
    i = int(torch.nonzero(new != orig)[0])
    s, t = smoke_train.dataset[i], a.dataset[i]
    assert t["label"] == int(new[i]) != s["label"]
    assert torch.equal(s["image"], t["image"]) and torch.equal(s["bbox"], t["bbox"])
    # the label survives the unaugmented view the methods analyse
    assert a.eval_view()[i]["label"] == int(new[i])
    assert a.batch_transform is smoke_train.batch_transform


def test_permuted_labels_of_image_files(tmp_path: Path) -> None:
    fx = fixtures.make_folder(tmp_path / "f")
    split = data.build("folder", "train", data_dir=fx.root, image_size=32)
    p = data.permuted_labels(split, 0)
    orig, new = split.dataset.labels, p.dataset.labels  # type: ignore[attr-defined]
    assert sorted(orig.tolist()) == sorted(new.tolist())
    assert [p.dataset[i]["label"] for i in range(len(p))] == new.tolist()
    assert p.fingerprint != split.fingerprint
    with pytest.raises(TypeError, match="cannot permute its labels"):
        data.permuted_labels(data.Split(torch.utils.data.TensorDataset(torch.zeros(2)),  # type: ignore[arg-type]
                                        split.info), 0)


def _batch(original: torch.Tensor, permuted: object) -> EvalBatch:
    n = original.shape[0]
    return EvalBatch(images=torch.zeros(n, 3, *original.shape[-2:]),
                     labels=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 2),
                     saliency=original, causal_images=torch.zeros(n, 3, *original.shape[-2:]),
                     permuted=permuted)  # type: ignore[arg-type]


def test_data_rand_columns_known_answers() -> None:
    g = torch.Generator().manual_seed(0)
    original = torch.rand(4, 1, 9, 9, generator=g)
    cases = {"same": (lambda x, c: original.clone(), 1.0, 1.0),
             "twice": (lambda x, c: -2 * original, 1.0, 1.0),  # |map| in the same order
             "reversed": (lambda x, c: 1 - original, -1.0, None)}
    for what, (fn, sp_want, ss_want) in cases.items():
        sp, ss = DataRandomisation("spearman"), DataRandomisation("ssim")
        batch = _batch(original, fn)
        sp.update(batch)
        ss.update(batch)
        assert np.allclose(sp.per_image()[0], sp_want, atol=1e-6), what
        if ss_want is not None:
            assert np.allclose(ss.per_image()[0], ss_want, atol=1e-6), what
        else:
            assert np.all(ss.per_image()[0] < 0.5), what
    # without a permuted model the columns score nothing
    m = DataRandomisation("spearman")
    m.update(_batch(original, None))
    assert len(m.per_image()[0]) == 0
    with pytest.raises(ValueError, match="spearman"):
        DataRandomisation("pearson")
    assert all(METRICS.get(c).needs_permuted and not METRICS.get(c).higher_is_better
               for c in DATA_RAND)


def test_evaluate_against_a_model_scores_its_similarity(smoke_train: data.Split,
                                                       smoke_test: data.Split,
                                                       smoke_cfg: config.RunConfig) -> None:
    """The trained model against itself is similarity 1; against another model less;
    without one the columns are absent."""
    cfg = dataclasses.replace(smoke_cfg.eval, causal_n=16)
    model = build_method("gradcam", smoke_cfg, smoke_train).eval()
    only = set(DATA_RAND)
    res = evaluate(RowSpec(model, "gradcam", permuted=copy.deepcopy(model)), smoke_test, cfg,
                   torch.device("cpu"), progress=False, only=only, parts=())
    assert set(res.values) == only
    assert res.values["data_rand_spearman"] == pytest.approx(1.0)
    assert res.values["data_rand_ssim"] == pytest.approx(1.0)
    other = build_method("gradcam", dataclasses.replace(smoke_cfg, seed=5), smoke_train).eval()
    res = evaluate(RowSpec(model, "gradcam", permuted=other), smoke_test, cfg,
                   torch.device("cpu"), progress=False, only=only, parts=("gallery",))
    assert res.values["data_rand_spearman"] < 0.99
    assert res.gallery["permuted_pair"].shape == (1, 2, 64, 64)
    none = evaluate(RowSpec(model, "gradcam"), smoke_test, cfg, torch.device("cpu"),
                    progress=False, only=only, parts=())
    assert not none.values


def test_the_permuted_model_is_in_its_columns_keys_only(smoke_cfg: config.RunConfig) -> None:
    kw = dict(checkpoint="c", explainer="native", split_id="s", device=torch.device("cpu"),
              precision="fp32", cfg=smoke_cfg.eval, comb_subset=None, weights="w",
              metrics=["top1", "insertion_auc", *DATA_RAND])
    a = evalcache.part_keys(permuted="p1", **kw)  # type: ignore[arg-type]
    b = evalcache.part_keys(permuted="p2", **kw)  # type: ignore[arg-type]
    plain = evalcache.part_keys(**kw)  # type: ignore[arg-type]
    for m in DATA_RAND:
        assert a[m] != b[m]
    for m in ("top1", "insertion_auc", "timing"):
        assert a[m] == b[m] == plain[m]
    assert a["gallery"] != b["gallery"]  # it shows the permuted model's map


@pytest.fixture(scope="module")
def sanity_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    assert run.main(["--methods", "baseline,gradcam,abn", "--preset", "smoke", "--out",
                     str(out), "--cache-dir", str(cache), "--no-progress", "--device", "cpu",
                     "--sanity", "data"]) == 0
    return out, cache


def test_sanity_data_end_to_end(sanity_run: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = sanity_run
    df = pd.read_csv(out / "leaderboard.csv").set_index("method")
    for c in DATA_RAND:
        assert df[c].notna().all() and df[c].between(-1, 1).all(), c
    # maps that read no model or no image stay what they were
    assert df.loc["baseline", "data_rand_spearman"] == pytest.approx(1.0)
    assert df.loc["baseline+random", "data_rand_spearman"] == pytest.approx(1.0)
    assert df.loc["gradcam", "data_rand_spearman"] < 0.99
    # each trained method twice under its own keys: the labels' and the permuted labels'
    ckpts = sorted(p.name.rsplit("-", 1)[0] for p in cache.glob("*.pt"))
    assert ckpts == ["abn", "abn", "baseline", "baseline"]
    html = (out / "leaderboard.html").read_text()
    assert "data randomisation, Spearman &lt; 0.5" in html and "labels permuted" in html
    # cached the second time: nothing trained again
    capsys.readouterr()
    assert run.main(["--methods", "baseline,gradcam,abn", "--preset", "smoke", "--out",
                     str(tmp_path), "--cache-dir", str(cache), "--device", "cpu",
                     "--sanity", "data"]) == 0
    text = capsys.readouterr().out
    # each model's first row says how both were obtained (gradcam explains baseline's)
    assert text.count("(training cached, permuted labels: training cached, ") == 2
    assert text.count("(on baseline's weights, permuted labels: on baseline's weights, ") == 1
    assert "trained" not in text and "epoch" not in text
    again = pd.read_csv(tmp_path / "leaderboard.csv").set_index("method")
    assert np.allclose(again[list(DATA_RAND)], df[list(DATA_RAND)])


def test_sanity_option_errors_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--sanity", "labels", "--preset", "smoke", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sanity 'labels'" in err[0] and "data" in err[0]
    assert run.main(["--methods", "baseline", "--preset", "smoke", "--dry-run",
                     "--sanity", "data", "--device", "cpu"]) == 0
    assert "--sanity data: every method trained again on permuted labels" in \
        capsys.readouterr().out

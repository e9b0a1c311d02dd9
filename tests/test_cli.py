"""End to end on the smoke preset through the real command line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import run
from methods import METHODS
from metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]


#: what ``--methods all`` runs on single-label data: every method but the multi-task
#: ones (built for multi-label data)
SINGLE_LABEL = [m for m in METHODS.names() if not METHODS.entry(m).meta.get("multi_task")]


def smoke_main(out: Path, cache: Path) -> int:
    return run.main(["--methods", "all", "--preset", "smoke", "--out", str(out),
                     "--cache-dir", str(cache), "--no-progress", "--device", "cpu"])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert smoke_main(out, cache_dir) == 0
    return out


def test_outputs_written(smoke_run: Path) -> None:
    for f in ("leaderboard.csv", "leaderboard.html", "curves.csv", "config.yaml"):
        assert (smoke_run / f).stat().st_size > 0
    df = pd.read_csv(smoke_run / "leaderboard.csv")
    # each method's own row, then the random explainer's reference row (the floor)
    assert list(df["method"]) == [*SINGLE_LABEL, "baseline+random"]
    cols = ["top1", "top5", "insertion_auc", "deletion_auc", "bbox_inside_frac", "energy_pg",
            "pointing_game", "distractor_frac", "explain_ms"]
    own = df[~df["method"].str.contains("+", regex=False)]
    assert own["top1"].notna().all() and df["top1"].iloc[-1] != df["top1"].iloc[-1]  # n/a
    df = own  # the columns of the methods' own rows
    for c in cols:
        assert c in df and df[c].notna().all(), c
        if c != "explain_ms":
            assert df[c].between(0, 1).all(), c
            assert (df[f"{c}_lo"] <= df[c] + 1e-9).all() and (df[c] <= df[f"{c}_hi"] + 1e-9).all()
    assert (df["explain_ms"] > 0).all()
    # attention-fix analysis: n/a (not 0) without an attention mechanism
    has_attention = df["method"].map(
        lambda m: "+" not in m and METHODS.entry(m).meta["attention"])
    for c in ("attn_fix_gain_wrong_prob", "attn_fix_gain_top1", "attn_fix_gain_wrong_prob_all",
              "attn_fix_gain_top1_all"):
        assert df.loc[~has_attention, c].isna().all() and df.loc[has_attention, c].notna().all()
    assert df["comb_insertion_auc"].between(0, 1).all() and df["max_wrong_prob"].between(0, 1).all()
    html = (smoke_run / "leaderboard.html").read_text()
    assert "data:image/png;base64," in html and "★" in html
    # compact table: intervals on demand (hover, or the toggle); sorting by method id
    assert 'id="show-ci"' in html and 'class="wide compact"' in html
    assert 'data-key="abn"' in html and 'title="95 % interval [' in html
    for name in SINGLE_LABEL:
        assert f"<b>{name}</b>" in html
    for c in cols:
        arrow = "↑" if METRICS.get(c).higher_is_better else "↓"
        assert f"{c} {arrow}" in html
    curves = pd.read_csv(smoke_run / "curves.csv")
    assert {"insertion_auc", "deletion_auc"} <= set(curves["metric"])
    assert curves["score"].between(0, 1).all()
    assert not curves["metric"].str.startswith("mprt").any()  # in mprt.csv


def test_mprt_csv_and_columns(smoke_run: Path) -> None:
    """Every row's randomisation steps; ABN's first step (the perception branch) leaves
    its map as it was; the random explainer's maps never change (it fails)."""
    mprt = pd.read_csv(smoke_run / "mprt.csv")
    assert set(mprt["method"]) == {*SINGLE_LABEL, "baseline+random"}
    abn = mprt[(mprt["method"] == "abn")].set_index(["scheme", "step"])
    assert list(abn.loc["cascading", "group"]) == ["perception branch", "attention branch",
                                                   "feature extractor"]
    assert abn.loc[("cascading", 1), "spearman"] == pytest.approx(1.0)
    assert abn.loc[("cascading", 2), "spearman"] < 0.9
    rnd = mprt[mprt["method"] == "baseline+random"]
    assert np.allclose(rnd["spearman"], 1.0) and np.allclose(rnd["ssim"], 1.0)
    df = pd.read_csv(smoke_run / "leaderboard.csv").set_index("method")
    assert df.loc["baseline+random", "mprt_spearman"] == pytest.approx(1.0)
    assert df["mprt_spearman"].between(-1, 1).all() and df["mprt_ssim"].between(-1, 1).all()
    # the column is the mean of the cascade's steps (one seed: means of means agree)
    casc = mprt[mprt["scheme"] == "cascading"].groupby("method")["spearman"].mean()
    assert np.allclose(casc.loc[df.index], df["mprt_spearman"], atol=1e-5)


def test_second_run_uses_the_cache(smoke_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    trained = {p.name.rsplit("-", 1)[0] for p in cache_dir.glob("*.pt")}
    # cam and gradcam reuse baseline's checkpoint
    assert trained == {m for m in SINGLE_LABEL if m not in ("cam", "gradcam")}
    first = pd.read_csv(smoke_run / "leaderboard.csv")
    assert not first["cached"].any()
    assert smoke_main(tmp_path, cache_dir) == 0
    second = pd.read_csv(tmp_path / "leaderboard.csv")
    assert second["cached"].all()
    # same checkpoints, same data: identical accuracy and localisation
    for c in ("top1", "bbox_inside_frac", "insertion_auc"):
        assert second[c].tolist() == pytest.approx(first[c].tolist(), abs=1e-6, nan_ok=True)


def test_unknown_method_exits_2_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "harness.run", "--methods", "abn,gradcma",
                           "--preset", "smoke"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "gradcma" in lines[0] and "did you mean gradcam" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_preset_and_device_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--preset", "huge"]) == 2
    assert run.main(["--device", "tpu", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--preset" in err[0] and "--device" in err[1]


def test_unwritable_output_is_a_one_line_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = run.main(["--methods", "cam", "--preset", "smoke", "--no-progress",
                   "--cache-dir", str(blocker / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    # found before any work: a bad option (2), naming the file in the way
    assert rc == 2 and len(err) == 1 and str(blocker) in err[0] and "is a file" in err[0]


def test_lineage_and_boxless_datasets() -> None:
    from harness.data import DIGITS_INFO
    from harness.errors import UserError

    assert run.lineage(["abn-amb", "cam"]) == {"abn-amb", "abn", "cam", "baseline"}
    boxless = dataclasses.replace(DIGITS_INFO, has_boxes=False)
    assert "abn-hk" not in run.drop_unsupported(METHODS.names(), boxless, explicit=False,
                                                say=lambda *a: None)
    with pytest.raises(UserError, match="needs bounding boxes"):
        run.drop_unsupported(["abn", "abn-hk"], boxless, explicit=True)


def test_copy_replace_sweep(smoke_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    rc = run.main(["--methods", "msabn", "--preset", "smoke", "--out", str(tmp_path),
                   "--cache-dir", str(cache_dir), "--no-progress", "--device", "cpu",
                   "--cr-sweep", "1,0", "--explainers", "native"])
    assert rc == 0
    sweep = pd.read_csv(tmp_path / "cr_sweep.csv")
    assert list(sweep["label"]) == ["lambda_out=0", "lambda_out=1", "vanilla", "msabn (before)"]
    lam0, lam1, vanilla, parent = (sweep.iloc[i] for i in range(4))
    assert lam1["annotated"] == vanilla["annotated"] == 0 and lam0["annotated"] > 0
    assert lam0["share"] == pytest.approx(lam0["annotated"] / 64)
    # nothing annotated is vanilla fine-tuning: the same training, the same accuracy
    assert lam1["top1"] == vanilla["top1"]
    assert (sweep["top1_lo"] <= sweep["top1"]).all() and (sweep["top1"] <= sweep["top1_hi"]).all()
    assert bool(parent["cached"])  # the msabn of the smoke run
    html = (tmp_path / "leaderboard.html").read_text()
    assert "Copy-replace: accuracy against annotated share" in html
    # curves, gallery, confusion, sweep; the sanity checks: cascade, class pairs, ROAD
    assert html.count("data:image/png;base64,") == 7
    assert "Class confusion" in html  # msabn has class maps
    assert (tmp_path / "cr_sweep.png").stat().st_size > 0


def test_auto_sweep_spreads_the_annotated_share(smoke_run: Path, cache_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import config, data, sweep

    monkeypatch.setattr(sweep, "AUTO_SHARES", (0.5, 1.0))
    cfg = config.resolve("smoke")
    tr = data.build(cfg.dataset, "train", cache_dir=cache_dir, **cfg.dataset_kwargs)
    te = data.build(cfg.dataset, "test", cache_dir=cache_dir, **cfg.dataset_kwargs)
    result = sweep.run_cr_sweep(None, cfg, tr, te, torch.device("cpu"), cache_dir,
                                progress=False, say=lambda *a: None)
    assert [p.share for p in result.points] == [0.5, 1.0]  # exactly, worst-localised first
    assert [p.label for p in result.points] == ["worst 50%", "worst 100%"]
    assert result.vanilla.annotated == 0 and result.parent.cached
    assert sweep.parse_lambdas("auto") is None
    assert sweep.parse_lambdas("paper") == list(sweep.PAPER_GRID)


def test_bad_sweep_values_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--preset", "smoke", "--cr-sweep", "0.2,1.5"]) == 2
    assert run.main(["--preset", "smoke", "--cr-sweep", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("--cr-sweep" in e for e in err)


def test_seed_options() -> None:
    from harness.errors import UserError

    assert run.resolve_seeds(None, None) == [0]
    assert run.resolve_seeds(4, None) == [4]
    assert run.resolve_seeds(None, "3") == [0, 1, 2]
    assert run.resolve_seeds(None, "0,2,2,5") == [0, 2, 5]
    assert run.resolve_seeds(None, "7,") == [7]
    for seed, seeds in ((1, "3"), (None, "x"), (None, "0"), (None, "-1,2"), (-1, None),
                        (2**32, None), (None, ",")):
        with pytest.raises(UserError):
            run.resolve_seeds(seed, seeds)


def test_multi_seed_run_writes_seed_rows_comparisons_and_stability(
        cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run.main(["--methods", "baseline,gradcam,abn", "--preset", "smoke", "--seeds", "2",
                   "--out", str(tmp_path), "--cache-dir", str(cache_dir), "--device", "cpu",
                   "--explainers", "native"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ranking stability" in out and "insertion_auc" in out
    df = pd.read_csv(tmp_path / "leaderboard.csv")
    agg = df[df["seed"].astype(str) == "all"]
    seeds = df[df["seed"].astype(str) != "all"]
    assert list(agg["method"]) == ["baseline", "gradcam", "abn"]
    assert sorted(seeds["seed"].astype(int).unique()) == [0, 1] and len(seeds) == 6
    # the aggregated value is the mean of the per-seed values; sd their spread
    for m in ("gradcam", "abn"):
        per = seeds[seeds["method"] == m]["insertion_auc"].to_numpy()
        row = agg[agg["method"] == m].iloc[0]
        assert row["insertion_auc"] == pytest.approx(per.mean(), abs=1e-5)
        assert row["insertion_auc_sd"] == pytest.approx(per.std(ddof=1), abs=1e-5)
        assert row["insertion_auc_lo"] <= row["insertion_auc"] <= row["insertion_auc_hi"]
    assert agg["seeds"].tolist() == ["0,1"] * 3
    cmp = pd.read_csv(tmp_path / "comparisons.csv")
    ins = cmp[cmp["metric"] == "insertion_auc"]
    assert ins["method"].tolist() == ["abn"] and ins["reference"].tolist() == ["gradcam"]
    top1 = cmp[cmp["metric"] == "top1"]
    assert sorted(top1["method"]) == ["abn", "gradcam"] and set(top1["reference"]) == {"baseline"}
    assert cmp["verdict"].isin(["better", "worse", "no detectable difference"]).all()
    assert (cmp["p_holm"] >= cmp["p"] - 1e-12).all()
    assert ((cmp["p_holm"] < 0.05) == (cmp["verdict"] != "no detectable difference")).all()
    assert (cmp["n_seeds"] == 2).all() and (cmp["diff_lo"] <= cmp["diff"]).all()
    stab = pd.read_csv(tmp_path / "stability.csv")
    assert "insertion_auc" in set(stab["metric"]) and stab["kendall_tau"].between(-1, 1).all()
    html = (tmp_path / "leaderboard.html").read_text()
    assert "Ranking stability across seeds" in html and "Paired comparisons" in html
    assert "seeds <b>0, 1</b>" in html and " sd</span>" in html
    # the abn row of seed 1 is its own checkpoint
    assert seeds[seeds["method"] == "abn"]["config_hash"].nunique() == 2


def test_reference_must_be_in_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--methods", "abn", "--preset", "smoke", "--reference", "cam"]) == 2
    assert run.main(["--methods", "abn", "--preset", "smoke", "--reference", "camm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not among the methods" in err[0] and "did you mean" in err[1]

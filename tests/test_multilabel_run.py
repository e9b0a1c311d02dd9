"""The embedded multi-label default end to end at a tiny size: every method of the
``multilabel`` preset trains on multi-label targets and is scored per label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import config, run
from methods import METHODS


@pytest.fixture(scope="module")
def tiny_multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("multilabel")
    rc = run.main(["--preset", "multilabel", "--methods", "all",
                   "--set", "dataset_kwargs.n_train=96", "--set", "dataset_kwargs.n_test=40",
                   "--set", "train.epochs=1", "--set", "train.batch_size=16",
                   "--set", "eval.bootstrap=50", "--set", "eval.gallery_n=4",
                   "--set", "eval.timing_batches=1",
                   "--out", str(tmp / "o"), "--cache-dir", str(tmp / "c"),
                   "--db", str(tmp / "r.sqlite"), "--no-progress", "--workers", "0"])
    assert rc == 0
    return tmp / "o"


def test_the_preset_runs_every_multi_label_method(tiny_multilabel_run: Path) -> None:
    cfg = config.resolve("multilabel")
    assert all(METHODS.entry(m).meta["multi_label"] for m in cfg.for_methods)
    board = pd.read_csv(tiny_multilabel_run / "leaderboard.csv")
    own = board[board["explainer"] != "random"]
    assert list(own["method"]) == [m for m in METHODS.names() if m in cfg.for_methods]
    assert set(board["dataset"]) == {"cluttered-digits-multilabel"}
    # the multi-label columns, no single-label ones
    for col in ("label_acc", "mAP", "class_energy_pg", "class_bbox_inside_frac",
                "class_pointing_game"):
        assert col in board.columns
    for col in ("top1", "insertion_auc", "energy_pg", "pointing_game"):
        assert col not in board.columns
    models = own
    assert models["label_acc"].between(0, 1).all() and models["mAP"].between(0, 1).all()
    assert board["class_energy_pg"].between(0, 1).all()
    # the model columns are the model's: CAM and Grad-CAM explain the baseline's model
    same = models.set_index("method").loc[["baseline", "cam", "gradcam"], "label_acc"]
    assert same.nunique() == 1
    assert "multi-label" in str(board["protocol"].iloc[0])


def test_per_label_table_gives_every_label_of_every_row(tiny_multilabel_run: Path) -> None:
    per = pd.read_csv(tiny_multilabel_run / "per_label.csv")
    board = pd.read_csv(tiny_multilabel_run / "leaderboard.csv")
    acc = per[per["metric"] == "label_acc"]
    assert set(acc["label"]) == set(range(10)) and set(acc["name"].astype(str)) == {
        str(d) for d in range(10)}
    assert (acc["n"] == 40).all()
    # the column is the mean of the per-label values
    for row, g in acc.groupby("row"):
        want = board.loc[board["method"] == row, "label_acc"].iloc[0]
        assert g["value"].mean() == pytest.approx(want, abs=1e-6)
    loc = per[per["metric"] == "class_pointing_game"]
    assert set(loc["row"]) == set(board["method"])
    # each present digit is scored once per image: 2-3 per image, 40 images
    for _, g in loc.groupby("row"):
        assert 80 <= int(g["n"].sum()) <= 120
    html = (tiny_multilabel_run / "leaderboard.html").read_text()
    assert 'id="per-label"' in html and "Insertion and deletion curves" not in html
    assert np.isfinite(per["value"]).all()


def test_dry_run_prints_the_multilabel_plan(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--dry-run`` times each method's step on synthetic multi-label images (one
    labelled object each) and prints the plan without training."""
    rc = run.main(["--preset", "multilabel", "--methods", "baseline,abn-multitask",
                   "--dry-run", "--out", str(tmp_path / "o"), "--cache-dir",
                   str(tmp_path / "c"), "--db", str(tmp_path / "r.sqlite"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dataset cluttered-digits-multilabel: 5000 train / 1000 test images" in out
    assert "abn-multitask" in out and "estimated wall time" in out
    assert not (tmp_path / "c" / "models").exists() or not any(
        (tmp_path / "c" / "models").iterdir())

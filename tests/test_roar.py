"""Remove and retrain / keep and retrain (Hooker et al. 2019): the fractions, the
modified images (exactly k pixels by rank, ROAD's imputation, kept pixels untouched,
batch-independent noise), the keys, and ``--roar`` end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import config, data, roar, run
from harness.data import BoxedImages, DatasetInfo, Split
from harness.errors import UserError

INFO = DatasetInfo("t", 3, (16, 16), (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), False)


def _split(n: int = 7, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    tf = data.make_transform(INFO, train=False)
    return Split(BoxedImages(images, labels, {}, tf), INFO, eval_transform=tf)


def _ramp(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A map rising along the raster order (no ties): the last pixel ranks first."""
    n, _c, h, w = x.shape
    return torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(n, 1, h, w)


def test_parse_fractions() -> None:
    assert roar.parse_fractions("auto") == roar.FRACTIONS == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert roar.parse_fractions("50, 20") == (0.2, 0.5)
    for bad, why in (("abc", "not a number"), ("0", "outside"), ("100", "outside"),
                     ("10,10", "twice")):
        with pytest.raises(UserError, match=why) as err:
            roar.parse_fractions(bad)
        assert str(err.value).startswith("--roar")


def test_axes_end_at_the_unmodified_images() -> None:
    assert roar.axis("roar", (0.3, 0.1)) == (0.0, 0.1, 0.3)
    assert roar.axis("kar", (0.3, 0.1)) == (0.1, 0.3, 1.0)


def test_area_is_the_mean_over_the_span() -> None:
    assert roar.area(np.array([1.0, 0.5, 0.0]), [0, 0.5, 1]) == pytest.approx(0.5)
    assert roar.area(np.array([[1.0, 1.0, 1.0]]), [0, 0.1, 0.9]) == pytest.approx([1.0])
    # uneven steps: trapezoids weighted by their width
    assert roar.area(np.array([1.0, 1.0, 0.0]), [0, 0.1, 0.9]) == pytest.approx(
        (0.1 * 1 + 0.8 * 0.5) / 0.9)


@pytest.mark.parametrize("mode", list(roar.MODES))
def test_modified_images_remove_exactly_k_pixels_by_rank(mode: str) -> None:
    split = _split()
    p = roar.Protocol((0.25, 0.5), noise=0.01, seed=3, batch_size=4)
    out = roar.modified_images(_ramp, split, mode, p, torch.device("cpu"))
    assert out.shape == (2, 7, 3, 16, 16) and out.dtype == torch.uint8
    orig = split.dataset.images  # type: ignore[attr-defined]
    flat_rank = torch.arange(256).view(16, 16)  # the ramp: the last raster pixels rank first
    for k, t in enumerate(p.fractions):
        kept_top = flat_rank >= 256 - round(t * 256)  # the top t by the map
        removed = kept_top if mode == "roar" else ~kept_top
        same = (out[k] == orig).all(1)  # [N,H,W]: every channel untouched
        # every kept pixel comes back exactly (8 bits through normalise / denormalise)
        assert same[:, ~removed].all()
        # imputed pixels (noise included) differ almost everywhere
        assert (~same[:, removed]).float().mean() > 0.9
    # the same images whatever the batch size (the noise is per image index)
    again = roar.modified_images(_ramp, split, mode, dataclasses.replace(p, batch_size=7),
                                 torch.device("cpu"))
    assert torch.equal(out, again)
    other = roar.modified_images(_ramp, split, mode, dataclasses.replace(p, seed=4),
                                 torch.device("cpu"))
    assert not torch.equal(out, other)


def test_imputed_split_keeps_labels_and_normalises_as_the_test_images() -> None:
    split = _split()
    images = torch.full((7, 3, 16, 16), 128, dtype=torch.uint8)
    s = roar.imputed_split(split, images, "fp")
    assert s.fingerprint == "fp" and len(s) == 7
    sample = s.dataset[4]
    assert sample["label"] == int(split.dataset.labels[4])  # type: ignore[attr-defined]
    want = (128 / 255 - torch.tensor(INFO.mean)) / torch.tensor(INFO.std)
    assert torch.allclose(sample["image"][:, 0, 0], want, atol=1e-6)


def test_keys_name_the_row_the_mode_and_t(smoke_cfg: config.RunConfig,
                                          smoke_train: data.Split) -> None:
    p = roar.Protocol((0.1, 0.5), noise=0.01, seed=0, batch_size=8)
    kw = dict(weights="w", explainer="gradcam", protocol=p, train_key="tk")
    keys = roar.retrain_keys(smoke_cfg, smoke_train, **kw)  # type: ignore[arg-type]
    assert len(set(keys.values())) == 4  # 2 modes x 2 fractions
    for change in ({"weights": "w2"}, {"explainer": "random"},
                   {"protocol": dataclasses.replace(p, noise=0.02)}):
        other = roar.retrain_keys(smoke_cfg, smoke_train, **{**kw, **change})  # type: ignore[arg-type]
        assert not set(other.values()) & set(keys.values()), change
    parts = roar.part_keys(keys=keys, base_key="b", explainer="gradcam", weights="w",
                           split_key="s", protocol=p, device=torch.device("cpu"))
    assert set(parts) == set(roar.COLUMNS) and len(set(parts.values())) == 2


@pytest.fixture(scope="module")
def roar_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    assert run.main(["--methods", "baseline", "--explainers", "native,gradcam,random",
                     "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache),
                     "--no-progress", "--device", "cpu", "--roar", "30,70"]) == 0
    return out, cache


def test_roar_end_to_end(roar_run: tuple[Path, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = roar_run
    board = pd.read_csv(out / "leaderboard.csv").set_index("method")
    curves = pd.read_csv(out / "roar.csv")
    rows = ["baseline", "baseline+gradcam", "baseline+random"]
    assert sorted(set(curves["method"])) == rows
    for row in rows:
        for mode, col, ts in (("roar", "roar_auc", [0.0, 0.3, 0.7]),
                              ("kar", "kar_auc", [0.3, 0.7, 1.0])):
            c = curves[(curves["method"] == row) & (curves["mode"] == mode)]
            assert list(c["t"]) == ts
            # ROAR's 0 and KAR's 1 are the baseline trained on the unmodified images
            end = c.set_index("t").loc[roar.UNMODIFIED[mode], "top1"]
            assert end == pytest.approx(board.loc["baseline", "top1"])
            # the column is the area under the mean curve (means of per-image areas)
            assert board.loc[row, col] == pytest.approx(
                float(roar.area(c["top1"].to_numpy(), c["t"].to_numpy())), abs=1e-6)
            assert board.loc[row, f"{col}_lo"] <= board.loc[row, col] <= \
                board.loc[row, f"{col}_hi"]
    assert not pd.read_csv(out / "curves.csv")["metric"].isin(roar.COLUMNS).any()
    # one checkpoint for the baseline, one per row, mode and t for the retrained ones
    assert len(list(cache.glob("baseline-*.pt"))) == 1 + 3 * 2 * 2
    html = (out / "leaderboard.html").read_text()
    assert "Remove and retrain" in html and "ROAR below the random row" in html
    # a second run reads both columns from the store: nothing is trained or imputed
    capsys.readouterr()
    assert run.main(["--methods", "baseline", "--explainers", "native,gradcam,random",
                     "--preset", "smoke", "--out", str(tmp_path), "--cache-dir", str(cache),
                     "--device", "cpu", "--roar", "30,70"]) == 0
    text = capsys.readouterr().out
    assert "evaluation cached" in text and "epoch" not in text
    again = pd.read_csv(tmp_path / "leaderboard.csv").set_index("method")
    assert np.allclose(again[list(roar.COLUMNS)], board[list(roar.COLUMNS)])


def test_roar_dry_run_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--methods", "abn", "--preset", "smoke", "--dry-run", "--roar",
                     "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "--roar: baseline trained 10 times for each of at most 2 rows" in text
    assert "  baseline " in text  # timed although not among the methods
    assert run.main(["--preset", "smoke", "--roar", "0,50", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --roar '0,50'")

"""The command line on datasets read from disk: smoke runs on every layout,
``--check-data``, bad data, box-less datasets and ``--dry-run``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness import data, run
from methods import METHODS
from tests import dataset_fixtures as fixtures
from tests.dataset_fixtures import Fixture

#: enough images for the smoke preset's batch of 16
PER_CLASS = (6, 4)


def _make(name: str, root: Path) -> Fixture:
    if name.startswith("cifar"):
        return fixtures.make_cifar(root, name, scale=3)
    if name == "caltech256":  # a split of PER_CLASS, chosen by the options below
        return fixtures.make_caltech256(root, per_class=PER_CLASS)
    return fixtures.BUILDERS[name](root, per_class=PER_CLASS)  # type: ignore[call-arg]


def _main(*args: str, tmp: Path) -> int:
    return run.main([*args, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                     "--no-progress", "--device", "cpu", "--workers", "0"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in fixtures.BUILDERS  # multi-label: refused
                                  if not data.DATASETS.entry(n).meta.get("multi_label")])
def test_smoke_on_every_dataset_writes_a_complete_leaderboard(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = _make(name, tmp_path / "data")
    split = (["--set", f"dataset_kwargs.train_per_class={PER_CLASS[0]}", "--set",
              f"dataset_kwargs.test_per_class={PER_CLASS[1]}"] if name == "caltech256" else [])
    assert _main("--dataset", name, "--data-dir", str(fx.root), "--preset", "smoke",
                 "--methods", "all", *split, tmp=tmp_path) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    boxes = name not in ("cifar10", "cifar100", "svhn", "caltech256", "diagset10x")
    # --methods all: multi-task methods run on multi-label data only
    single = [m for m in METHODS.names() if not METHODS.entry(m).meta.get("multi_task")]
    needs = [m for m in single if METHODS.entry(m).meta.get("needs_boxes")]
    want = single if boxes else [m for m in single if m not in needs]
    want = [*want, "baseline+random"]  # the random explainer's reference row
    assert list(df["method"]) == want
    own = df[df["method"] != "baseline+random"]
    assert (df["dataset"] == name).all() and own["top1"].between(0, 1).all()
    assert df["insertion_auc"].notna().all() and df["deletion_auc"].notna().all()
    if boxes:
        assert df["bbox_inside_frac"].notna().all() and df["pointing_game"].notna().all()
    else:  # skipped with a line each, and the report says why the box columns are absent
        for m in needs:
            assert f"skipping {m}: it needs bounding boxes" in out
        assert "bbox_inside_frac" not in df
        assert "has no bounding boxes" in (tmp_path / "out" / "leaderboard.html").read_text()
    for f in ("leaderboard.html", "comparisons.csv", "curves.csv", "config.yaml"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_methods_that_need_boxes_are_refused_when_asked_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = fixtures.make_cifar(tmp_path / "data", "cifar10")
    assert _main("--dataset", "cifar10", "--data-dir", str(fx.root), "--preset", "smoke",
                 "--methods", "abn-hk", tmp=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'abn-hk' needs bounding boxes" in err


def test_check_data_summarises_and_lists_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = fixtures.make_cub2011(tmp_path / "data", per_class=(30, 2))
    assert _main("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--preset", "smoke",
                 "--check-data", tmp=tmp_path) == 0
    out = capsys.readouterr().out
    # every image, not the preset's subset of 64
    assert "train: 90 images, 3 of 200 classes present" in out
    assert "test: 6 images" in out and "problems: none" in out and "box area" in out
    assert not (tmp_path / "out").exists()  # nothing trained or written
    # two problems: an image that does not decode and a box outside its image
    bad = fx.dataset_dir / fx.split("train")[0].relpath
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) * 3 // 4])
    lines = (fx.dataset_dir / "bounding_boxes.txt").read_text().splitlines()
    lines[-1] = lines[-1].split()[0] + " 5.0 5.0 900.0 10.0"
    (fx.dataset_dir / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    assert _main("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--preset", "smoke",
                 "--check-data", tmp=tmp_path) == 2
    cap = capsys.readouterr()
    assert "problems: 2" in cap.out and "cannot decode" in cap.out and "lies outside" in cap.out
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: 2 problem(s)")


def test_bad_data_on_the_command_line_is_one_line_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTNBENCH_DATA", raising=False)
    assert _main("--dataset", "cub200-2011", "--preset", "smoke", tmp=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err
    fx = fixtures.make_cub2011(tmp_path / "data", per_class=PER_CLASS)
    (fx.dataset_dir / "classes.txt").unlink()
    assert _main("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--preset", "smoke",
                 "--methods", "baseline", tmp=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "classes.txt: missing index file" in err
    assert not list(tmp_path.glob("cache/*.pt"))  # stopped before any training


def test_a_corrupt_image_met_in_training_is_one_line_and_keeps_finished_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The header is fine, the pixels are not: the first method to decode the image
    stops with one line (from a worker process too); checkpoints finished before stay."""
    fx = fixtures.make_cub2011(tmp_path / "data", per_class=PER_CLASS)
    args = ("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--preset", "smoke")
    assert _main(*args, "--methods", "baseline", tmp=tmp_path) == 0
    kept = sorted((tmp_path / "cache").glob("*.pt"))
    assert kept
    bad = fx.dataset_dir / fx.split("train")[0].relpath
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) * 3 // 4])
    rc = run.main([*args, "--methods", "baseline,abn", "--out", str(tmp_path / "out"),
                   "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--device", "cpu",
                   "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"{bad.name}: cannot decode" in err
    assert set(kept) <= set((tmp_path / "cache").glob("*.pt"))


def test_dry_run_prints_the_plan_without_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = fixtures.make_cub2011(tmp_path / "data", per_class=PER_CLASS)
    assert _main("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--preset", "smoke",
                 "--methods", "abn-comb,gradcam", "--dry-run", tmp=tmp_path) == 0
    out = capsys.readouterr().out
    lines = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ") and
             ln.split()[0] in METHODS]
    assert lines == ["abn", "abn-comb", "baseline", "gradcam"]  # parents first
    assert "18 train / 12 test images, 200 classes, 64 px" in out
    assert "estimated wall time" in out
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("cache/*.pt"))


def test_dry_run_without_the_data_uses_the_official_sizes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTNBENCH_DATA", raising=False)
    assert _main("--dataset", "cub200-2011", "--preset", "smoke", "--methods", "baseline",
                 "--dry-run", tmp=tmp_path) == 0
    out = capsys.readouterr().out
    assert "official sizes" in out and "64 train / 32 test images, 200 classes" in out


def test_dry_run_with_bad_data_is_an_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fx = fixtures.make_cub2011(tmp_path / "data")
    (fx.dataset_dir / "image_class_labels.txt").write_text("1 999\n")
    assert _main("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--preset", "smoke",
                 "--methods", "baseline", "--dry-run", tmp=tmp_path) == 2
    assert "image_class_labels.txt: no line for image id 2" in capsys.readouterr().err


def test_check_data_lists_every_image_problem_of_an_unusable_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = fixtures.make_cub2011(tmp_path / "data")
    for im in fx.split("train"):
        (fx.dataset_dir / im.relpath).unlink()
    assert _main("--dataset", "cub200-2011", "--data-dir", str(fx.root), "--check-data",
                 tmp=tmp_path) == 2
    out = capsys.readouterr().out
    assert out.count("which does not exist") == 9 and "no usable image" in out


def test_a_photo_presets_options_do_not_reach_cifar(capsys: pytest.CaptureFixture[str]) -> None:
    from harness import config

    cfg = run.portable_options(config.resolve("comb-cub200-2010", dataset="cifar100"))
    assert cfg.dataset_kwargs == {"image_size": 224}
    assert "cifar100 takes no test_crop, train_crop" in capsys.readouterr().err
    assert config.resolve("abn-cifar100", dataset="cub200-2011").dataset_kwargs == {}

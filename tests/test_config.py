"""Preset files, ``--config FILE.yaml`` and ``--set key=value``: checked field by field."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import config, run, train
from harness.errors import UserError


def test_every_preset_is_a_yaml_file_in_the_package() -> None:
    files = sorted(p.stem for p in config.PRESET_DIR.glob("*.yaml"))
    assert sorted(config.PRESETS) == files and list(config.PRESETS)[:2] == ["smoke", "default"]
    for name in files:  # each resolves, and its text cites where it comes from
        config.resolve(name)
        assert (config.PRESET_DIR / f"{name}.yaml").read_text().startswith("# ")


def test_a_config_file_extends_a_preset_and_set_overrides_it(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("extends: smoke\ntrain: {epochs: 2}\n"
                 "methods:\n  abn-amb: {options: {sigma: 0.5}}\n"
                 "dataset_kwargs: {n_train: 48}\n")
    cfg = config.resolve("default", config_file=f, sets=["train.lr=0.05",
                                                        "methods.abn-amb.options.alpha=0.001"])
    assert cfg.preset == "smoke" and cfg.config_file == str(f)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (2, 0.05, 16)
    assert cfg.methods["abn-amb"]["options"] == {"sigma": 0.5, "alpha": 0.001}
    assert cfg.methods["abn-amb"]["train"] == {"epochs": 1}  # the preset's, kept
    assert cfg.dataset_kwargs == {"n_train": 48, "n_test": 32, "image_size": 64}
    plain = config.resolve("smoke")
    assert train.cache_key("abn-amb", cfg, train.method_options("abn-amb", cfg)) != \
        train.cache_key("abn-amb", plain, train.method_options("abn-amb", plain))
    lists = config.resolve("smoke", sets=["train.milestones=[0.3, 0.6]", "eval.causal_n=4"])
    assert lists.train.milestones == (0.3, 0.6) and lists.eval.causal_n == 4


@pytest.mark.parametrize(("text", "words"), [
    ("trian: {epochs: 2}\n", "unknown field 'trian' (did you mean train?)"),
    ("train: {epoch: 2}\n", "unknown field train.epoch (did you mean epochs?)"),
    ("train: {epochs: ten}\n", "train.epochs must be an integer, got 'ten'"),
    ("train: {lr: true}\n", "train.lr must be a number, got True"),
    ("eval: {precision: 16}\n", "eval.precision must be a string, got 16"),
    ("train: {milestones: [0.5, x]}\n", "train.milestones must be a list of numbers"),
    ("seed: 3\n", "unknown field 'seed'"),
    ("methods: {abn: {optoins: {}}}\n", "methods.abn takes 'train' and 'options' only"),
    ("methods: {abn: {train: {epochs: 1.5}}}\n", "methods.abn.train.epochs must be an integer"),
    ("backbone: [resnet50]\n", "backbone must be a string"),
    ("train: [1, 2]\n", "train must be a mapping"),
    ("- a list\n", "expected a mapping of fields"),
    ("train: {epochs: 2\n", "not valid YAML"),
])
def test_config_file_errors_name_the_file_and_the_field(tmp_path: Path, text: str,
                                                        words: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as err:
        config.resolve("smoke", config_file=f)
    msg = str(err.value)
    assert msg.startswith(f"--config {f}") and words in msg and "\n" not in msg, msg


@pytest.mark.parametrize(("item", "words"), [
    ("train.epoch=3", "--set train.epoch=3: unknown field train.epoch"),
    ("train.epochs=3.5", "train.epochs must be an integer, got 3.5"),
    ("train.epochs", "expected key=value"),
    ("=3", "expected key=value"),
    ("colour=red", "unknown field 'colour'"),
])
def test_set_errors_name_the_setting(item: str, words: str) -> None:
    with pytest.raises(UserError, match="--set") as err:
        config.resolve("smoke", sets=[item])
    assert words in str(err.value)


def test_method_settings_name_registered_methods_and_their_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--preset", "smoke", "--no-progress", "--device", "cpu", "--dry-run",
            "--methods", "abn-amb"]
    assert run.main([*base, "--set", "methods.abn-ambb.options.sigma=0.5"]) == 2
    err = capsys.readouterr().err
    assert "methods.abn-ambb" in err and "did you mean abn-amb" in err
    assert run.main([*base, "--set", "methods.abn-amb.options.sigmaa=0.5"]) == 2
    err = capsys.readouterr().err
    assert "abn-amb has no option 'sigmaa'" in err and "sigma" in err
    f = tmp_path / "ok.yaml"
    f.write_text("extends: smoke\ntrain: {epochs: 3}\n")
    assert run.main([*base, "--config", str(f), "--set", "methods.abn-amb.train.epochs=2"]) == 0
    out = capsys.readouterr().out
    plan = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  abn")}
    assert plan["abn"][2] == "3" and plan["abn-amb"][2] == "2"  # epochs column
    assert run.main([*base, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err

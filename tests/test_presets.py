"""Paper presets, the papers' numbers beside ours, pretrained weights, CIFAR ResNets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import backbones, config, data, paper_values, run, train
from harness.analysis import analyse
from harness.errors import UserError
from harness.evaluate import MethodResult
from harness.stats import SeedScores
from methods import METHODS
from metrics import METRICS
from reports.leaderboard import RunRecord, paper_frame, to_frame
from tests import dataset_fixtures

PAPER_PRESETS = ("abn-cifar100", "comb-cub200-2010", "comb-stanford-dogs",
                 "msabn-cub200-2011", "msabn-stanford-cars", "discattn-cifar100",
                 "discattn-cub200-2011", "abn-cifar10", "abn-svhn", "abn-imagenet",
                 "discattn-imagenet", "msabn-imagenet", "msabn-imagenet-efficientnet-b1",
                 "discattn-caltech256", "discattn-caltech256-30", "abn-compcars",
                 "abn-compcars-make", "abn-celeba", "discattn-voc2012", "msabn-diagset10x")


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_resolve_and_name_their_methods(preset: str) -> None:
    cfg = config.resolve(preset)
    assert cfg.dataset in data.DATASETS and cfg.backbone in backbones.BACKBONES
    assert cfg.for_methods and all(m in METHODS for m in cfg.for_methods)
    assert run.resolve_methods("all", cfg.for_methods) == [
        m for m in METHODS.names() if m in cfg.for_methods]
    for m in cfg.methods:  # per-method overrides name methods the preset runs
        assert m in cfg.for_methods
    # the values quoted from its paper name rows and columns that exist, in range
    for v in paper_values.PAPER_VALUES.get(preset, ()):
        assert v.method in cfg.for_methods and v.metric in METRICS, v
        assert 0 < v.value < 1 and v.source and v.quoted


def _smoke_methods(cfg: config.RunConfig) -> list[str]:
    """``baseline`` and the first method the preset is about (one without a schedule of
    its own, which the smoke overrides would not reach)."""
    own = [m for m in cfg.for_methods
           if m not in ("baseline", "cam", "gradcam") and m not in cfg.methods]
    return ["baseline", own[0]]


def _library_weights(name: str, path: Path) -> Path:
    """A state dict of backbone ``name`` in its library's own keys (timm's), randomly
    initialised: what ``--pretrained`` reads, without a download."""
    import timm

    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_every_paper_preset_runs_on_its_fixture_at_smoke_scale(preset: str,
                                                               tmp_path: Path) -> None:
    """The preset's protocol on a fixture in its dataset's published layout, one epoch
    at a small size: it trains, evaluates and shows the paper's numbers beside ours. A
    preset that starts from ImageNet weights gets a randomly initialised state dict of
    its backbone in timm's keys (the file format, not the weights, is under test)."""
    cfg = config.resolve(preset)
    fx = dataset_fixtures.BUILDERS[cfg.dataset](tmp_path / "data")
    methods = _smoke_methods(cfg)
    # a ResNet-110 after one step overflows in eval mode (its batch-norm statistics are
    # still the initial ones): the CIFAR presets run on the smoke preset's backbone
    small = (["--backbone", "cifar-resnet8"] if cfg.dataset.startswith("cifar")
             else ["--set", "dataset_kwargs.image_size=32"])
    if cfg.needs_pretrained:
        small += ["--pretrained", str(_library_weights(cfg.backbone, tmp_path / "w.pt"))]
    rc = run.main(["--preset", preset, "--data-dir", str(fx.root), "--methods", ",".join(methods),
                   "--explainers", "native", "--set", "train.epochs=1",
                   "--set", "train.batch_size=4", *small, "--out", str(tmp_path / "o"),
                   "--cache-dir", str(tmp_path / "c"), "--db", str(tmp_path / "r.sqlite"),
                   "--no-progress", "--workers", "0"])
    assert rc == 0
    board = pd.read_csv(tmp_path / "o" / "leaderboard.csv")
    assert list(board["method"]) == methods and set(board["dataset"]) == {cfg.dataset}
    quoted = {v.method for v in paper_values.PAPER_VALUES[preset]} & set(methods)
    assert quoted
    if cfg.dataset.startswith("cifar"):  # another backbone: another experiment
        assert not (tmp_path / "o" / "paper.csv").exists()
    else:
        assert quoted <= set(pd.read_csv(tmp_path / "o" / "paper.csv")["method"])


def test_schedules_follow_the_papers() -> None:
    abn = config.resolve("abn-cifar100")
    assert (abn.train.epochs, abn.train.batch_size, abn.train.lr) == (300, 256, 0.1)
    assert train.epoch_milestones(abn.train.milestones, 300) == [150, 225]
    disc = config.resolve("discattn-cifar100")
    assert train.epoch_milestones(disc.train.milestones, 160) == [81, 122]  # Sec. 4.1
    assert (disc.train.batch_size, disc.train.weight_decay) == (128, 5e-4)
    cub = config.resolve("discattn-cub200-2011")
    assert train.epoch_milestones(cub.train.milestones, 90) == [30, 60]
    assert cub.needs_pretrained and cub.dataset_kwargs["image_size"] == 448
    ms = config.resolve("msabn-cub200-2011")
    assert ms.dataset_kwargs["image_size"] == 352 and ms.pretrained is None  # from scratch
    assert train.method_config("msabn-cr", ms).train.epochs == 50  # Sec. 4.3


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_values_name_other_backbones_only_where_the_table_has_them(preset: str) -> None:
    """A value's own backbone is another registered one (None: the preset's); each
    (backbone, method, metric) is quoted once."""
    cfg = config.resolve(preset)
    seen = set()
    for v in paper_values.PAPER_VALUES.get(preset, ()):
        assert v.backbone is None or (v.backbone in backbones.BACKBONES
                                      and v.backbone != cfg.backbone), v
        key = (v.backbone or cfg.backbone, v.method, v.metric)
        assert key not in seen, key
        seen.add(key)


def test_the_papers_rows_follow_the_runs_backbone() -> None:
    """ABN Table 2 on CIFAR-10: ResNet-110 6.43 / 4.91, WRN-28-4 4.00 / 3.78; a backbone
    the table does not report, or another dataset, shows nothing."""
    def shown(preset: str, dataset: str, backbone: str) -> dict[str, float]:
        cfg = config.resolve(preset)
        return {v.method: v.value for v in paper_values.for_run(
            preset, dataset, backbone, cfg.preset_dataset, cfg.preset_backbone)}

    assert shown("abn-cifar10", "cifar10", "cifar-resnet110") == pytest.approx(
        {"baseline": 0.9357, "abn": 0.9509})
    assert shown("abn-cifar10", "cifar10", "cifar-wrn28-4") == pytest.approx(
        {"baseline": 0.96, "abn": 0.9622})
    assert shown("abn-cifar10", "cifar10", "cifar-resnet8") == {}
    # --backbone leaves the preset's own backbone as it is: the rows follow the run's
    moved = config.resolve("abn-cifar10", sets=["backbone=cifar-wrn28-4"])
    assert (moved.backbone, moved.preset_backbone) == ("cifar-wrn28-4", "cifar-resnet110")
    assert [v.backbone for v in paper_values.for_run(
        moved.preset, moved.dataset, moved.backbone, moved.preset_dataset,
        moved.preset_backbone)] == ["cifar-wrn28-4"] * 2
    assert shown("abn-cifar10", "cifar100", "cifar-wrn28-4") == {}
    # CIFAR-100: Table 1 for the preset's ResNet-110, Table 2 for the others
    assert shown("abn-cifar100", "cifar100", "cifar-resnext29-8x64d") == pytest.approx(
        {"baseline": 0.8168, "abn": 0.823})
    assert shown("abn-svhn", "svhn", "cifar-densenet-bc100") == pytest.approx(
        {"baseline": 0.9793, "abn": 0.9799})
    imagenet = shown("abn-imagenet", "imagenet", "resnet152")
    assert imagenet == pytest.approx({"baseline": 0.7781, "cam": 0.7789, "abn": 0.7863})
    assert shown("abn-imagenet", "imagenet", "vgg16-bn") == pytest.approx(
        {"baseline": 0.7376, "abn": 0.7445})
    assert shown("abn-imagenet", "imagenet", "seresnet152")["abn"] == pytest.approx(0.7923)
    # ABN Table 3: the model and maker columns, ResNet101 and VGG16 rows
    assert shown("abn-compcars", "compcars", "resnet101") == pytest.approx(
        {"baseline": 0.902, "abn": 0.971})
    assert shown("abn-compcars-make", "compcars-make", "vgg16") == pytest.approx(
        {"baseline": 0.904, "abn": 0.929})
    # discattn Table 3: top-1 and top-5 per row, N = 30 and N = 60 apart
    cal = [(v.method, v.metric, v.value) for v in paper_values.for_run(
        "discattn-caltech256-30", "caltech256", "vgg19", "caltech256", "resnet18")]
    assert ("discattn-ch", "top1", 0.756) in cal and ("baseline", "top5", 0.9005) in cal
    assert len(cal) == 6 and shown("discattn-caltech256", "caltech256", "resnet18")[
        "discattn-px"] == pytest.approx(0.942)  # the last of a method's: top-5
    # MSABN's EfficientNet-B1 column trains at another batch: its own preset
    assert shown("msabn-imagenet", "imagenet", "efficientnet_b1") == {}
    assert shown("msabn-imagenet-efficientnet-b1", "imagenet", "efficientnet_b1") == \
        pytest.approx({"baseline": 0.6761, "msabn": 0.6908})


def test_the_large_protocols_schedules_follow_the_papers() -> None:
    for preset, epochs, steps, batch in (("abn-cifar10", 300, [150, 225], 256),
                                         ("abn-svhn", 40, [20, 30], 256),
                                         ("abn-imagenet", 90, [45, 68], 256),
                                         ("discattn-imagenet", 90, [30, 60], 256),
                                         ("msabn-imagenet", 90, [30, 60], 512),
                                         ("msabn-imagenet-efficientnet-b1", 90, [30, 60], 256)):
        cfg = config.resolve(preset)
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (epochs, batch, 0.1)
        assert train.epoch_milestones(cfg.train.milestones, epochs) == steps, preset
        assert not cfg.needs_pretrained and cfg.pretrained is None, preset
    assert config.resolve("abn-svhn").dataset_kwargs["extra"] is True  # 604,388 images


def test_another_dataset_keeps_only_the_portable_options() -> None:
    """The default preset's sizes describe cluttered-digits; on a dataset read from
    disk they would silently take a subset, so only photo options carry over."""
    assert config.resolve("default", dataset="cub200-2011").dataset_kwargs == {}
    smoke = config.resolve("smoke", dataset="cub200-2011").dataset_kwargs
    assert smoke == {"n_train": 64, "n_test": 32, "image_size": 64}
    moved = config.resolve("msabn-cub200-2011", dataset="stanford-cars")
    assert moved.dataset == "stanford-cars" and moved.dataset_kwargs["image_size"] == 352
    assert config.resolve("default").dataset_kwargs == {"n_train": 5000, "n_test": 1000}
    # what the user sets for the other dataset stays
    asked = config.resolve("default", dataset="caltech256",
                           sets=["dataset_kwargs.train_per_class=6"]).dataset_kwargs
    assert asked == {"train_per_class": 6}


def test_a_preset_that_needs_weights_says_so_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run.main(["--preset", "discattn-cub200-2011", "--out", str(tmp_path / "o"),
                   "--cache-dir", str(tmp_path / "c"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--pretrained FILE" in err
    rc = run.main(["--preset", "discattn-cub200-2011", "--pretrained", str(tmp_path / "no.pt"),
                   "--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu"])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def _record(preset: str, values: dict[str, list[float]]) -> RunRecord:
    results = [MethodResult(m, 0, {"top1": float(np.mean(v))},
                            {"top1": SeedScores(np.array(v), np.zeros(len(v), int),
                                                np.arange(len(v)))},
                            set(), {}, len(v), 0) for m, v in values.items()]
    pv = paper_values.for_run(preset, "cifar100", "cifar-resnet110", "cifar100",
                              "cifar-resnet110")
    return RunRecord(results=results, analysis=analyse(results, n_resamples=200),
                     gallery_rows=results, meta={"dataset": "cifar100", "backbone": "x",
                                                 "protocol": "", "git_rev": ""},
                     method_meta={}, config={}, gallery_images=np.zeros((0, 2, 2, 3)),
                     paper_values=pv)


def test_the_papers_numbers_beside_ours() -> None:
    """ABN Table 1 (ResNet-110, CIFAR-100): top-1 error 24.14 (plain) and 22.82 (ABN),
    i.e. accuracies 0.7586 and 0.7718. Ours: 0.76 (inside the baseline's interval) and
    0.5 (outside ABN's)."""
    rng = np.random.default_rng(0)
    base = (rng.random(2000) < 0.76).astype(float)
    abn = (rng.random(2000) < 0.5).astype(float)
    rec = _record("abn-cifar100", {"baseline": list(base), "abn": list(abn)})
    table = paper_frame(rec).set_index("method")
    assert table.loc["baseline", "paper"] == pytest.approx(0.7586)
    assert table.loc["abn", "paper"] == pytest.approx(0.7718)
    assert table.loc["baseline", "inside"] == "yes" and table.loc["abn", "inside"] == "no"
    assert "Table 1" in table.loc["abn", "source"]
    assert table.loc["abn", "quoted"] == "top-1 error 22.82 %"
    frame = to_frame(rec)
    assert frame["top1_paper"].tolist() == pytest.approx([0.7586, 0.7718])
    # another dataset or backbone is another experiment: nothing quoted
    assert paper_values.for_run("abn-cifar100", "cifar10", "cifar-resnet110", "cifar100",
                                "cifar-resnet110") == ()


@pytest.mark.parametrize("sets", [["backbone=cifar-resnet8"], ["dataset=cifar10"]])
def test_a_preset_remembers_its_own_dataset_and_backbone_under_overrides(
        sets: list[str]) -> None:
    """--backbone / --set name another experiment: the preset's own dataset and backbone
    (what its paper values are for) are those it names, not the overrides."""
    cfg = config.resolve("abn-cifar100", sets=sets)
    assert (cfg.preset_dataset, cfg.preset_backbone) == ("cifar100", "cifar-resnet110")
    assert (cfg.dataset, cfg.backbone) != ("cifar100", "cifar-resnet110")
    assert paper_values.for_run(cfg.preset, cfg.dataset, cfg.backbone, cfg.preset_dataset,
                                cfg.preset_backbone) == ()


def test_cifar_resnets_block_types() -> None:
    """He et al.'s basic-block ResNet-110 has 1.7 M parameters (the discriminative-
    attention paper's Table 2); ABN's code uses bottleneck blocks from depth 44."""
    basic = backbones.build("cifar-resnet110-basic", 100)
    abn = backbones.build("cifar-resnet110", 100)
    n_basic = sum(p.numel() for p in basic.parameters())
    assert round(n_basic / 1e6, 1) == 1.7
    assert isinstance(abn.last_stage[0], backbones.Bottleneck)
    assert isinstance(basic.last_stage[0], backbones.BasicBlock)
    assert len(basic.last_stage) == len(abn.last_stage) == 18


def test_pretrained_weights_initialise_the_backbone_and_the_branch_copy(
        tmp_path: Path, smoke_train: data.Split) -> None:
    cfg = config.resolve("smoke")
    src = backbones.build(cfg.backbone, 10, **cfg.backbone_kwargs)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    weights = tmp_path / "w.pt"
    torch.save(src.state_dict(), weights)
    pcfg = dataclasses.replace(cfg, pretrained=str(weights))
    abn = train.build_method("abn", pcfg, smoke_train)
    own = abn.backbone.state_dict()  # type: ignore[attr-defined]
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):  # the classifier is the dataset's own
            assert torch.equal(own[k], v), k
    # the attention branch's stride-1 stage starts from the pretrained last stage
    stage = abn.attention_branch.stage.state_dict()  # type: ignore[attr-defined]
    for k, v in src.last_stage.state_dict().items():
        assert torch.equal(stage[k], v), k
    fresh = train.build_method("abn", cfg, smoke_train)
    assert not torch.equal(fresh.attention_branch.stage[0].conv1.weight,  # type: ignore[index]
                           src.last_stage[0].conv1.weight)
    # the file's content is part of the checkpoint key, wherever it lives
    k = train.cache_key("abn", pcfg, {})
    assert k != train.cache_key("abn", cfg, {})
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(weights.read_bytes())
    assert train.cache_key("abn", dataclasses.replace(cfg, pretrained=str(moved)), {}) == k
    other = tmp_path / "other.pt"
    torch.save({k2: v + 1 for k2, v in src.state_dict().items()}, other)
    assert train.cache_key("abn", dataclasses.replace(cfg, pretrained=str(other)), {}) != k


def test_weights_that_do_not_fit_list_the_first_mismatching_keys(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save(backbones.build("cifar-resnet20", 10).state_dict(), wrong)
    with pytest.raises(UserError) as err:
        backbones.build("cifar-resnet8", 10, pretrained=str(wrong))
    msg = str(err.value)
    assert "does not fit backbone 'cifar-resnet8'" in msg and "unexpected" in msg
    assert "features.1.1" in msg and "\n" not in msg
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="not a readable state dict"):
        backbones.build("cifar-resnet8", 10, pretrained=str(junk))


def test_model_zoo_files_without_batch_norm_counters_load(tmp_path: Path) -> None:
    """Older torchvision files have no ``num_batches_tracked``; they change no output."""
    import timm

    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    state = {k: v for k, v in src.state_dict().items() if "num_batches_tracked" not in k}
    old = tmp_path / "old.pth"
    torch.save(state, old)
    bb = backbones.build("resnet18", 7, pretrained=str(old))
    assert torch.equal(bb.features[0].weight, src.conv1.weight) and bb.pretrained


def test_the_cosine_schedule_anneals_once_batch_by_batch(smoke_train: data.Split) -> None:
    """discattn Sec. 4.1 (Caltech-256): one cycle of cosine annealing from lr to 0 over
    the whole training, updated after every batch; the step schedule is unchanged."""
    import math

    smoke = config.resolve("smoke")
    n_batches = len(smoke_train.dataset) // 16  # type: ignore[arg-type]
    for schedule in ("cosine", "step"):
        cfg = dataclasses.replace(smoke, train=dataclasses.replace(
            smoke.train, epochs=2, batch_size=16, lr=0.1, schedule=schedule,
            milestones=(0.5,)))
        model = train.build_method("baseline", cfg, smoke_train)
        seen: list[float] = []
        step = model.training_step

        def record(batch, optimizers, run, _step=step, _seen=seen):  # type: ignore[no-untyped-def]
            _seen.append(optimizers[0].param_groups[0]["lr"])
            return _step(batch, optimizers, run)

        model.training_step = record  # type: ignore[method-assign]
        train.fit(model, cfg, smoke_train, torch.device("cpu"), progress=False)
        total = 2 * n_batches
        want = ([0.1 * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]
                if schedule == "cosine" else [0.1] * n_batches + [0.01] * n_batches)
        assert seen == pytest.approx(want), schedule
    assert config.resolve("discattn-caltech256").train.schedule == "cosine"
    with pytest.raises(UserError, match="schedule"):
        config.resolve("smoke", sets=["train.schedule=linear"])


def test_a_non_square_input_resizes_the_whole_image(tmp_path: Path) -> None:
    """ABN Sec. 4.3: CompCars at 323 x 224 px (width x height), the whole image resized
    for training and testing; a crop would need a square."""
    cfg = config.resolve("abn-compcars")
    assert (cfg.dataset_kwargs["image_size"], cfg.dataset_kwargs["width"]) == (224, 323)
    assert cfg.needs_pretrained and cfg.train.batch_size == 32
    assert train.epoch_milestones(cfg.train.milestones, 50) == [25, 35]
    fx = dataset_fixtures.BUILDERS["compcars"](tmp_path / "data")
    for split in ("train", "test"):
        s = data.build("compcars", split, data_dir=fx.root, image_size=32, width=48,
                       train_crop="none", test_crop="none")
        assert s.info.image_size == (32, 48)
        assert s.dataset[0]["image"].shape == (3, 32, 48)
    with pytest.raises(UserError, match="train_crop: none and test_crop: none"):
        data.build("compcars", "test", data_dir=fx.root, image_size=32, width=48)

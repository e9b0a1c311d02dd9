"""Fault injection on the run's input: every number range-checked (command line,
``--set`` and ``--config`` alike), every file the user names checked for what it is,
short error lines — each refused in one line before any run record is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import backbones, config, run, train
from harness.store import Store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("--preset", "smoke", "--no-progress", "--device", "cpu")


def _run(tmp: Path, *args: str) -> int:
    return run.main([*SMOKE, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                     "--db", str(tmp / "db.sqlite"), *args])


def _line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _nothing_written(tmp: Path) -> None:
    """No run record, no checkpoint, no output."""
    if (tmp / "db.sqlite").exists():  # opened and checked before the models were
        with Store(tmp / "db.sqlite", readonly=True) as st:
            assert st.runs(status=None) == []
    assert not list((tmp / "cache").glob("*.pt"))
    assert not (tmp / "out" / "leaderboard.csv").exists()


# --------------------------------------------------------------------------------------
# every number is range-checked up front
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "words"), [
    # once: an untrained model scored, stored as done and published
    ("train.epochs=0", "train.epochs must be an integer in [1, 10000], got 0"),
    ("train.epochs=-1", "train.epochs must be an integer in [1, 10000], got -1"),
    ("train.epochs=99999999999999999999", "train.epochs must be an integer in [1, 10000]"),
    # once: a raw ValueError from torch's SGD
    ("train.lr=-1", "train.lr must be a number > 0, got -1"),
    # once: "training diverged ... lower the learning rate"
    ("train.lr=.nan", "train.lr must be a number > 0, got nan"),
    ("train.lr=.inf", "train.lr must be a number > 0, got inf"),
    # once: ZeroDivisionError / DataLoader's ValueError
    ("train.batch_size=0", "train.batch_size must be an integer in [1, 65536], got 0"),
    ("eval.batch_size=0", "eval.batch_size must be an integer in [1, 65536], got 0"),
    # once: silently scored on all but the last 3 images
    ("eval.causal_n=-3", "eval.causal_n must be an integer in [1, 2147483647], got -3"),
    ("eval.bootstrap=0", "eval.bootstrap must be an integer in [40, 10000], got 0"),
    # once: 8 GB of resampling weights per metric, after the training
    ("eval.bootstrap=1000000", "eval.bootstrap must be an integer in [40, 10000]"),
    ("eval.gallery_n=-1", "eval.gallery_n must be an integer in [0, 1000], got -1"),
    ("eval.timing_batches=0", "eval.timing_batches must be an integer in [1, 1000], got 0"),
    ("eval.streams=-1", "eval.streams must be an integer in [0, 256], got -1"),
    ("eval.precision=fp16", "eval.precision must be one of auto, fp32, bf16, got 'fp16'"),
    ("train.momentum=5", "train.momentum must be a number in [0, 1], got 5"),
    ("train.weight_decay=-0.1", "train.weight_decay must be a number >= 0, got -0.1"),
    ("train.gamma=0", "train.gamma must be a number in (0, 1], got 0"),
    ("train.milestones=[0.5,2]", "train.milestones must be a list of numbers, each in (0, "
                                 "1], got [0.5, 2]"),
    ("workers=-1", "workers must be an integer or null in [0, 256], got -1"),
    ("methods.abn-amb.train.epochs=0", "methods.abn-amb.train.epochs must be an integer in "
                                       "[1, 10000], got 0"),
    ("methods.abn-amb.train.lr=-0.5", "methods.abn-amb.train.lr must be a number > 0"),
    # once: a TypeError traceback
    ("dataset_kwargs={n_train: {a: 1}}", "dataset_kwargs.n_train must be an integer, "
                                         "got {'a': 1}"),
    ("dataset_kwargs.n_train=99999999999999999999", "dataset_kwargs.n_train must be an "
                                                    "integer in [-2147483647, 2147483647]"),
    ("methods.abn-amb.options.sigma=[1, 2]", "abn-amb: sigma must be a number or 'auto', "
                                            "got [1, 2]"),
    ("methods.abn-amb.options.sigma=.nan", "methods.abn-amb.options.sigma must be a finite "
                                           "number, got nan"),
    # a factory's own ranges, before any run record: once accepted and trained
    ("methods.abn-amb.options.sigma=-5", "abn-amb: sigma must be a number in [0, 1], got -5"),
    ("methods.abn-amb.options.alpha=-1", "abn-amb: alpha must be a number >= 0, got -1"),
    # once: terabytes asked of the digit generator (a MemoryError, exit 1)
    ("dataset_kwargs.n_train=2000000000", "cluttered-digits: n_train must be an integer in "
                                          "[1, 100000], got 2000000000"),
    # PyYAML reads 1e-3 as a string: once "train.lr must be a number, got '1e-3'"
    ("train.lr=-1e-3", "train.lr must be a number > 0, got -0.001"),
    ("backbone_kwargs.stem_stride=two", "cifar-resnet stem_stride must be 1, 2 or 4, got "
                                        "'two'"),
    ("methods.cam.train.epochs=3", "methods.cam.train: cam trains nothing (it explains the "
                                   "trained baseline); its schedule cannot be set"),
])
def test_every_number_is_range_checked_before_any_run_record(
        tmp_path: Path, item: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run(tmp_path, "--methods", "abn-amb,cam", "--set", item)
    line = _line(capsys)
    assert rc == 2 and line.startswith("error: ") and words in line, line
    _nothing_written(tmp_path)


def test_a_config_file_and_the_presets_are_range_checked_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("extends: smoke\ntrain: {epochs: 0}\n")
    assert _run(tmp_path, "--methods", "baseline", "--config", str(f)) == 2
    assert _line(capsys) == (f"error: --config {f}: train.epochs must be an integer in "
                             "[1, 10000], got 0")
    f.write_text("eval: {batch_size: 100000000000000000000000}\n")
    assert _run(tmp_path, "--methods", "baseline", "--config", str(f)) == 2
    assert "eval.batch_size must be an integer in [1, 65536]" in _line(capsys)
    _nothing_written(tmp_path)
    for name in config.PRESETS:  # every shipped preset lies within the ranges
        config.resolve(name)


def test_photo_and_cifar_image_sizes_are_bounded() -> None:
    """An absurd size once went on to allocate it (``image_size`` had no upper bound)."""
    from harness.data.files import IMAGENET_MEAN, IMAGENET_STD, PhotoTransforms
    from harness.errors import UserError

    for size, resize in ((100_000, None), (4, None), (224, 10**6)):
        with pytest.raises(UserError, match=r"dataset_kwargs: (image_size|resize) must be "
                                            r"an integer in \[8, (4096|8192)\]"):
            PhotoTransforms(size, IMAGENET_MEAN, IMAGENET_STD, resize=resize)
    assert config.resolve("smoke", sets=["train.lr=1e-3"]).train.lr == 0.001


def test_a_post_hoc_method_keeps_its_registered_zero_epochs() -> None:
    cfg = config.resolve("smoke", sets=["train.epochs=3"])
    assert train.method_config("cam", cfg).train.epochs == 0
    assert train.method_config("gradcam", cfg).train.epochs == 0
    assert train.method_config("baseline", cfg).train.epochs == 3


@pytest.mark.parametrize(("args", "words"), [
    (("--workers", "1000"), "--workers must be an integer in [0, 256], got 1000"),
    (("--seeds", "1000000"), "--seeds 1000000: a count of seeds must be in [1, 1000]"),
    (("--seed", "4294967296"), "seed 4294967296 is out of range"),
    (("--cr-sweep", "0.1,nan"), "--cr-sweep values must lie in [0, 1]"),
])
def test_command_line_numbers_are_range_checked(
        tmp_path: Path, args: tuple[str, ...], words: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run(tmp_path, "--methods", "msabn-cr", *args)
    line = _line(capsys)
    assert rc == 2 and words in line, line
    _nothing_written(tmp_path)


# --------------------------------------------------------------------------------------
# files given by the user
# --------------------------------------------------------------------------------------


def _special(tmp: Path) -> dict[str, Path]:
    """A directory, a FIFO, a character device and an unreadable file."""
    tmp.mkdir()
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    unreadable = tmp / "secret.pt"
    unreadable.write_bytes(b"x" * 10)
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root reads any file; reading this one fails for anybody
        unreadable = Path("/proc/self/mem")
    return {"directory": tmp, "FIFO": fifo, "character device": Path("/dev/zero"),
            "unreadable": unreadable}


def test_special_files_given_as_files_are_one_line_and_never_read(tmp_path: Path) -> None:
    """In a subprocess with a time limit: ``--pretrained /dev/zero`` once hashed the
    endless device forever, and a FIFO blocks a reader until a writer comes."""
    special = _special(tmp_path / "s")
    for option, kind_word in (("--pretrained", "state dict file"), ("--config", "YAML file")):
        for what, path in special.items():
            proc = subprocess.run(
                [sys.executable, "-m", "harness.run", *SMOKE, "--methods", "baseline",
                 option, str(path), "--out", str(tmp_path / "out"), "--cache-dir",
                 str(tmp_path / "cache"), "--db", str(tmp_path / "db.sqlite")],
                cwd=ROOT, capture_output=True, text=True, timeout=120)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode == 2 and len(lines) == 1, (option, what, proc.stderr)
            expect = ("cannot read it" if what == "unreadable"
                      else f"a {what}, not a {kind_word}")
            assert lines[0].startswith(f"error: {option} {path}: ") and expect in lines[0], \
                lines[0]
    _nothing_written(tmp_path)


def test_special_files_given_as_folders_are_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    special = _special(tmp_path / "s")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for option in ("--data-dir", "--out", "--cache-dir"):
        for what, path in (("a FIFO", special["FIFO"]),
                           ("a character device", special["character device"]),
                           ("a file", afile)):
            rc = _run(tmp_path, "--methods", "baseline", "--dataset", "folder", option,
                      str(path))
            line = _line(capsys)
            assert rc == 2 and line.startswith(f"error: {option} {path}: ") and \
                f"{what}, not a directory" in line, line
    _nothing_written(tmp_path)


def _state(tmp: Path, name: str, broken: bool = False, **save: object) -> Path:
    net = backbones.build("cifar-resnet8", 10, stem_stride=2)
    state = net.state_dict()
    if broken:
        state["features.0.0.weight"][0, 0, 0, 0] = float("nan")
        state["fc.weight"][1, 1] = float("inf")
    path = tmp / name
    torch.save(state, path, **save)  # type: ignore[arg-type]
    return path


def test_weights_with_nan_are_a_problem_of_the_file(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Once: 'baseline: training diverged ... lower the learning rate of the preset'."""
    path = _state(tmp_path, "nan.pt", broken=True)
    assert _run(tmp_path, "--methods", "baseline", "--pretrained", str(path)) == 2
    assert _line(capsys) == (f"error: --pretrained {path}: the file's weights are broken: 2 "
                             "tensor(s) hold NaN or inf (features.0.0.weight, fc.weight); "
                             "use another file")
    _nothing_written(tmp_path)


def test_torch_warnings_on_loading_weights_are_said_in_our_words(tmp_path: Path) -> None:
    """torch's 'Detected pickle protocol 4 ...' and 'looks like a TorchScript archive'
    warnings once reached stderr raw, before a bare exception name."""
    p4 = _state(tmp_path, "p4.pt", pickle_protocol=4)
    script = tmp_path / "script.pt"
    with torch.jit.optimized_execution(False):
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), script)
    for path, words in ((p4, "pickled with protocol 4, which torch's safe loader does not "
                             "read; re-save it with torch.save(state_dict, file)"),
                        (script, "a TorchScript archive; save the model's state_dict() with "
                                 "torch.save")):
        proc = subprocess.run(
            [sys.executable, "-m", "harness.run", *SMOKE, "--methods", "baseline",
             "--pretrained", str(path), "--out", str(tmp_path / "out"), "--cache-dir",
             str(tmp_path / "cache"), "--db", str(tmp_path / "db.sqlite")],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip() == (f"error: --pretrained {path}: not a readable state "
                                       f"dict: {words}"), proc.stderr


# --------------------------------------------------------------------------------------
# error lines stay short
# --------------------------------------------------------------------------------------

LONG = "x" * 10_000


@pytest.mark.parametrize("args", [
    ["--methods", LONG], ["--methods", f"abn,{LONG}"], ["--explainers", LONG],
    ["--preset", LONG], ["--dataset", LONG], ["--set", LONG], ["--set", f"{LONG}=1"],
    ["--set", f"train.epochs={LONG}"], ["--set", "train.epochs=" + "9" * 5000],
    ["--set", f"methods.{LONG}.options.a=1"], ["--set", f"dataset_kwargs.n_train={LONG}"],
    ["--set", f"methods.baseline.options.{LONG}=1"], ["--config", LONG],
    ["--data-dir", LONG], ["--pretrained", LONG], ["--db", LONG], ["--out", LONG],
    ["--cache-dir", LONG], ["--seeds", LONG], ["--seeds", "9" * 5000], ["--seed", LONG],
    ["--reference", LONG], ["--cr-sweep", LONG], ["--device", LONG], ["--precision", LONG],
    ["--engine", LONG], ["--workers", LONG], [LONG],
], ids=lambda a: "-".join(x[:12] for x in a))
def test_an_error_quotes_at_most_80_characters_of_a_value(
        tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Each of these once printed the whole 10,000-character value (or a traceback)."""
    rc = _run(tmp_path, "--methods", "baseline", *args)
    line = _line(capsys)
    assert rc == 2 and line.startswith("error: "), line[:300]
    longest = max((len(m) for m in re.findall(r"x+|9+", line)), default=0)
    assert longest <= 80 and len(line) < 400, line[:300]
    assert re.search(r"\(\d{4,5} characters\)", line) or "too long a name" in line, line

"""Fault injection: bad input, broken cache files, unwritable folders, concurrent runs,
interrupts and misuse of the metric functions. Each ends in one line (or one warning
and a repair), the documented exit status, and earlier results intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import data, run, train
from metrics import causal, confusion, localization

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("--preset", "smoke", "--no-progress", "--device", "cpu")
#: a folder no process can create anything in, root included
UNWRITABLE = Path("/proc/attnbench-cannot-write-here")


def _run(tmp: Path, *args: str, out: str | None = None, cache: str | None = None) -> int:
    return run.main([*SMOKE, "--out", str(tmp / "out") if out is None else out,
                     "--cache-dir", str(tmp / "cache") if cache is None else cache, *args])


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _checkpoints(tmp: Path) -> list[Path]:
    return sorted((tmp / "cache").glob("*.pt"))


# --------------------------------------------------------------------------------------
# options: refused before any work
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (("--seed", "-1"), "seed -1 is out of range"),
    (("--seed", "99999999999999999999"), "out of range"),
    (("--seeds", "0,-3"), "out of range"),
    (("--methods", "all,abn"), "'all' stands alone"),
    (("--methods", "ABN"), "did you mean abn"),
    (("--methods", "Grad-CAM"), "did you mean gradcam"),
    (("--preset", "Smoke"), "unknown --preset"),
    (("--workers", "-2"), "--workers must be an integer in [0, 256]"),
])
def test_bad_options_are_one_line_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
        words: str) -> None:
    rc = _run(tmp_path, "--methods", "baseline", *args)
    line = _one_line(capsys)
    assert rc == 2 and line.startswith("error: ") and words in line, line
    assert not _checkpoints(tmp_path) and not (tmp_path / "out").exists()


def test_unusable_output_and_cache_folders(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("keep me")
    cases = [({"out": ""}, "--out is empty"),
             ({"out": str(afile)}, "is a file"),
             ({"out": str(afile / "below")}, "is a file"),
             ({"cache": str(afile / "cache")}, "is a file")]
    if UNWRITABLE.parent.exists():
        cases += [({"out": str(UNWRITABLE)}, "cannot write there"),
                  ({"cache": str(UNWRITABLE)}, "cannot write there")]
    for where, words in cases:
        rc = _run(tmp_path, "--methods", "baseline", **where)  # type: ignore[arg-type]
        line = _one_line(capsys)
        assert rc == 2 and words in line, (where, line)
        assert not _checkpoints(tmp_path)
    assert afile.read_text() == "keep me"


# --------------------------------------------------------------------------------------
# cache files: validated on read, rebuilt with one warning
# --------------------------------------------------------------------------------------


def _digits_file(tmp: Path) -> Path:
    (path,) = (tmp / "cache" / "data").glob("*test*.npz")
    return path


@pytest.mark.parametrize("fault", ["truncated", "empty", "junk", "missing key", "wrong shape"])
def test_a_broken_cached_data_file_is_rebuilt(tmp_path: Path, fault: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    good = data.build("cluttered-digits", "test", cache_dir=cache, n_test=12)
    path = _digits_file(tmp_path)
    blob = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "junk":
        path.write_bytes(b"\x00junk" * 100)
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if fault == "missing key":
            del arrays["bbox"]
        else:
            arrays["images"] = arrays["images"][:, :, :32]
        np.savez(path, **arrays)  # type: ignore[arg-type]
    data._cached_digits.cache_clear()
    capsys.readouterr()
    again = data.build("cluttered-digits", "test", cache_dir=cache, n_test=12)
    line = _one_line(capsys)
    assert line.startswith("warning: cached data") and "generating it again" in line
    assert torch.equal(again.dataset.images, good.dataset.images)  # type: ignore[attr-defined]
    data._cached_digits.cache_clear()  # repaired on disk: read back without a warning
    data.build("cluttered-digits", "test", cache_dir=cache, n_test=12)
    assert capsys.readouterr().err == ""


def test_a_broken_checkpoint_and_resume_file_mean_training_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--methods", "baseline") == 0
    (ckpt,) = _checkpoints(tmp_path)
    first = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a torn checkpoint
    ckpt.with_suffix(".partial").write_bytes(b"not a resume file")
    capsys.readouterr()
    assert _run(tmp_path, "--methods", "baseline") == 0
    err = capsys.readouterr().err
    assert "warning: unreadable checkpoint" in err and "warning: unreadable resume" in err
    assert "Traceback" not in err
    again = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    # the same training again (the random reference row has no top-1: NaN on both)
    np.testing.assert_array_equal(again["top1"], first["top1"])
    assert not ckpt.with_suffix(".partial").exists()
    train._load(ckpt)  # a whole checkpoint again


def test_resume_after_a_corrupt_resume_file_starts_over(tmp_path: Path,
                                                        smoke_train: data.Split) -> None:
    """fit() with an unreadable resume file: one warning, the model keeps its initial
    weights and trains from epoch 1, as without the file."""
    from harness import config

    cfg = config.resolve("smoke")
    a = train.build_method("baseline", cfg, smoke_train)
    b = train.build_method("baseline", cfg, smoke_train)
    resume = tmp_path / "x.partial"
    resume.write_bytes(b"junk")
    ha = train.fit(a, cfg, smoke_train, torch.device("cpu"), progress=False, resume=resume)
    hb = train.fit(b, cfg, smoke_train, torch.device("cpu"), progress=False)
    assert ha == hb
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_a_resume_file_that_loads_in_part_is_undone(tmp_path: Path,
                                                   smoke_train: data.Split) -> None:
    """A real resume file missing one field: the weights, optimiser and random state it
    restored before failing are undone, so the training equals a fresh one."""
    import dataclasses

    from harness import config

    cfg = config.resolve("smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    cpu = torch.device("cpu")
    resume = tmp_path / "r.partial"
    first = train.build_method("baseline", cfg, smoke_train)
    train.fit(first, cfg, smoke_train, cpu, progress=False, resume=resume)
    state = torch.load(resume, weights_only=True)
    del state["history"]  # everything else restores, then this fails
    torch.save(state, resume)
    a = train.build_method("baseline", cfg, smoke_train)
    ha = train.fit(a, cfg, smoke_train, cpu, progress=False, resume=resume)
    b = train.build_method("baseline", cfg, smoke_train)
    hb = train.fit(b, cfg, smoke_train, cpu, progress=False)
    assert ha == hb and len(ha) == 2
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


# --------------------------------------------------------------------------------------
# concurrent runs, atomic outputs, unexpected errors, interrupts
# --------------------------------------------------------------------------------------


def _cli(tmp: Path, out: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.run", *SMOKE, "--methods", "abn-amb", "--cache-dir",
         str(tmp / "cache"), "--out", str(tmp / out), *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_runs_sharing_a_cache_train_each_checkpoint_once(tmp_path: Path) -> None:
    """Both runs need abn-amb and its parent abn (a child's lock, then its parent's)."""
    procs = [_cli(tmp_path, f"out{i}") for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    frames = [pd.read_csv(tmp_path / f"out{i}" / "leaderboard.csv") for i in range(2)]
    cached = [bool(f["cached"].iloc[0]) for f in frames]
    assert sorted(cached) == [False, True]  # one trained, the other loaded its checkpoint
    np.testing.assert_array_equal(frames[0]["top1"], frames[1]["top1"])
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache").glob("*.pt"))
    assert names == ["abn", "abn-amb"]  # one checkpoint each
    for i in range(2):  # no temporary files left behind
        assert not [p for p in (tmp_path / f"out{i}").iterdir() if ".tmp" in p.name]


def test_a_crash_while_writing_keeps_the_previous_outputs_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The HTML is written in full to a temporary file, then the rename fails (a full
    disk, a kill): the previous page stays whole and the temporary file goes."""
    assert _run(tmp_path, "--methods", "baseline") == 0
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    from harness import safeio

    real = os.replace

    def broken(src: object, dst: object) -> None:
        if str(dst).endswith("leaderboard.html"):
            assert Path(str(src)).stat().st_size > 1000  # the new page, written whole
            raise RuntimeError("disk on fire")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(safeio.os, "replace", broken)
    capsys.readouterr()
    rc = _run(tmp_path, "--methods", "baseline")
    line = _one_line(capsys)
    log = tmp_path / "out" / run.ERROR_LOG
    assert rc == 1 and "RuntimeError: disk on fire" in line and str(log) in line
    assert "Traceback" in log.read_text() and "broken" in log.read_text()
    assert (tmp_path / "out" / "leaderboard.html").read_text() == html  # whole, as before
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]
    rc = _run(tmp_path, "--methods", "baseline", "--debug")
    assert rc == 1 and "Traceback (most recent call last)" in capsys.readouterr().err


def _starting(proc: subprocess.Popen[str]) -> None:
    """Wait until ``proc`` (harness.run) has installed its SIGTERM handler, the first
    thing it does, before the libraries load (seconds: torch alone): from then on both
    Ctrl-C and SIGTERM arrive inside the guarded imports."""
    bit = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = next(ln for ln in status.splitlines() if ln.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & bit:
            return
        time.sleep(0.005)
    raise AssertionError("harness.run never installed its SIGTERM handler")


@pytest.mark.parametrize(("sig", "status", "words"), [
    (signal.SIGINT, 130, "interrupted while starting"),
    # once: killed at once, status -15
    (signal.SIGTERM, 143, "terminated (SIGTERM) while starting"),
])
def test_an_interrupt_while_starting_is_one_line(sig: int, status: int, words: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "harness.run", "--list"], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _starting(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == status and lines == [words], err


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    """What schedulers, ``timeout`` and container runtimes send: once the process died
    at once (status -15), its run left ``running`` in the store. Now one line, the run
    marked ``interrupted``, the finished checkpoint kept and a rerun completes."""
    db = tmp_path / "db.sqlite"
    args = [sys.executable, "-m", "harness.run", "--preset", "smoke", "--device", "cpu",
            "--methods", "abn-amb", "--set", "methods.abn-amb.train.epochs=8",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--db", str(db)]
    proc = subprocess.Popen(args, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TERM": "dumb"})
    assert proc.stdout is not None
    for line in proc.stdout:  # abn (the parent) is trained; abn-amb is training
        if "abn-amb epoch 2/8" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 143, err
    assert lines == ["terminated (SIGTERM): finished checkpoints are kept; rerun to resume"]
    from harness.store import Store

    with Store(db, readonly=True) as st:
        assert [r.status for r in st.runs(status=None)] == ["interrupted"]
    cache = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_file())
    assert next(n for n in cache if n.endswith(".pt")).startswith("abn-")  # the parent, whole
    assert any(n.startswith("abn-amb-") and n.endswith(".partial") for n in cache)
    assert not [n for n in cache if ".tmp" in n]
    train._load(next((tmp_path / "cache").glob("abn-amb-*.partial")))  # a whole resume file
    rerun = subprocess.run([*args, "--no-progress"], cwd=ROOT, text=True,
                           capture_output=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert list((tmp_path / "cache").glob("abn-amb-*.pt"))  # resumed and finished
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_progress_in_a_log_is_one_line_per_epoch(tmp_path: Path) -> None:
    """Not a terminal: no carriage-return bars, a line per epoch and per method with
    elapsed time and ETA."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--preset", "smoke", "--device", "cpu",
         "--methods", "baseline,cam", "--cache-dir", str(tmp_path / "c"), "--out",
         str(tmp_path / "o")], cwd=ROOT, text=True, capture_output=True, timeout=300,
        env={**os.environ, "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    assert "baseline epoch 1/1: loss" in proc.stdout
    # two methods, each under its header, and the random explainer's reference row
    lines = proc.stdout.splitlines()
    first = lines.index(next(ln for ln in lines if ln.startswith("method 1 of 2: ")))
    assert lines[first].startswith("method 1 of 2: baseline (seed 0), elapsed")
    assert lines[first + 1].startswith("    baseline epoch 1/1: loss")
    assert lines[first + 3].startswith("method 2 of 2: cam (seed 0), on baseline's weights, "
                                       "elapsed") and "ETA" in lines[first + 3]
    assert lines[first + 5].startswith("row baseline+random (seed 0), elapsed")


# --------------------------------------------------------------------------------------
# the public metric functions: ValueError naming the argument and the shapes
# --------------------------------------------------------------------------------------


def _model(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3))[:, :2]


@pytest.mark.parametrize(("call", "words"), [
    (lambda s, b: localization.pointing_game(s.clone().index_put_(
        (torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1])),
        torch.tensor(float("nan"))), b), "non-finite"),
    (lambda s, b: localization.bbox_inside_frac(s.expand(-1, 3, -1, -1), b), "3 channels"),
    (lambda s, b: localization.energy_pointing_game(s[0, 0], b), "without a batch"),
    (lambda s, b: localization.pointing_game(s, b[:1]), "1 rows"),
    (lambda s, b: localization.pointing_game(s, b[:, :3]), "expected [B,4]"),
    (lambda s, b: localization.energy_pointing_game(s, b[:, None]), "expected [B,4] xyxy"),
    (lambda s, b: causal.causal_curves(_model, torch.rand(2, 3, 8, 8), s, torch.tensor([0]),
                                       mode="deletion", step=8, substrate="zero"),
     "expected [2]"),
    (lambda s, b: causal.causal_curves(_model, torch.rand(2, 3, 8, 8), s,
                                       torch.tensor([0.0, 1.0]), mode="deletion", step=8,
                                       substrate="zero"), "integer class indices"),
    (lambda s, b: causal.causal_curves(_model, torch.rand(2, 3, 8, 8), s, torch.tensor([0, 5]),
                                       mode="deletion", step=8, substrate="zero"),
     "outside the 2 classes"),
    (lambda s, b: causal.causal_curves(_model, torch.rand(3, 3, 8, 8), s, torch.tensor([0, 1]),
                                       mode="insertion", step=8, substrate="zero"),
     "2 maps"),
    (lambda s, b: causal.causal_curves(_model, torch.rand(3, 8, 8), s, torch.tensor([0, 1]),
                                       mode="insertion", step=8, substrate="zero"),
     "expected [B,C,H,W]"),
    (lambda s, b: confusion.target_pair(torch.zeros(2, 3), torch.tensor([0, 3])),
     "outside the 3 classes"),
    # once silently a hit rate of 0 (an inverted box contains no pixel)
    (lambda s, b: localization.pointing_game(s, b.flip(1)), "boxes row 0 is inverted"),
    (lambda s, b: localization.bbox_inside_frac(s, b[:, [2, 1, 0, 3]]),
     "boxes row 0 is inverted (4, 0, 0, 4)"),
    (lambda s, b: localization.energy_pointing_game(s, b[:, [0, 3, 2, 1]]), "is inverted"),
    (lambda s, b: localization.pointing_game(s, torch.stack([b, b.flip(1)], 1)),
     "boxes image 0, object 1 is inverted"),
    # once: a negative tolerance silently counted as no tolerance
    (lambda s, b: localization.pointing_game(s, b, tolerance=-1.0),
     "tolerance must be a finite number of pixels >= 0, got -1"),
    (lambda s, b: localization.pointing_game(s, b, tolerance=float("nan")),
     "tolerance must be a finite number of pixels >= 0, got nan"),
    # once: a ZeroDivisionError / an empty interpolation from torch
    (lambda s, b: localization.pointing_game(s, b, original_sizes=torch.tensor([[8, 8],
                                                                                 [0, 8]])),
     "original_sizes row 1 is (0, 8): sizes must be positive"),
    (lambda s, b: localization.pointing_game(s, b, original_sizes=torch.tensor([[-4, 8],
                                                                                 [8, 8]])),
     "original_sizes row 0 is (-4, 8)"),
    (lambda s, b: confusion.siou_confusion(torch.full((1, 2, 4, 4), float("inf"))),
     "non-finite"),
])
def test_metric_functions_refuse_misuse(call: object, words: str) -> None:
    sal = torch.rand(2, 1, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 8.0]])
    with pytest.raises(ValueError) as err:
        call(sal, boxes)  # type: ignore[operator]
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_lock_is_not_taken_twice_by_one_process(tmp_path: Path) -> None:
    from harness.safeio import key_lock

    with key_lock(tmp_path / "x.pt"), pytest.raises(RuntimeError, match="already held"):
        with key_lock(tmp_path / "x.pt"):
            pass
    with key_lock(tmp_path / "x.pt"):  # released: taken again
        pass


def test_the_evaluator_scores_broken_maps_with_a_warning(
        capsys: pytest.CaptureFixture[str]) -> None:
    from harness.evaluate import finite

    maps = torch.ones(3, 1, 4, 4)
    maps[1, 0, 2, 2] = float("nan")
    maps[2, 0, 0, 0] = float("inf")
    fixed = finite(maps, "abn explanations")
    assert torch.isfinite(fixed).all() and fixed[1, 0, 2, 2] == 0 and fixed[0].eq(1).all()
    line = _one_line(capsys)
    assert line.startswith("warning: abn explanations: 2 map(s) with NaN or inf")
    assert finite(torch.ones(2, 4), "x").eq(1).all() and capsys.readouterr().err == ""


def test_metric_functions_on_an_empty_batch_return_empty_results() -> None:
    sal, boxes = torch.zeros(0, 8, 8), torch.zeros(0, 4)
    for fn in (localization.pointing_game, localization.energy_pointing_game,
               localization.bbox_inside_frac):
        assert fn(sal, boxes).shape == (0,)
    curves = causal.causal_curves(_model, torch.zeros(0, 3, 8, 8), sal,
                                  torch.zeros(0, dtype=torch.long), mode="deletion", step=8,
                                  substrate="zero")
    assert curves.shape == (0, 9)
    assert confusion.siou_confusion(torch.zeros(0, 2, 4, 4)).shape == (0,)

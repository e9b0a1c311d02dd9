"""Fault suite, ``--dry-run``: a dry run is dry. It answers in seconds and takes about
a GB beyond its imports whatever the preset's scale (ResNet-50 at 352 px once took
minutes and 11-13 GB), because it times the steps at a reduced batch and image size and
scales the time up; its output says so, and the scaling arithmetic is checked against
known answers."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from harness import config, data, dryrun
from harness.data import DatasetInfo

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: generous bounds for the dry run of a ResNet-50 preset at 352 px (measured on a 2-core
#: CPU: its baseline 0.5-0.6 GB and 8 s, the whole preset 1.25 GB and 34 s, mostly the
#: weights, gradients and optimiser state of MSABN at their real size; before the fix the
#: baseline took 2.6 GB, and the whole preset ~11 GB at the 200 s mark, unfinished).
#: The RSS bound is on the growth over the process's peak after importing the harness
#: (torch alone maps ~0.7 GB here, which varies by build); the wall-time bound is a
#: gross-regression guard only, for a busy 2-core machine where one timed step can take
#: ten times its quiet time.
MAX_GROWTH_MB = 1600
MAX_WALL_SECONDS = 150

#: the child: the dry run in-process, then its own peak RSS (before and after, kB)
CHILD = """
import resource, sys
from harness import run
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rc = run.main(sys.argv[1:])
print(f"MAXRSS {before} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
sys.exit(rc)
"""


def _preset(name: str) -> tuple[config.RunConfig, DatasetInfo]:
    """The preset's config and its dataset's info (at the preset's image size), as a
    dry run without the data has them."""
    cfg = config.resolve(name)
    meta = data.DATASETS.entry(cfg.dataset).meta
    size = int(cfg.dataset_kwargs.get("image_size", meta.get("image_size", 64)))
    return cfg, DatasetInfo(name=cfg.dataset, num_classes=int(meta.get("num_classes", 10)),
                            image_size=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3,
                            has_boxes=True)


def _fake_timer(seconds: list[float], calls: list[Any]) -> Callable[..., float]:
    """A stand-in for :func:`harness.dryrun._timed`: its calls take ``seconds`` in turn
    (then the last again); the function to time is recorded, never run."""
    def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
        calls.append(fn)
        return seconds[min(len(calls), len(seconds)) - 1]

    return timed


@pytest.mark.parametrize("methods", ["baseline", pytest.param("all", marks=pytest.mark.slow)])
def test_dry_run_of_a_352px_resnet50_preset_without_data_is_small_and_quick(
        tmp_path: Path, methods: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_DATA"}
    args = ["--preset", "msabn-cub200-2011", "--methods", methods, "--dry-run",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "official sizes" in out and "352 px" in out
    # what was timed: 112 px images, at most the real batch, scaled to the real scale
    m = re.search(r"training steps timed at batch (\d+)(?:-(\d+))?, 112 px and scaled to "
                  r"batch 16, 352 px; evaluation forwards timed at batch \d+(?:-\d+)?, 112 px "
                  r"and scaled to 352 px", out)
    assert m, out
    assert int(m.group(1)) == dryrun.FIRST_BATCH and int(m.group(2) or m.group(1)) <= 16
    before, peak = map(int, re.findall(r"MAXRSS (\d+) (\d+)", out)[0])
    assert (peak - before) / 1024 < MAX_GROWTH_MB, (before, peak)
    assert wall < MAX_WALL_SECONDS
    assert not (tmp_path / "out").exists()


def test_steps_are_timed_at_a_reduced_scale_and_scaled_by_images_times_pixels(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A fake timer gives the known answer: training steps of 0.6 s at 2 images of 112 px
    (EXPENSIVE_SECONDS or more: the next batch is only twice as large) and 0.9 s at 4,
    forward passes of 0.05, 0.11 and 0.35 s at 2, 8 and 32 images (the first call of
    TARGET_SECONDS or more ends a ladder); each line through its smallest and largest
    point, evaluated at batch 16 (training) and 32 (forward), 352 px."""
    calls: list[Any] = []
    monkeypatch.setattr(dryrun, "_timed", _fake_timer([0.6, 0.9, 0.05, 0.11, 0.35], calls))
    cfg, info = _preset("msabn-cub200-2011")
    (p,) = dryrun.plan(["baseline"], cfg, info, 5994, 5794, CPU, say=lambda _: None)
    assert len(calls) == 5
    assert p.train_timing == dryrun.Timing((112, 112), ((2, 0.6), (4, 0.9)))
    assert p.eval_timing == dryrun.Timing((112, 112), ((2, 0.05), (8, 0.11), (32, 0.35)))
    small, real = 112 * 112, 352 * 352
    b = (0.9 - 0.6) / ((4 - 2) * small)
    a = 0.6 - b * 2 * small
    assert a == pytest.approx(0.3)
    assert p.step_seconds == pytest.approx(a + b * 16 * real)
    assert p.train_seconds == pytest.approx(p.step_seconds * (5994 // 16) * 300)
    b = (0.35 - 0.05) / ((32 - 2) * small)
    a = 0.05 - b * 2 * small
    per_image = (a + b * 32 * real) / 32
    # per causal image: the curves (353 steps each), the confidence change (2), ROAD (18),
    # the randomisation test (2 G - 1 explanations, G = 7 groups of ResNet-50: fc,
    # layer4, layer3, layer2, layer1, bn1, conv1) and robustness (10 explanations), an
    # explanation counted as two forward passes
    per_causal = 2 * (352 + 1) + 2 + 18 + 2 * (2 * 7 - 1) + 2 * 10
    assert p.eval_seconds == pytest.approx(per_image * (5 * 5794 + per_causal * 1000))
    dryrun.report([p], cfg, info, (5994, 5794), True, CPU, 1)
    out = capsys.readouterr().out
    assert ("training steps timed at batch 2-4, 112 px and scaled to batch 16, 352 px; "
            "evaluation forwards timed at batch 2-32, 112 px and scaled to 352 px") in out


def test_a_small_preset_is_timed_at_its_real_scale(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Where a step is fast the timed batch grows to the real one (64 px images are
    not reduced): the default preset's estimate is its measured step, not a scaled one."""
    monkeypatch.setattr(dryrun, "_timed", _fake_timer([0.01], []))
    cfg, info = _preset("default")
    assert info.image_size == (64, 64)
    (p,) = dryrun.plan(["baseline"], cfg, info, 5000, 1000, CPU, say=lambda _: None)
    assert p.train_timing is not None and p.eval_timing is not None
    assert p.train_timing.size == (64, 64) and p.train_timing.batches == (2, 8, 32, 64)
    assert p.step_seconds == pytest.approx(0.01)  # a = 0.01, b = 0: the timed value
    assert p.eval_timing.batches[-1] == min(cfg.eval.batch_size, dryrun.MAX_TIMED_IMAGES)
    dryrun.report([p], cfg, info, (5000, 1000), False, CPU, 1)
    assert "training steps timed at batch 2-64, 64 px (the real scale)" in capsys.readouterr().out


def test_the_scaling_arithmetic_gives_known_answers() -> None:
    # a linear cost (0.05 s a call + 1 us a pixel of an image) is recovered exactly
    px = 112 * 112
    points = dryrun.ladder(lambda n: 0.05 + 1e-6 * n * px, cap=16)
    assert [n for n, _ in points] == [2, 8, 16]  # 0.075 s, 0.150 s, then the cap
    timing = dryrun.Timing((112, 112), tuple(points))
    a, b = dryrun.fit([(n * px, t) for n, t in points])
    assert (a, b) == (pytest.approx(0.05), pytest.approx(1e-6))
    assert timing.seconds(16, (352, 352)) == pytest.approx(0.05 + 1e-6 * 16 * 352 * 352)
    # two batches at least (the second only twice the first after an expensive call),
    # then up to the first call of TARGET_SECONDS or more
    assert dryrun.ladder(lambda n: 0.1 * n, cap=64) == [(2, pytest.approx(0.2)),
                                                        (8, pytest.approx(0.8))]
    assert dryrun.ladder(lambda n: 0.3 * n, cap=64) == [(2, pytest.approx(0.6)),
                                                        (4, pytest.approx(1.2))]
    assert dryrun.ladder(lambda n: 0.01, cap=1) == [(1, 0.01)]
    # one point: proportional; noise (the larger batch faster) never gives a < 0 or b < 0
    assert dryrun.fit([(100.0, 1.0)]) == (0.0, 0.01)
    assert dryrun.fit([(100.0, 1.0), (400.0, 0.9)]) == (0.9, 0.0)
    a, b = dryrun.fit([(100.0, 0.1), (200.0, 1.0)])  # steeper than proportional: a = 0
    assert a == 0.0 and b == pytest.approx(1.0 / 200)
    # sizes: the longer side down to TIMED_SIDE, multiples of 16; small images unchanged
    assert dryrun.timed_size((352, 352)) == (112, 112)
    assert dryrun.timed_size((448, 224)) == (112, 64)
    assert dryrun.timed_size((64, 64)) == (64, 64) and dryrun.timed_size((32, 32)) == (32, 32)
    assert math.isclose(dryrun.Timing((2, 2), ((1, 1.0),)).seconds(3, (4, 4)), 12.0)


def test_a_timing_takes_the_fastest_call_after_a_warm_up_and_stops_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake clock: the first (untimed) call is the slow one; cheap calls are
    repeated TIMED_STEPS times, an expensive one (TARGET_SECONDS or more) once."""
    now = [0.0]
    monkeypatch.setattr(dryrun, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def calls_taking(durations: list[float]) -> tuple[Callable[[], None], list[float]]:
        done: list[float] = []

        def fn() -> None:
            done.append(durations[len(done)])
            now[0] += done[-1]

        return fn, done

    fn, done = calls_taking([5.0, 0.05, 0.03, 0.04, 0.01])
    assert dryrun._timed(fn, CPU, dryrun.TIMED_STEPS) == pytest.approx(0.03)
    assert len(done) == 4
    fn, done = calls_taking([5.0, 0.3, 0.1])
    assert dryrun._timed(fn, CPU, dryrun.TIMED_STEPS) == pytest.approx(0.3)
    assert len(done) == 2

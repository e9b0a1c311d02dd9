"""The causal metrics' forward batch (metrics/tuning.py): chosen from passes timed in
turn, adapted while the passes run, bounded in what the trials cost, and never a
change to the scores beyond float rounding."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metrics import causal, tuning
from metrics.tuning import BatchTuner


class Machine:
    """A fake clock and a model whose passes advance it: ``per_image(b)`` seconds per
    image at batch ``b``, times a burst factor (another process taking the cores) on
    a random share of the passes, and times ``load`` during sustained busy spells."""

    def __init__(self, per_image: Callable[[int], float], seed: int, *, burst_p: float = 0.3,
                 spell_p: float = 0.02) -> None:
        self.t = 0.0
        self.per_image = per_image
        self.rng = random.Random(seed)
        self.burst_p, self.spell_p = burst_p, spell_p
        self.load, self.spell = 1.0, 0

    def clock(self) -> float:
        return self.t

    def run(self, n: int) -> None:
        if self.spell:
            self.spell -= 1
        elif self.rng.random() < self.spell_p:  # a busy spell of 20-80 passes
            self.spell, self.load = self.rng.randint(20, 80), self.rng.uniform(1.5, 3)
        load = self.load if self.spell else 1.0
        burst = self.rng.uniform(2, 6) if self.rng.random() < self.burst_p else 1.0
        self.t += n * self.per_image(n) * load * burst

    def model(self, x: torch.Tensor) -> torch.Tensor:
        self.run(len(x))
        return x.flatten(1)[:, :3] * 2.0  # row-wise, no reduction: batch-independent


def u_shaped(b: int) -> float:
    """Best at 32 (1.5); 16 and 64 within 10 %; 8 and 128 38 % slower; 512 3.4x."""
    return 1 + 8 / b + b / 128


def sharp(b: int) -> float:
    """Best at 32 (2.0); 16 and 64 12.5 % slower, beyond the tuner's 10 % margin."""
    return 1 + 16 / b + b / 64


def run_tuner(tuner: BatchTuner, machine: Machine, passes: int) -> None:
    for _ in range(passes):
        size = tuner.size()
        t0 = machine.clock()
        machine.run(size)
        tuner.observe(size, size, machine.clock() - t0)


SIZES = tuning.BATCH_CANDIDATES


@pytest.mark.parametrize("start", [8, 32, 512])
def test_the_tuner_settles_near_the_best_batch_despite_bursts(start: int) -> None:
    """From any start, with 30 % of passes slowed 2-6x and busy spells, the size in use
    after 800 passes and the one that scored most images are within a factor 2 of the
    best (32), on 25 random noise sequences."""
    for seed in range(25):
        m = Machine(u_shaped, seed)
        tuner = BatchTuner(SIZES, start, clock=m.clock)
        run_tuner(tuner, m, 800)
        assert 16 <= tuner.current <= 64, (seed, tuner.current, dict(tuner.passes))
        used = tuning.summary({}, tuner.usage())["forward_batch"]
        assert 16 <= used <= 64, (seed, used)


def test_without_noise_the_tuner_reaches_the_best_and_stays() -> None:
    m = Machine(sharp, 0, burst_p=0, spell_p=0)
    tuner = BatchTuner(SIZES, 512, clock=m.clock)
    run_tuner(tuner, m, 300)
    assert tuner.current == 32
    switches = tuner.switches
    run_tuner(tuner, m, 300)
    assert tuner.current == 32 and tuner.switches == switches  # no flapping


def test_the_trials_cost_a_few_per_cent_at_most() -> None:
    """Every neighbour 3x slower per image: each trial is pure loss, and trials stop
    while they have cost more than the share (3 %) of all passes' time."""
    def steep(b: int) -> float:
        return 1.0 if b == 32 else 3.0

    m = Machine(steep, 0, burst_p=0, spell_p=0)
    tuner = BatchTuner(SIZES, 32, clock=m.clock)
    run_tuner(tuner, m, 3000)
    assert tuner.current == 32
    assert 0 < tuner.cost() <= tuning.SHARE + 0.005
    assert sum(n for s, n in tuner.passes.items() if s != 32) >= 4  # it did look


def test_a_gpu_tuner_grows_to_the_largest_batch_that_is_not_slower() -> None:
    """Per image faster up to 256, flat above: with ``prefer_large`` it climbs while a
    larger batch is not slower; a CPU tuner stays where larger is no clear gain."""
    def gpu(b: int) -> float:
        return 1 + 64 / min(b, 256)

    m = Machine(gpu, 0, burst_p=0, spell_p=0)
    tuner = BatchTuner(tuning.GPU_CANDIDATES, 128, prefer_large=True, clock=m.clock)
    run_tuner(tuner, m, 400)
    assert tuner.current == 2048
    m = Machine(gpu, 0, burst_p=0, spell_p=0)
    tuner = BatchTuner(tuning.GPU_CANDIDATES, 128, clock=m.clock)
    run_tuner(tuner, m, 400)
    assert tuner.current == 256


def test_out_of_memory_drops_the_size_and_larger() -> None:
    tuner = BatchTuner(tuning.GPU_CANDIDATES, 256, prefer_large=True)
    assert tuner.too_big(256) == 128
    assert tuner.sizes == [8, 16, 32, 64, 128] and tuner.current == 128
    tuner.too_big(64)
    assert tuner.current == 32
    small = BatchTuner([8], 8)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="8 perturbed images"):
        small.too_big(8)


def test_a_fixed_tuner_never_moves() -> None:
    m = Machine(u_shaped, 0, burst_p=0, spell_p=0)
    tuner = BatchTuner(SIZES, 512, adaptive=False, clock=m.clock)
    run_tuner(tuner, m, 200)
    assert tuner.current == 512 and set(tuner.passes) == {512}
    with pytest.raises(ValueError, match="start 24"):
        BatchTuner(SIZES, 24)


def test_summary_names_the_batch_that_scored_most_images() -> None:
    assert tuning.summary({}, {}) == {}
    s = tuning.summary({16: 100}, {16: 164, 32: 960, 64: 128})
    assert s == {"forward_batch": 32, "images_per_batch": {16: 64, 32: 960, 64: 128}}


def test_choose_batch_is_robust_to_bursts() -> None:
    """The up-front choice (one shape, for torch.compile): a tuner run on copies of the
    sample until it settles, on the noisy fake machine: within a factor 2 of the best on
    25 noise sequences, and remembered per key."""
    sample = torch.zeros(3, 4, 4)
    for seed in range(25):
        m = Machine(u_shaped, seed, burst_p=0.3, spell_p=0.05)
        tuning._CHOSEN.clear()
        assert 16 <= tuning.choose_batch(m.model, sample, key=("toy",), clock=m.clock) <= 64
        assert m.t < 300 * 32 * u_shaped(32)  # settled well before its pass limit
    t = m.t
    tuning.choose_batch(m.model, sample, key=("toy",), clock=m.clock)
    assert m.t == t  # not timed again
    tuning._CHOSEN.clear()


def test_choose_batch_stays_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "_CHOSEN", {})
    sample = torch.zeros(3, 4, 4)
    tried: list[int] = []
    m = Machine(lambda b: 1 / b, 0, burst_p=0, spell_p=0)  # larger is always better

    def model(x: torch.Tensor) -> torch.Tensor:
        tried.append(len(x))
        return m.model(x)

    budget = 16 * sample.numel() * sample.element_size()
    assert tuning.choose_batch(model, sample, key=("small",), budget=budget,
                               clock=m.clock) == 16
    assert max(tried) == 16
    assert tuning.candidates(sample, budget) == (8, 16)
    assert tuning.candidates(sample, budget, streams=2) == (8,)


def test_choose_streams_one_per_thread_within_the_budget() -> None:
    sample = torch.zeros(3, 8, 8)
    per_image = sample.numel() * sample.element_size()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert tuning.choose_streams(4, sample) == 2
        # the budget holds one pass's images only
        assert tuning.choose_streams(4, sample, budget=4 * per_image) == 1
        assert tuning.choose_streams(4, sample, budget=1) == 1
        assert tuning.choose_streams(4, torch.zeros(3, 8, 8, device="meta")) == 1
    finally:
        torch.set_num_threads(before)


def _inputs(b: int = 6, h: int = 8, w: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, 3, h, w, generator=g), torch.rand(b, h, w, generator=g),
            torch.arange(b) % 3)


@pytest.mark.parametrize("streams", [1, 2])
def test_switching_batches_mid_run_leaves_the_scores_unchanged(streams: int) -> None:
    """A tuner that moves (from 64 or 8) while the curves are computed scores every
    image as one fixed batch does: bitwise for a model without cross-row arithmetic,
    within float rounding for a convolutional one."""
    x, sal, cls = _inputs(b=12)
    kw = {"mode": "deletion", "step": 2, "substrate": "blur", "streams": streams}
    m = Machine(sharp, 1, burst_p=0.1, spell_p=0)
    fixed = causal.causal_curves(m.model, x, sal, cls, batch_size=16, **kw)
    for t in (BatchTuner(SIZES, 64, clock=m.clock, period=1, share=1.0),
              BatchTuner(SIZES, 8, clock=m.clock, period=1, share=1.0)):
        # 12 images x 33 steps a call: the tuner keeps adapting (with two streams the
        # passes' order, hence the fake clock's, follows the threads: until it switched)
        for calls in range(40):
            got = causal.causal_curves(m.model, x, sal, cls, batch_size=t, **kw)
            assert torch.equal(got, fixed)
            if calls >= 7 and t.switches >= 1:
                break
        assert len(t.usage()) >= 2 and t.switches >= 1, dict(t.passes)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).eval()
    ref = causal.causal_curves(net, x, sal, cls, batch_size=7, **kw)
    moving = BatchTuner(SIZES, 8, clock=m.clock, period=1, share=1.0)

    def timed(z: torch.Tensor) -> torch.Tensor:
        m.run(len(z))
        return net(z)

    for _ in range(4):
        got = causal.causal_curves(timed, x, sal, cls, batch_size=moving, **kw)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert len(moving.usage()) >= 2


def test_a_pass_out_of_memory_is_run_again_smaller() -> None:
    """A pass larger than 16 images raises the out-of-memory error: those rows are
    scored again at 16, every image once, the tuner keeps to 16 and below."""
    x, sal, cls = _inputs()
    m = Machine(lambda b: 1 / b, 0, burst_p=0, spell_p=0)
    seen: list[int] = []

    def model(z: torch.Tensor) -> torch.Tensor:
        seen.append(len(z))
        if len(z) > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return m.model(z)

    tuner = BatchTuner(tuning.GPU_CANDIDATES, 128, prefer_large=True, clock=m.clock)
    got = causal.causal_curves(model, x, sal, cls, mode="insertion", step=4,
                               substrate="zero", batch_size=tuner)
    ref = causal.causal_curves(m.model, x, sal, cls, mode="insertion", step=4,
                               substrate="zero", batch_size=5)
    assert torch.equal(got, ref)
    assert max(tuner.sizes) == 16 and seen[0] == 102  # 6 images x 17 steps, then smaller
    assert sum(n for n in seen if n <= 16) == 6 * 17

    def never(z: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError, match="does not fit in memory"):
        causal.causal_curves(never, x, sal, cls, mode="insertion", step=4,
                             substrate="zero", batch_size=BatchTuner([8, 16], 16))


def test_a_short_last_pass_is_scored_but_not_timed() -> None:
    """The rows left for the last pass are fewer than its size: scored, counted, not
    taken as that size's pace (nor as a trial)."""
    x, sal, cls = _inputs(b=1, h=3, w=3)  # 1 image x 4 steps (step 3)
    m = Machine(u_shaped, 0, burst_p=0, spell_p=0)
    tuner = BatchTuner(SIZES, 32, clock=m.clock)
    causal.causal_curves(m.model, x, sal, cls, mode="deletion", step=3, substrate="zero",
                         batch_size=tuner)
    assert tuner.usage() == {32: 4} and tuner.cost() == 0
    assert np.isclose(tuner._spent, 4 * u_shaped(4))  # counted in the time spent


@pytest.mark.slow
def test_a_run_records_its_forward_batches(tmp_path: Path) -> None:
    """The batch that scored most images, the images at each size, the streams and the
    engine: per row and per model kind in config.yaml and the store's run record, and on
    the protocol line (the page folds them under it); a rerun read from the store
    reports the same."""
    import html
    import re

    import pandas as pd
    import yaml

    from harness import run, store
    from reports.leaderboard import protocol_parts

    db, out = tmp_path / "r.db", tmp_path / "out"
    args = ["--preset", "smoke", "--methods", "abn,cam", "--db", str(db), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert run.main(args) == 0
    doc = yaml.safe_load((out / "config.yaml").read_text())
    kinds = doc["run"]["causal_passes"]
    from harness import device as dev

    engine = dev.resolve_engine("auto", torch.device("cpu"), "fp32", False)  # the default
    assert len(kinds) == 2 and all(f", {engine}, " in k for k in kinds)
    for k, e in kinds.items():
        assert k.startswith(e["model_kind"]) and e["engine"] == engine and e["streams"] >= 1
        used = {int(s): n for s, n in e["images_per_batch"].items()}
        assert set(used) <= set(tuning.BATCH_CANDIDATES)
        assert used[e["forward_batch"]] == max(used.values())
        # smoke: 8 causal images, two curves, at least one perturbed point each
        assert sum(used.values()) >= 8 * 2
    row = doc["methods"]["abn"]["seeds"][0]["causal_passes"]
    assert row["model_kind"].startswith("ABN (") and row["forward_batch"] in tuning.BATCH_CANDIDATES
    protocol = pd.read_csv(out / "leaderboard.csv")["protocol"][0]
    assert "causal forward passes: ABN (" in protocol and "% of the images" in protocol
    # the page folds the passes away under the protocol, one item per model kind
    page = (out / "leaderboard.html").read_text()
    head, passes = protocol.split("; causal forward passes: ")
    assert f"Protocol: {html.escape(head)}." in page and "causal forward passes:" not in page
    folded = page.split('id="causal-passes"')[1].split("</details>")[0]
    items = re.findall(r"<li>(.*?)</li>", folded)
    assert [html.unescape(i) for i in items] == protocol_parts(protocol)[1]
    assert len(items) == len(kinds) and "; ".join(html.unescape(i) for i in items) == passes
    with store.Store(db, readonly=True) as st:
        (info,) = st.runs()
        assert info.meta["causal_passes"].keys() == kinds.keys()
    assert run.main(args) == 0  # everything read from the store: the same record
    again = yaml.safe_load((out / "config.yaml").read_text())
    assert again["run"]["causal_passes"] == kinds
    assert pd.read_csv(out / "leaderboard.csv")["protocol"][0] == protocol

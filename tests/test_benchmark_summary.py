"""The speed suite's end-of-run table and its interleaved timing (benchmarks/conftest.py)."""

from __future__ import annotations

import pytest

from benchmarks import conftest
from benchmarks.conftest import interleaved_medians, summary_table


def test_summary_table_gives_both_medians_and_their_ratio() -> None:
    lines = summary_table([("abn / baseline training step", 0.045, 0.030),
                           ("resnet18: ours / TorchCAM", 1.5, 2.0)])
    assert lines[0].split()[:4] == ["pair", "(measured", "/", "reference)"]
    assert set(lines[1]) == {"-"}
    first, second = lines[2].split(), lines[3].split()
    assert first[-3:] == ["45.00", "30.00", "1.50"]
    assert second[-3:] == ["1500.00", "2000.00", "0.75"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_interleaved_medians_take_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """One warm-up call each, then rounds calling every side in turn; each side's median
    from a clock the calls advance by known amounts."""
    now = [0.0]
    calls: list[str] = []
    cost = {"a": [9.0, 1.0, 3.0, 2.0], "b": [9.0, 10.0, 30.0, 20.0]}

    def side(k: str) -> object:
        def run() -> None:
            now[0] += cost[k][sum(c == k for c in calls)]
            calls.append(k)
        return run

    monkeypatch.setattr(conftest.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(conftest, "QUICK", False)
    t = interleaved_medians({"a": side("a"), "b": side("b")}, repeats=3)  # type: ignore[dict-item]
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert t == {"a": 2.0, "b": 20.0}  # the warm-up calls (9.0) are not counted
    monkeypatch.setattr(conftest, "QUICK", True)
    calls.clear()
    cost = {"a": [0.0, 4.0], "b": [0.0, 5.0]}
    assert interleaved_medians({"a": side("a"), "b": side("b")}) == {"a": 4.0, "b": 5.0}
    assert calls == ["a", "b", "a", "b"]


def test_throughput_table_shows_quiet_and_loaded() -> None:
    lines = conftest.throughput_table({
        ("cifar-resnet8", "eager"): {"quiet": (1.16, "32"), "loaded": (1.02, "16")},
        ("resnet18", "onnxruntime"): {"quiet": (1.33, "64")}})
    assert lines[0].split()[:4] == ["model", "engine", "quiet", "loaded"]
    assert lines[2].split() == ["cifar-resnet8", "eager", "1.16x", "1.02x", "32", "/", "16"]
    assert lines[3].split() == ["resnet18", "onnxruntime", "1.33x", "-", "64", "/", "-"]


def test_competing_load_runs_beside_the_block_and_is_stopped() -> None:
    """The competing process spins while the block runs (its CPU time grows), and is
    gone afterwards, also when the block fails; without load nothing starts."""
    import os
    import time

    def cpu_seconds(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with conftest.competing_load(True, processes=1, seconds=60) as procs:
        (p,) = procs
        t0 = cpu_seconds(p.pid)
        time.sleep(1.0)
        assert cpu_seconds(p.pid) - t0 >= 0.1  # busy, not sleeping (even on a busy CPU)
    assert p.poll() is not None
    with pytest.raises(RuntimeError, match="inside"):
        with conftest.competing_load(True, processes=2, seconds=60) as procs:
            raise RuntimeError("inside")
    assert all(q.poll() is not None for q in procs)
    with conftest.competing_load(False) as procs:
        assert procs == []
    # bounded in time even if never stopped: it ends by itself
    with conftest.competing_load(True, processes=1, seconds=0.3) as procs:
        procs[0].wait(timeout=10)
        assert procs[0].returncode == 0


def test_markdown_report_holds_both_tables_and_where_they_were_measured() -> None:
    text = conftest.markdown_report(
        [("abn / baseline training step", 0.045, 0.030)],
        {("cifar-resnet8", "eager"): {"quiet": (1.2, "32"), "loaded": (2.49, "16")},
         ("resnet18", "onnxruntime"): {"quiet": (1.33, "64")}},
        when="2026-12-06", revision="abc1234", machine="x86_64, 2 CPUs", load=1)
    assert "on 2026-12-06 at revision `abc1234` (x86_64, 2 CPUs)" in text
    assert "beside 1 CPU-bound process:" in text
    assert "| cifar-resnet8 | eager | 1.20× | 2.49× | 32 / 16 |" in text
    assert "| resnet18 | onnxruntime | 1.33× | — | 64 / — |" in text
    assert "| abn / baseline training step | 45.00 | 30.00 | 1.50 |" in text
    # a pipe table: every row of a table has the header's number of cells
    for block in text.split("\n\n"):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        assert len({r.count("|") for r in rows}) <= 1

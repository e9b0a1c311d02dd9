"""The speed suite's end-of-run table (benchmarks/conftest.py)."""

from __future__ import annotations

from benchmarks.conftest import summary_table


def test_summary_table_gives_both_medians_and_their_ratio() -> None:
    lines = summary_table([("abn / baseline training step", 0.045, 0.030),
                           ("resnet18: ours / TorchCAM", 1.5, 2.0)])
    assert lines[0].split()[:4] == ["pair", "(measured", "/", "reference)"]
    assert set(lines[1]) == {"-"}
    first, second = lines[2].split(), lines[3].split()
    assert first[-3:] == ["45.00", "30.00", "1.50"]
    assert second[-3:] == ["1500.00", "2000.00", "0.75"]
    assert len({len(line) for line in lines}) == 1  # aligned columns

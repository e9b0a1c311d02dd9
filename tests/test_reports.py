"""Leaderboard ranking rules."""

from __future__ import annotations

import pandas as pd

from reports.leaderboard import best_values


def test_reference_rows_rank_on_accuracy_only() -> None:
    frame = pd.DataFrame({"method": ["baseline", "cam", "abn"],
                          "top1": [0.95, 0.95, 0.93],
                          "deletion_auc": [0.10, 0.20, 0.15],
                          "explain_ms": [0.01, 0.5, 1.0]})
    ref = pd.Series([True, False, False])
    best = best_values(frame, ["top1", "deletion_auc", "explain_ms"], ref)
    assert best == {"top1": 0.95, "deletion_auc": 0.15, "explain_ms": 0.5}
    assert best_values(frame, ["deletion_auc"]) == {"deletion_auc": 0.10}

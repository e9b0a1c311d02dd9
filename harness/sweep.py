"""The copy-replace annotation sweep (MSABN paper, Sec. 4.3, Figures 8-9).

For every lambda_out, ``msabn-cr`` is fine-tuned from the same trained ``msabn`` with the
images whose attention lies more than lambda_out outside the box as the annotated pool;
its test top-1 is plotted against the annotated share of the training set. The
reference is vanilla fine-tuning (same schedule, nothing annotated), and the ``msabn``
it starts from is shown too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness import train
from harness.config import RunConfig
from harness.data import Split
from harness.errors import UserError, shown
from harness.evaluate import misclassified
from harness.stats import bootstrap_ci

#: the paper's grid on CUB-200-2011 (Sec. 4.3)
PAPER_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: ``auto``: annotate these shares of the training images, worst-localised first
AUTO_SHARES = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
METHOD = "msabn-cr"


@dataclass
class SweepPoint:
    """One fine-tuning (or the parent) and its test top-1 with a 95 % interval.

    ``lambda_out`` is None for vanilla fine-tuning and for the parent; ``share`` is
    the annotated share of the training images (NaN for the parent)."""

    label: str
    lambda_out: float | None
    annotated: int
    share: float
    top1: float
    top1_lo: float
    top1_hi: float
    cached: bool
    train_seconds: float


@dataclass
class CRSweep:
    """The sweep's points (ascending lambda_out), the vanilla reference and the parent."""

    points: list[SweepPoint]
    vanilla: SweepPoint
    parent: SweepPoint

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows for ``cr_sweep.csv``."""
        return [asdict(p) for p in (*self.points, self.vanilla, self.parent)]


def parse_lambdas(spec: str) -> list[float] | None:
    """``--cr-sweep`` values: comma-separated numbers in [0, 1], ``paper`` (the paper's
    grid) or ``auto`` (None: chosen from the attention statistics, see
    :func:`run_cr_sweep`)."""
    if spec.strip() == "auto":
        return None
    if spec.strip() == "paper":
        return list(PAPER_GRID)
    try:
        values = sorted({float(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--cr-sweep expects comma-separated numbers in [0, 1], 'auto' or "
                        f"'paper', got {shown(spec)}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise UserError(f"--cr-sweep values must lie in [0, 1], got {shown(spec)}")
    return values


def top1_with_ci(method: torch.nn.Module, split: Split, device: torch.device,
                 cfg: RunConfig) -> tuple[float, float, float]:
    """Top-1 accuracy on ``split`` and its bootstrap 95 % interval over images."""
    # the evaluation's batch size: under bf16 a prediction can depend on the batch shape
    wrong = misclassified(method, split, device, batch_size=cfg.eval.batch_size,  # type: ignore[arg-type]
                          precision=cfg.eval.precision)
    correct = (~wrong).double().numpy()
    lo, hi = bootstrap_ci(correct, correct, n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
    return float(correct.mean()), lo, hi


def run_cr_sweep(lambdas: Sequence[float] | None, cfg: RunConfig, train_split: Split,
                 test_split: Split, device: torch.device, cache: Path | None, *,
                 progress: bool = True, memo: dict[str, train.Trained] | None = None,
                 say: Callable[..., None] = print) -> CRSweep:
    """Fine-tune ``msabn-cr`` once per lambda_out and once without annotations.

    ``lambdas=None`` (``auto``) annotates :data:`AUTO_SHARES` of the training images
    instead, the worst-localised first (``msabn-cr``'s ``lambda_out="auto"``), so that
    the points spread over the x axis whatever the maps look like (the paper's fixed
    grid bunches up where attention is diffuse or sharp).
    """
    if not train_split.info.has_boxes:
        raise UserError(f"--cr-sweep needs bounding boxes; dataset {train_split.info.name!r} "
                        "has none")
    memo = {} if memo is None else memo
    base = train.method_options(METHOD, cfg)
    n_train = len(train_split.dataset)  # type: ignore[arg-type]

    def point(label: str, options: dict[str, Any]) -> SweepPoint:
        trained = train.obtain(METHOD, cfg, train_split, device, cache, progress=progress,
                               options={**base, **options}, _memo=memo)
        acc = top1_with_ci(trained.method, test_split, device, cfg)
        annotated = int(trained.facts.get("annotated", 0))
        p = SweepPoint(label, trained.facts.get("lambda_out"), annotated, annotated / n_train,
                       *acc, trained.cached, round(trained.train_seconds, 1))
        say(f"  {METHOD} {label:<14} annotated {p.share:6.1%}  top1 {p.top1:.3f} "
            f"[{p.top1_lo:.3f}, {p.top1_hi:.3f}]")
        return p

    parent_model = train.obtain("msabn", cfg, train_split, device, cache, progress=progress,
                                _memo=memo)
    if lambdas is None:
        points = [point(f"worst {s:.0%}", {"lambda_out": "auto", "auto_share": s})
                  for s in AUTO_SHARES]
    else:
        points = [point(f"lambda_out={lam:g}", {"lambda_out": lam}) for lam in lambdas]
    vanilla = point("vanilla", {"lambda_out": None})
    acc = top1_with_ci(parent_model.method, test_split, device, cfg)
    parent = SweepPoint("msabn (before)", None, 0, float("nan"), *acc, parent_model.cached,
                        round(parent_model.train_seconds, 1))
    return CRSweep(points, vanilla, parent)

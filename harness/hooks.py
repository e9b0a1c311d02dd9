"""Declared hooks: what one paper's protocol needs from a run, owned by the method or
metric that needs it, never written into the generic loop.

* :data:`SEED_CONTEXTS`: computed once per training seed before its rows, handed to
  every row's evaluation by name (COMB's images that the reference method
  misclassifies: the ``comb_subset`` of the metrics that declare it in
  :attr:`metrics.base.MetricSpec.options`), with facts for the run's record.
* :data:`RUN_EXTRAS`: run once after every row, when the plan asks for them by name
  (the copy-replace sweep of MSABN, ``--cr-sweep``); their result is stored with the
  run.

A plugin registers its own the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.registry import Registry

if TYPE_CHECKING:
    import torch

    from harness.config import RunConfig
    from harness.data import Split
    from harness.planning import Plan
    from harness.store import Store
    from harness.train import Trained


@dataclass(frozen=True)
class SeedContext:
    """What a seed hook may use: the plan, the methods that run (those the dataset
    supports), the seed's configuration, the splits, a trained model by name (trained
    or read from the cache once per run), its weights digest, and the store (None on
    the other ranks under torchrun)."""

    plan: Plan
    methods: tuple[str, ...]
    cfg: RunConfig
    train_split: Split
    test_split: Split
    obtain: Callable[[str], Trained]
    weights: Callable[[Trained], str]
    store: Store | None
    split_key: str
    read: bool


@dataclass(frozen=True)
class SeedValue:
    """A seed hook's result: ``value`` goes to every row's evaluation under the hook's
    name; ``facts`` are merged into the run's record (a mapping per seed is merged key
    by key over the seeds)."""

    value: Any
    facts: dict[str, Any]


#: name -> ``(SeedContext) -> SeedValue | None`` (None: not needed by this plan)
SEED_CONTEXTS: Registry[Callable[[SeedContext], SeedValue | None]] = Registry(
    "seed context")


@dataclass(frozen=True)
class RunContext:
    """What a run extra may use (after every row of every seed)."""

    plan: Plan
    train_split: Split
    test_split: Split
    memo: dict[str, Trained]
    say: Callable[..., None]
    device: torch.device
    cache: Path | None


#: name -> ``(RunContext, argument) -> a result stored with the run``
RUN_EXTRAS: Registry[Callable[[RunContext, Any], Any]] = Registry("run extra")


def merge_facts(into: dict[str, Any], facts: dict[str, Any]) -> None:
    """``facts`` into ``into``: mappings key by key, other values replaced."""
    for k, v in facts.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k].update(v)
        else:
            into[k] = dict(v) if isinstance(v, dict) else v

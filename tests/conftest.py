"""Shared fixtures: the smoke preset's splits and tiny models, all on CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import methods  # noqa: F401  (registers methods)
import metrics  # noqa: F401  (registers metrics)
from harness import config, data


@pytest.fixture(scope="session")
def smoke_cfg() -> config.RunConfig:
    return config.resolve("smoke")


@pytest.fixture(scope="session")
def smoke_train(smoke_cfg: config.RunConfig) -> data.Split:
    return data.build(smoke_cfg.dataset, "train", **smoke_cfg.dataset_kwargs)


@pytest.fixture(scope="session")
def smoke_test(smoke_cfg: config.RunConfig) -> data.Split:
    return data.build(smoke_cfg.dataset, "test", **smoke_cfg.dataset_kwargs)


def all_hooks(module: nn.Module) -> int:
    """Number of hooks registered anywhere on ``module`` and globally."""
    n = 0
    for m in module.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(m._backward_pre_hooks) + len(getattr(m, "_state_dict_hooks", {}))
    from torch.nn.modules import module as mod

    n += len(mod._global_forward_hooks) + len(mod._global_forward_pre_hooks)
    n += len(mod._global_backward_hooks) + len(mod._global_backward_pre_hooks)
    return n


@pytest.fixture(scope="session", autouse=True)
def _results_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs started by the tests append to a database of their own, not the
    checkout's ``runs/attnbench.sqlite``."""
    from harness.store import DB_ENV

    old = os.environ.get(DB_ENV)
    os.environ[DB_ENV] = str(tmp_path_factory.mktemp("db") / "attnbench.sqlite")
    yield
    if old is None:
        os.environ.pop(DB_ENV, None)
    else:
        os.environ[DB_ENV] = old


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

"""Registry-generated: every method trains one step and explains, on the smoke preset."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from harness import config, data, train
from methods import METHODS, Output
from tests.conftest import all_hooks


@pytest.mark.parametrize("name", METHODS.names())
def test_method_step_and_explain(name: str, smoke_cfg: config.RunConfig,
                                 smoke_train: data.Split) -> None:
    model = train.build_method(name, smoke_cfg, smoke_train)
    hooks0 = all_hooks(model)
    batch = next(iter(DataLoader(smoke_train.dataset, batch_size=4)))
    x, y = batch["image"], batch["label"]
    model.eval()  # as the trainer: analyse the training split, then train
    model.on_fit_start(smoke_train, torch.device("cpu"))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = model.configure_optimizers(smoke_cfg.train)
    logs = model.training_step(batch, opts)
    assert logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    changed = [k for k, v in model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "one training step changed no parameter"
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, Output)
    assert out.logits.shape == (4, smoke_train.info.num_classes)
    assert torch.isfinite(out.logits).all()
    x_req = x.requires_grad
    with torch.no_grad():
        sal = model.explain(x, y)
    assert sal.shape == (4, 1, *x.shape[-2:])
    assert torch.isfinite(sal).all() and (sal >= 0).all()
    assert x.requires_grad == x_req
    assert all_hooks(model) == hooks0, "explain left hooks behind"
    cm = model.class_maps(x, y.view(-1, 1))
    if cm is not None:
        assert cm.shape[:2] == (4, 1) and torch.isfinite(cm).all()


@pytest.mark.parametrize("name", METHODS.names())
def test_explain_does_not_touch_parameter_grads(name: str, smoke_cfg: config.RunConfig,
                                                smoke_train: data.Split) -> None:
    model = train.build_method(name, smoke_cfg, smoke_train).eval()
    x = torch.randn(2, 3, 64, 64)
    model.explain(x, torch.tensor([0, 1]))
    assert all(p.grad is None for p in model.parameters())

"""Methods that fine-tune a trained ABN (``init_from="abn"``).

* ``abn-amb``  — attention mining branch (Iwayoshi et al., 2021; ``amb-2021-*.txt``).
* ``abn-cot``  — ABN + complement objective training (Iwayoshi et al., VISAPP 2023,
  Sec. 3.2, with COT of Chen et al., ICLR 2019; ``comb-2023-*.txt``).
* ``abn-comb`` — ABN + complement objective mining branch (same paper, Sec. 3.3).
* ``abn-hk``   — fine-tuning with edited attention maps (Mitsuhara et al., 2019),
  the human editor simulated by ground-truth boxes.

Choices where the papers are silent are documented on each class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbones import SplitBackbone
from harness.config import TrainConfig
from harness.data import DatasetInfo, Split
from harness.errors import UserError
from harness.geometry import bbox_inside_frac, map_box_mask
from methods.abn import ABN
from methods.base import Output, eval_batches, register_method, upsample

#: the fine-tuning schedule on the embedded default (the paper presets override it)
FINETUNE = {"epochs": 1, "lr": 0.01}


def complement_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The complement-objective loss to *minimise*: ``-C / K``.

    C = (1/N) sum_i H(y_hat_{i, not g}) with the complement distribution
    y_hat_ij / (1 - y_hat_ig) over j != g (COMB Eq. 2/7; Chen et al., ICLR 2019, Eq. 3).
    As in the authors' code: 1e-7 is added to (1 - y_hat_ig) before the division,
    1e-10 inside the log, and the result is divided by K, the number of classes.
    """
    n, k = logits.shape
    probs = F.softmax(logits.float(), dim=1)  # float32 also under bf16 autocast
    yg = probs.gather(1, target.view(-1, 1))
    px = probs / (1.0 - yg + 1e-7)
    not_g = torch.ones_like(probs).scatter_(1, target.view(-1, 1), 0.0)
    return (px * torch.log(px + 1e-10) * not_g).sum() / n / k


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Batch norm in eval mode inside the block (running statistics used, not updated);
    gradients still flow. Restores each layer's mode afterwards, also on exceptions."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in bns]
    try:
        for m in bns:
            m.train(False)
        yield
    finally:
        for m, mode in zip(bns, modes, strict=True):
            m.train(mode)


class ABNFineTune(ABN):
    """An ABN started from the trained ``abn`` checkpoint."""

    init_from = "abn"


class AMB(ABNFineTune):
    """ABN + attention mining branch (AMB paper, Eqs. 1-4).

    T(A) = sigmoid(100 (A - sigma)) on the raw attention map A = M; F* = F - T(A) * F
    (Eq. 2) with F = g(x) the feature extractor's output; F* goes through the
    perception branch's layers with shared weights (the mining branch), S = softmax
    probability of the true class; L = L_att + L_per + alpha * sum_i S_i (Eqs. 3-4).

    Choices: the mining branch takes F* directly (no attention mechanism applied on
    top: F* already is the attention-masked feature map); its forward runs with batch
    norm in eval mode so that the masked pass does not pollute the running statistics.

    Args:
        sigma: mask threshold. ``"auto"`` (the embedded default) sets it before
            fine-tuning from the parent ABN's attention statistics on the training
            images: the (1 - rho) quantile of M, rho = the mean share of map cells
            inside the target box, so that T(A) covers about an object's area.
            The papers use 0.78 (CUB-200-2010) and 0.40 (Stanford Dogs).
        alpha: weight of L_am (1e-4 in the papers).
    """

    name = "abn-amb"
    sigma: torch.Tensor

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo, sigma: float | str = "auto",
                 alpha: float = 1e-4, mechanism: str = "residual") -> None:
        super().__init__(backbone, info, mechanism=mechanism)
        if sigma != "auto" and not isinstance(sigma, (int, float)):
            raise UserError(f"{self.name}: sigma must be a number or 'auto', got {sigma!r}")
        self.alpha = alpha
        self.sigma_option = sigma
        self.register_buffer("sigma", torch.tensor(
            float("nan") if sigma == "auto" else float(sigma)))

    def mask(self, m: torch.Tensor) -> torch.Tensor:
        """T(A) = sigmoid(100 (A - sigma)) (Eq. 1)."""
        if torch.isnan(self.sigma):
            raise RuntimeError(f"{self.name}: sigma='auto' is resolved in on_fit_start")
        return torch.sigmoid(100.0 * (m.float() - self.sigma))  # float32 under autocast

    def mine(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Mining-branch logits on F* = F - T(A) * F, batch norm statistics frozen."""
        f_star = g - self.mask(m) * g
        with frozen_bn_stats(self.backbone):
            return self.backbone.head(self.backbone.last_stage(f_star))

    def loss(self, out: Output, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """L = L_att + L_per + alpha * sum_i S_i (Eq. 4)."""
        base, logs = super().loss(out, batch)
        assert out.features is not None and out.attention is not None
        mined = self.mine(out.features, out.attention)
        s = F.softmax(mined.float(), dim=1).gather(1, batch["label"].view(-1, 1)).sum()
        loss = base + self.alpha * s
        logs.update({"loss": float(loss.detach()), "l_am": float(s.detach())})
        return loss, logs

    def on_fit_start(self, split: Split, device: torch.device) -> dict[str, Any]:
        if self.sigma_option != "auto":
            return {"sigma": float(self.sigma)}
        values, inside = [], []
        for x, boxes, _, _ in eval_batches(split, device):
            with torch.no_grad():
                m = self(x).attention
            assert m is not None
            values.append(m.flatten().cpu())
            share = map_box_mask(boxes, m, tuple(x.shape[-2:])).mean((1, 2, 3))
            inside.append(share[torch.isfinite(boxes).all(1)].cpu())  # images with a box
        shares = torch.cat(inside)
        rho = float(shares.mean()) if len(shares) else 0.2
        v = torch.cat(values)
        sample = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        sigma = float(torch.quantile(sample, 1.0 - rho))
        self.sigma.fill_(sigma)
        return {"sigma": sigma, "sigma_rule": f"quantile {1 - rho:.3f} of M on train"}


class COT(ABNFineTune):
    """ABN + complement objective training (COMB paper Sec. 3.2, Algorithm 1).

    Per batch: (1) L_att + L_per with optimiser 1; (2) a fresh forward and the
    complement-entropy loss on both branches' outputs, summed, with optimiser 2
    (same parameters, its own momentum), as COT alternates two optimisers. Both
    optimisers apply the weight decay, as in the COT authors' code.
    """

    name = "abn-cot"

    def configure_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay) for _ in range(2)]

    def complement_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Step 2's objective on a fresh forward pass."""
        out = self(batch["image"])
        assert out.att_logits is not None
        y = batch["label"]
        return complement_entropy_loss(out.att_logits, y) + complement_entropy_loss(out.logits, y)

    def training_step(self, batch: dict[str, Any],
                      optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, float]:
        opt_ce, opt_comp = optimizers
        loss, logs = self.loss(self(batch["image"]), batch)  # step 1: the CE objective
        _step(opt_ce, loss)
        comp = self.complement_loss(batch)  # step 2: a fresh forward
        _step(opt_comp, comp)
        logs["l_comp"] = float(comp.detach())
        return logs


class COMB(COT, AMB):
    """ABN + complement objective mining branch (COMB paper Sec. 3.3, Algorithm 2).

    Per batch: (1) the AMB objective L_att + L_per + alpha * L_am with optimiser 1;
    (2) a fresh forward and the complement entropy of the mining branch's output
    (on F*) with optimiser 2.
    """

    name = "abn-comb"

    def complement_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self(batch["image"])
        assert out.features is not None and out.attention is not None
        return complement_entropy_loss(self.mine(out.features, out.attention), batch["label"])


class HK(ABNFineTune):
    """Fine-tuning with edited attention maps (Mitsuhara et al., 2019), the human
    editor simulated by the ground-truth box.

    Before fine-tuning, the training samples that the parent ABN misclassifies, or
    whose attention binarised at 0.2 (after per-image min-max) lies mostly (> 50 %)
    outside the box, are selected. For those, the edited map M' = M * box-mask (map
    cells whose centres lie in the box; M detached, so M' is a fixed target) replaces M
    in the perception branch, and L = L_att + L_per + gamma * mean((M - M')^2).
    Unselected samples train as plain ABN. The box follows the augmentation.

    Args:
        gamma: weight of the map-editing term (default 1).
        outside: a sample is selected when more than this share of its binarised
            attention lies outside the box.
    """

    name = "abn-hk"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo, gamma: float = 1.0,
                 outside: float = 0.5, mechanism: str = "residual") -> None:
        super().__init__(backbone, info, mechanism=mechanism)
        if not info.has_boxes:
            raise UserError(f"abn-hk needs bounding boxes; dataset {info.name!r} has none")
        self.gamma, self.outside = gamma, outside
        self.selected = torch.zeros(0, dtype=torch.bool)

    def edit(self, m: torch.Tensor, boxes: torch.Tensor,
             image_size: tuple[int, ...]) -> torch.Tensor:
        """M' = M * box-mask: M inside the box, 0 outside (no gradient)."""
        return m.detach() * map_box_mask(boxes, m, image_size)

    def select(self, x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Samples to edit: misclassified, or attention mostly outside the box."""
        out = self(x)
        assert out.attention is not None
        frac_out = 1.0 - bbox_inside_frac(upsample(out.attention, tuple(x.shape[-2:])), boxes)
        return (out.logits.argmax(1) != y) | (frac_out > self.outside)

    def on_fit_start(self, split: Split, device: torch.device) -> dict[str, Any]:
        selected = torch.zeros(len(split.dataset), dtype=torch.bool)  # type: ignore[arg-type]
        for x, boxes, y, idx in eval_batches(split, device):
            with torch.no_grad():
                selected[idx.cpu()] = self.select(x, y, boxes).cpu()
        self.selected = selected
        return {"edited_samples": int(selected.sum()),
                "edited_share": float(selected.float().mean())}

    def forward_edited(self, batch: dict[str, Any]
                       ) -> tuple[Output, torch.Tensor, torch.Tensor]:
        """Forward where selected samples perceive through M'; returns (out, M, M')."""
        x = batch["image"]
        a = self.attend(x)
        m = a.mechanism
        sel = self.selected.to(x.device)[batch["index"]].view(-1, 1, 1, 1)
        m_edit = torch.where(sel, self.edit(m, batch["bbox"], tuple(x.shape[-2:])), m)
        out = Output(logits=self.perceive(a.features, m_edit), att_logits=a.att_logits,
                     attention=m, class_maps=a.class_maps, features=a.features)
        return out, m[sel.view(-1)], m_edit[sel.view(-1)]

    def training_step(self, batch: dict[str, Any],
                      optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, float]:
        (opt,) = optimizers
        out, m_sel, m_edit = self.forward_edited(batch)
        base, logs = self.loss(out, batch)
        l_map = F.mse_loss(m_sel.float(), m_edit.float()) if len(m_sel) else base.new_zeros(())
        loss = base + self.gamma * l_map
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        logs.update({"loss": float(loss.detach()), "l_map": float(l_map.detach())})
        return logs


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _register(name: str, cls: type[ABN], description: str, **meta: Any) -> None:
    # the class itself is the factory, so its defaults are visible to the cache key
    register_method(name, init_from="abn", attention=True, train=dict(FINETUNE),
                    description=description, **meta)(cls)


_register("abn-amb", AMB, "ABN fine-tuned with the attention mining branch",
          paper="Iwayoshi et al., 2021")
_register("abn-cot", COT, "ABN fine-tuned with complement objective training",
          paper="Iwayoshi et al., VISAPP 2023")
_register("abn-comb", COMB, "ABN fine-tuned with the complement objective mining branch",
          paper="Iwayoshi et al., VISAPP 2023")
_register("abn-hk", HK, "ABN fine-tuned on box-edited attention maps (simulated human)",
          paper="Mitsuhara et al., 2019", needs_boxes=True)

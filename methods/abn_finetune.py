"""Methods that fine-tune a trained ABN (``init_from="abn"``).

* ``abn-amb``  — attention mining branch (Iwayoshi et al., 2021; ``amb-2021-*.txt``).
* ``abn-cot``  — ABN + complement objective training (Iwayoshi et al., VISAPP 2023,
  Sec. 3.2, with COT of Chen et al., ICLR 2019; ``comb-2023-*.txt``).
* ``abn-comb`` — ABN + complement objective mining branch (same paper, Sec. 3.3).
* ``abn-hk``   — fine-tuning with edited attention maps of the misclassified samples
  (Mitsuhara et al., VISAPP 2021), the human editor simulated by ground-truth boxes.

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
from harness.config import TrainConfig, require
from harness.data import DatasetInfo, Split
from harness.distributed import Engine, direct
from harness.errors import UserError, shown
from harness.geometry import map_box_mask
from methods.abn import ABN
from methods.base import Output, descend, eval_batches, register_method

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
            raise UserError(f"{self.name}: sigma must be a number or 'auto', got {shown(sigma)}")
        if sigma != "auto":  # a threshold on the attention map, which lies in [0, 1]
            require(self.name, "sigma", sigma, 0, 1)
        require(self.name, "alpha", alpha, 0, None)
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
        """Step 2's objective on a fresh forward pass (run after step 1's update)."""
        out = self(batch["image"])
        assert out.att_logits is not None
        y = batch["label"]
        return complement_entropy_loss(out.att_logits, y) + complement_entropy_loss(out.logits, y)

    def training_step(self, batch: dict[str, Any],
                      optimizers: Sequence[torch.optim.Optimizer],
                      run: Engine[Any] = direct) -> dict[str, float]:
        opt_ce, opt_comp = optimizers
        # step 1: the CE objective
        loss, logs = run(lambda: self.loss(self(batch["image"]), batch))
        descend(opt_ce, loss)
        comp = run(lambda: self.complement_loss(batch))  # step 2: a fresh forward
        descend(opt_comp, comp)
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
    """Fine-tuning with edited attention maps (Mitsuhara et al., VISAPP 2021, as AMB
    Sec. 1-2 and COMB Sec. 2 describe it: "the attention maps of misclassified samples
    are modified ... the pretrained ABN is then fine-tuned using the modified attention
    maps"), the human editor simulated by the ground-truth box.

    Before fine-tuning, the training samples that the parent ABN misclassifies
    (unaugmented) are selected. For those, the edited map M' = M * box-mask (map cells
    whose centres lie in the box; M detached, so M' is a fixed target) replaces M in
    the perception branch, and each sample's loss is
    L = L_att + L_per + gamma * ||M' - M||_2 (the L2 norm over the map's cells, as
    written, not a mean over cells); unselected samples train as plain ABN (no map
    term). The batch loss is the mean over the batch. As in Mitsuhara et al., only the
    attention and perception branches are fine-tuned: the feature extractor is frozen
    (not optimised, batch norm statistics kept).

    Choices where the papers are silent: the fine-tuning runs over the whole training
    split (the selected samples with their edits, the others unchanged, so that the
    model does not drift on what it got right), and the box follows the augmentation
    (M' is computed online from the current M).

    Args:
        gamma: weight of the map-editing term (default 1).
    """

    name = "abn-hk"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo, gamma: float = 1.0,
                 mechanism: str = "residual") -> None:
        super().__init__(backbone, info, mechanism=mechanism)
        if not info.has_boxes:
            raise UserError(f"abn-hk needs bounding boxes; dataset {info.name!r} has none")
        require("abn-hk", "gamma", gamma, 0, None)
        self.gamma = gamma
        self.selected = torch.zeros(0, dtype=torch.bool)

    def edit(self, m: torch.Tensor, boxes: torch.Tensor,
             image_size: tuple[int, ...]) -> torch.Tensor:
        """M' = M * box-mask: M inside the box, 0 outside (no gradient)."""
        return m.detach() * map_box_mask(boxes, m, image_size)

    def select(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Samples to edit: those the model misclassifies."""
        return self(x).logits.argmax(1) != y

    def on_fit_start(self, split: Split, device: torch.device) -> dict[str, Any]:
        selected = torch.zeros(len(split.dataset), dtype=torch.bool)  # type: ignore[arg-type]
        for x, _, y, idx in eval_batches(split, device):
            with torch.no_grad():
                selected[idx.cpu()] = self.select(x, y).cpu()
        self.selected = selected
        return {"edited_samples": int(selected.sum()),
                "edited_share": float(selected.float().mean())}

    def configure_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """One SGD optimiser over the attention and perception branches only."""
        frozen = {id(p) for p in self.backbone.features.parameters()}
        params = [p for p in self.parameters() if id(p) not in frozen]
        return [torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)]

    def forward_edited(self, batch: dict[str, Any]
                       ) -> tuple[Output, torch.Tensor, torch.Tensor]:
        """Forward where selected samples perceive through M' and the feature extractor
        is frozen; returns (out, M, M') with M and M' ``[B,1,h,w]`` (M' = M where not
        selected)."""
        x = batch["image"]
        with torch.no_grad(), frozen_bn_stats(self.backbone.features):
            g = self.backbone.features(x)
        cams, att_logits, m = self.attention_branch(g)
        sel = self.selected.to(x.device)[batch["index"]].view(-1, 1, 1, 1)
        m_edit = torch.where(sel, self.edit(m, batch["bbox"], tuple(x.shape[-2:])), m.detach())
        out = Output(logits=self.perceive(g, torch.where(sel, m_edit, m)),
                     att_logits=att_logits, attention=m, class_maps=cams, features=g)
        return out, m, m_edit

    def map_loss(self, m: torch.Tensor, m_edit: torch.Tensor) -> torch.Tensor:
        """gamma * ||M' - M||_2 per sample, averaged over the batch (0 where M' = M)."""
        diff = (m_edit.float() - m.float()).flatten(1)
        return self.gamma * torch.linalg.vector_norm(diff, dim=1).mean()

    def objective(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """L_att + L_per + gamma * ||M' - M||_2 on one batch, with its parts."""
        out, m, m_edit = self.forward_edited(batch)
        base, logs = self.loss(out, batch)
        l_map = self.map_loss(m, m_edit)
        loss = base + l_map
        logs.update({"loss": float(loss.detach()), "l_map": float(l_map.detach())})
        return loss, logs

    def training_step(self, batch: dict[str, Any],
                      optimizers: Sequence[torch.optim.Optimizer],
                      run: Engine[Any] = direct) -> dict[str, float]:
        (opt,) = optimizers
        loss, logs = run(lambda: self.objective(batch))
        descend(opt, loss)
        return logs


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
_register("abn-hk", HK, "ABN fine-tuned on box-edited attention maps of the misclassified "
          "training samples (simulated human editor)",
          paper="Mitsuhara et al., VISAPP 2021", needs_boxes=True)

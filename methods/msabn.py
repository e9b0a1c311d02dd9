"""Multi-Scale ABN, the puzzle module and copy-replace fine-tuning
(``msabn-2022-multiscale-abn-puzzle-copy-replace.txt``).

* ``msabn``        — Multi-Scale Attention Branch Network (Sec. 3.1, Eq. 1).
* ``msabn-puzzle`` — MSABN + the puzzle module of Jo & Yu (ICIP 2021) on the attention
  branch (Sec. 3.2, Eq. 2).
* ``msabn-cr``     — copy-replace augmentation with (simulated) human box annotations,
  fine-tuning a trained ``msabn`` (Sec. 3.3, Sec. 4.3).

Resolution: the attention branch runs at the finest tap's resolution. On ImageNet-style
backbones (timm ResNet / ResNeXt / EfficientNet, split at stride 16) that is H/4
against ABN's H/16, 4x finer in each direction as in the paper. On the CIFAR ResNets
(split after stage 2, two taps) it is stage 1's resolution, 2x finer in each direction
than ABN's: H/2 against H/4 on the embedded default (stem stride 2), H against H/2 with
the original stem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from harness import device as dev
from harness.backbones import SplitBackbone, reset_parameters
from harness.data import DatasetInfo, Split
from harness.distributed import Engine, direct
from harness.errors import UserError
from harness.geometry import bbox_inside_frac, box_mask
from harness.hooks import RUN_EXTRAS, RunContext
from methods.abn import ABN, Attended
from methods.abn_finetune import FINETUNE
from methods.base import Output, eval_batches, register_method, upsample


class ScaleFusion(nn.Module):
    """MSABN's multi-scale input to the attention branch (Sec. 3.1).

    Every tap is upsampled bilinearly to the finest tap's size and passes its own 1x1
    convolution block (conv without bias -> BN -> ReLU, our reading of "1x1
    convolutional blocks"); the outputs are concatenated. The block widths split the
    attention branch's input width evenly, the deepest tap taking the remainder, so
    the concatenation is exactly ``out_channels`` wide.
    """

    def __init__(self, tap_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        n = len(tap_channels)
        if n < 2:
            raise ValueError("multi-scale fusion needs at least two taps")
        widths = [out_channels // n] * n
        widths[-1] += out_channels - sum(widths)
        self.widths = tuple(widths)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            for c, w in zip(tap_channels, widths, strict=True))

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = tuple(taps[0].shape[-2:])
        return torch.cat([block(upsample(t, size))
                          for block, t in zip(self.blocks, taps, strict=True)], dim=1)


class MSABN(ABN):
    """Multi-Scale Attention Branch Network (Sec. 3.1).

    The attention branch (ABN's, authors' code) takes the fused stage outputs instead
    of g(x) alone, so its class maps and its attention map A are at the finest
    tap's resolution. For the attention mechanism A is average-pooled to g's
    resolution; ``explain`` returns A at full resolution. L = L_att + L_cls (Eq. 1).
    ``fixed_attention_logits`` (COMB's analysis) masks the pooled map, the one the
    mechanism uses.

    Args:
        mechanism: ``"residual"`` g * (1 + A) (the paper's default) or ``"multiply"``
            g * A (Table 1 compares both).
    """

    name = "msabn"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo,
                 mechanism: str = "residual") -> None:
        super().__init__(backbone, info, mechanism=mechanism)
        if len(backbone.taps) < 2:
            raise UserError(f"{self.name} needs a backbone with feature taps at two or more "
                            "resolutions")
        self.fusion = ScaleFusion(backbone.tap_channels, backbone.feat_channels)
        reset_parameters(self.fusion)  # He init, as the rest of the network

    def attention_modules(self) -> list[nn.Module]:
        """The attention branch and the scale fusion feeding it."""
        return [self.fusion, self.attention_branch]

    def attend(self, x: torch.Tensor) -> Attended:
        taps = self.backbone.pyramid(x)
        g = taps[-1]
        cams, att_logits, a = self.attention_branch(self.fusion(taps))
        # the sizes as Python ints: an exported graph (harness.device.onnx_logits) then
        # holds them as constants, as they are for one input size
        pooled = F.adaptive_avg_pool2d(a, (int(g.shape[-2]), int(g.shape[-1])))
        return Attended(g, cams, att_logits, pooled, a)


# --------------------------------------------------------------------------------------
# The puzzle module
# --------------------------------------------------------------------------------------


def tile(x: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Split ``[B,C,H,W]`` into n x n non-overlapping tiles: ``[n*n*B, C, H/n, W/n]``,
    tile-major (row-major over tiles, then the batch).

    Raises:
        UserError: H or W not divisible by n.
    """
    b, c, h, w = x.shape
    if h % n or w % n:
        raise UserError(f"puzzle module: input {h}x{w} does not split into {n}x{n} equal "
                        f"tiles; use an image size divisible by {n}")
    t = x.reshape(b, c, n, h // n, n, w // n).permute(2, 4, 0, 1, 3, 5)
    return t.reshape(n * n * b, c, h // n, w // n)


def merge(tiles: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Inverse of :func:`tile`: ``[n*n*B, C, h, w]`` -> ``[B, C, n*h, n*w]``."""
    nb, c, h, w = tiles.shape
    b = nb // (n * n)
    t = tiles.reshape(n, n, b, c, h, w).permute(2, 3, 0, 4, 1, 5)
    return t.reshape(b, c, n * h, n * w)


def reconstruction_loss(full: torch.Tensor, tiled: torch.Tensor, target: torch.Tensor,
                        n: int = 2) -> torch.Tensor:
    """L_re (Eq. 2): mean absolute difference between the full image's map and the
    tiles' merged map, on each sample's ground-truth class channel.

    Args:
        full: ``[B,K,h,w]`` class maps of the whole images.
        tiled: ``[n*n*B,K,h',w']`` class maps of the tiles (order of :func:`tile`).
        target: ``[B]`` ground-truth classes.

    The merged map is resized bilinearly to ``full``'s size when the two differ (tile
    maps whose size is not exactly 1/n of the full map's, from padding at odd sizes).
    """
    full, merged = full.float(), upsample(merge(tiled, n).float(), tuple(full.shape[-2:]))
    idx = target.view(-1, 1, 1, 1).expand(-1, 1, *full.shape[-2:])
    return (full.gather(1, idx) - merged.gather(1, idx)).abs().mean()


class MSABNPuzzle(MSABN):
    """MSABN with the puzzle module on the attention branch (Sec. 3.2, Fig. 3).

    The image is tiled 2x2; the tiles go through the feature extractor and the
    attention branch (shared weights, one batch of 4B tiles); their class maps (the
    attention branch's CAMs, :class:`methods.abn.AttentionBranch`) are merged back into
    one map. L = L_att + L_cls + L_re (Eq. 2), L_re = L1 between the full image's and
    the merged map on the ground-truth class channel ("the CAM of the target class",
    Sec. 3.2; Puzzle-CAM's tile classification loss is not part of Eq. 2 and is not
    used). As in Puzzle-CAM, the tile pass runs in training mode, so batch norm
    statistics also see the tiles. Inference is MSABN's.
    """

    name = "msabn-puzzle"

    def loss(self, out: Output, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        base, logs = super().loss(out, batch)
        assert out.class_maps is not None
        tiles = dev.channels_last(tile(batch["image"]))
        l_re = reconstruction_loss(out.class_maps, self.attend(tiles).class_maps, batch["label"])
        loss = base + l_re
        logs.update({"loss": float(loss.detach()), "l_re": float(l_re.detach())})
        return loss, logs


# --------------------------------------------------------------------------------------
# Copy-replace fine-tuning
# --------------------------------------------------------------------------------------


def box_pixels(box: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel rows ``[r0, r1)`` and columns ``[c0, c1)`` whose centres lie in the
    closed xyxy ``box``: the bounding range of :func:`harness.geometry.box_mask` (the
    metrics' rule), clipped to the image; empty (all 0) when no pixel centre is inside."""
    inside = box_mask(box.view(1, 4).float().cpu(), height, width)[0]
    rows = torch.nonzero(inside.any(1)).flatten()
    cols = torch.nonzero(inside.any(0)).flatten()
    if not len(rows):
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def copy_replace(images: torch.Tensor, boxes: torch.Tensor, donor_images: torch.Tensor,
                 donor_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each donor's box content, resized to the receiving box, into that box.

    Args:
        images, boxes: ``[N,C,H,W]`` receiving images, ``[N,4]`` their xyxy boxes.
        donor_images, donor_boxes: one donor per receiving image.

    Returns:
        (new images, bool ``[N]`` whether anything was pasted). An image whose box or
        whose donor's box covers no pixel centre (or is NaN) is returned unchanged.
        The resize is bilinear with antialiasing (align_corners=False).
    """
    out = images.clone()
    pasted = torch.zeros(len(images), dtype=torch.bool)
    h, w = images.shape[-2:]
    dh, dw = donor_images.shape[-2:]
    for i in range(len(images)):
        if not (torch.isfinite(boxes[i]).all() and torch.isfinite(donor_boxes[i]).all()):
            continue
        r0, r1, c0, c1 = box_pixels(boxes[i], h, w)
        s0, s1, t0, t1 = box_pixels(donor_boxes[i], dh, dw)
        if r1 == r0 or c1 == c0 or s1 == s0 or t1 == t0:
            continue
        crop = donor_images[i : i + 1, :, s0:s1, t0:t1]
        out[i, :, r0:r1, c0:c1] = F.interpolate(crop, size=(r1 - r0, c1 - c0), mode="bilinear",
                                                align_corners=False, antialias=True)[0]
        pasted[i] = True
    return out, pasted.to(images.device)


def attention_outside(model: MSABN, split: Split, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """frac_out and coverage of every image of ``split`` (unaugmented), ``[N]`` each.

    The attention map A (full resolution, bilinearly upsampled to the image) is
    binarised at 0.2 on its raw values, as in the paper (A is a sigmoid output in
    [0, 1]). frac_out is the share of the binarised map outside the box (NaN without a
    box; 1 when nothing reaches 0.2); coverage is the binarised share of the image.
    """
    n = len(split.dataset)  # type: ignore[arg-type]
    frac, cover = torch.full((n,), float("nan")), torch.zeros(n)
    for x, boxes, _, idx in eval_batches(split, device):
        with torch.no_grad():
            a = upsample(model.attend(x).map, tuple(x.shape[-2:])).float()
        f = 1.0 - bbox_inside_frac(a, boxes, normalized=False)
        frac[idx.cpu()] = torch.where(torch.isfinite(boxes).all(1), f, torch.nan).cpu()
        cover[idx.cpu()] = (a >= 0.2).float().mean((1, 2, 3)).cpu()
    return frac, cover


def worst_localised(frac: torch.Tensor, share: float) -> torch.Tensor:
    """Indices of the ``round(share * n)`` images with the highest frac_out among the
    n that have a box (ties broken by index), ascending: a pool of exactly that size
    whatever the ties."""
    idx = torch.nonzero(torch.isfinite(frac)).flatten()
    k = round(min(max(share, 0.0), 1.0) * len(idx))
    order = torch.sort(frac[idx], descending=True, stable=True).indices[:k]
    return torch.sort(idx[order]).values


class MSABNCopyReplace(MSABN):
    """Copy-replace fine-tuning of a trained MSABN (Sec. 3.3 and 4.3), the human
    annotator simulated by the ground-truth boxes.

    Before fine-tuning, frac_out (:func:`attention_outside`: share of the attention binarised
    at 0.2 that lies outside the box) is computed for every training image; images with
    frac_out > ``lambda_out`` form the annotated pool. During fine-tuning every pooled
    image in a batch receives, in its (augmented) box, the box content of another
    pooled image drawn uniformly at random (unaugmented, resized to the box) and takes
    that image's label; all other images train normally. L = L_att + L_cls.

    Args:
        lambda_out: the frac_out threshold in [0, 1] (the paper's rule); ``None``
            annotates nothing, which is the paper's reference "vanilla fine-tuning"
            with the same schedule; ``"auto"`` (the default) annotates the
            ``auto_share`` of the training images with the highest frac_out (the
            paper's order: worst-localised first) and records the frac_out of the last
            one as the lambda_out used.
        auto_share: the annotated share for ``"auto"``; 0.2 is the paper's headline
            point ("only 20 % of the training data augmented").

    On the embedded default the short schedule leaves diffuse maps (raw A about 0.5 on
    the background, the binarised map covering most of the image), so frac_out is
    close to 1 - box area share and the paper's lambda_out 0-0.7 annotate ~100 %;
    ``covering_share`` in the recorded facts is the share of images whose binarised
    map covers more than 90 % of the image, where the rule selects small boxes rather
    than misplaced attention.

    Choice: the training split keeps its usual augmentation (random crop) in
    fine-tuning, where the paper disables augmentation for this experiment.
    """

    name = "msabn-cr"
    init_from = "msabn"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo,
                 lambda_out: float | str | None = "auto", auto_share: float = 0.2,
                 mechanism: str = "residual") -> None:
        super().__init__(backbone, info, mechanism=mechanism)
        if not info.has_boxes:
            raise UserError(f"msabn-cr needs bounding boxes; dataset {info.name!r} has none")
        if lambda_out not in (None, "auto") and not (
                isinstance(lambda_out, (int, float)) and 0.0 <= float(lambda_out) <= 1.0):
            raise UserError(f"msabn-cr: lambda_out must be in [0, 1], 'auto' or None, "
                            f"got {lambda_out!r}")
        if not 0.0 <= float(auto_share) <= 1.0:
            raise UserError(f"msabn-cr: auto_share must be in [0, 1], got {auto_share!r}")
        self.lambda_out = lambda_out
        self.auto_share = float(auto_share)
        self.pool = torch.zeros(0, dtype=torch.long)
        self.donors: Dataset[dict[str, Any]] | None = None

    def on_fit_start(self, split: Split, device: torch.device) -> dict[str, Any]:
        n = len(split.dataset)  # type: ignore[arg-type]
        frac, cover = attention_outside(self, split, device)
        lam: float | None
        if self.lambda_out == "auto":
            self.pool = worst_localised(frac, self.auto_share)
            lam = float(frac[self.pool].min()) if len(self.pool) else None
        elif self.lambda_out is None:
            self.pool, lam = torch.zeros(0, dtype=torch.long), None
        else:
            lam = float(self.lambda_out)
            self.pool = torch.nonzero(frac > lam).flatten()
        self.donors = split.eval_view()
        has_box = torch.isfinite(frac)
        return {"lambda_out": lam, "lambda_rule": str(self.lambda_out),
                "annotated": len(self.pool), "annotated_share": len(self.pool) / n,
                "frac_out_mean": float(frac[has_box].mean()) if has_box.any() else None,
                "covering_share": float((cover > 0.9).float().mean())}

    def replace_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with copy-replace applied to its pooled images (labels follow)."""
        if len(self.pool) < 2 or self.donors is None:
            return batch
        x = batch["image"]
        where = torch.isin(batch["index"].cpu(), self.pool)
        rows = torch.nonzero(where).flatten()
        if len(rows) == 0:
            return batch
        # a donor for each pooled image: another pooled image, uniformly
        own = torch.searchsorted(self.pool, batch["index"].cpu()[rows])
        pick = torch.randint(0, len(self.pool) - 1, (len(rows),))
        pick = pick + (pick >= own).long()
        donors = [self.donors[int(self.pool[j])] for j in pick]
        d_img = torch.stack([d["image"] for d in donors]).to(x.device, x.dtype)
        d_box = torch.stack([d["bbox"] for d in donors])
        new, pasted = copy_replace(x[rows], batch["bbox"][rows].cpu(), d_img, d_box)
        d_lab = torch.tensor([d["label"] for d in donors], device=x.device)
        images, labels = x.clone(), batch["label"].clone()
        images[rows] = new
        labels[rows] = torch.where(pasted, d_lab, labels[rows])
        return {**batch, "image": images, "label": labels}

    def training_step(self, batch: dict[str, Any],
                      optimizers: Sequence[torch.optim.Optimizer],
                      run: Engine[Any] = direct) -> dict[str, float]:
        return super().training_step(self.replace_batch(batch), optimizers, run)


register_method("msabn", paper="MSABN, ECCV-W 2022", attention=True,
                description="Multi-scale ABN: attention from stages 1-3 at 4x resolution"
                )(MSABN)
register_method("msabn-puzzle", paper="MSABN, ECCV-W 2022; Jo & Yu, ICIP 2021",
                attention=True, description="MSABN + puzzle module (2x2 tiles, L1 "
                "reconstruction of the target-class map)")(MSABNPuzzle)
register_method("msabn-cr", init_from="msabn", paper="MSABN, ECCV-W 2022", attention=True,
                needs_boxes=True, train=dict(FINETUNE),
                description="MSABN fine-tuned with copy-replace of box-annotated objects"
                )(MSABNCopyReplace)


def _cr_sweep(ctx: RunContext, lambdas: Sequence[float] | None) -> dict[str, Any]:
    """``--cr-sweep``: msabn-cr fine-tuned once per lambda_out and once without
    annotations (Figs. 8-9), :func:`harness.sweep.run_cr_sweep`."""
    import dataclasses

    from harness.sweep import run_cr_sweep

    ctx.say("copy-replace sweep over lambda_out = "
            + (", ".join(f"{v:g}" for v in lambdas) if lambdas else "auto"))
    sweep = run_cr_sweep(lambdas, ctx.plan.cfg, ctx.train_split, ctx.test_split, ctx.device,
                         ctx.cache, progress=ctx.plan.progress, memo=ctx.memo, say=ctx.say)
    return dataclasses.asdict(sweep)


RUN_EXTRAS.add("cr_sweep", _cr_sweep)

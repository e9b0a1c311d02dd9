"""A model trained elsewhere, evaluated with ``--model``: a timm ResNet.

Standing in for weights from your own training code, this file trains one with a plain
PyTorch loop (not attnbench's) on the embedded digits and saves its state dict:

    python examples/timm_model.py --out runs/timm-resnet10t.pt --images 1000 --epochs 2

Then any of attnbench's explainers score it, beside trained methods if you like:

    python -m harness.run --model runs/timm-resnet10t.pt --backbone resnet10t \\
        --explainers gradcam,gradcampp,random --methods baseline,abn
    python -m harness.run --model examples/timm_model.py:model --explainers gradcam

The state dict is timm's own (classifier included); ``--backbone`` names the
architecture it fits. ``model`` below is the callable form: attnbench calls it with the
dataset's class count and splits the timm model into its backbone shape, so Grad-CAM
and the other explainers of the last stage apply.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

#: the architecture (timm's smallest ResNet: seconds an epoch on a CPU at 64 px)
ARCH = "resnet10t"
#: where ``model`` reads its weights from (``train``'s default output)
WEIGHTS = Path(os.environ.get("ATTNBENCH_EXAMPLE_WEIGHTS", "runs/timm-resnet10t.pt"))


def model(num_classes: int) -> nn.Module:
    """The trained timm model (random weights when none are saved yet)."""
    net = timm.create_model(ARCH, pretrained=False, num_classes=num_classes)
    if WEIGHTS.is_file():
        net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net


def train(out: Path, images: int, epochs: int) -> None:
    """A plain training loop on the embedded digits (SGD, cross-entropy)."""
    from harness.data import build

    split = build("cluttered-digits", "train", n_train=images)
    net = timm.create_model(ARCH, pretrained=False, num_classes=split.info.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for batch in loader:
            loss = F.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(batch["label"])
        print(f"epoch {epoch + 1}: loss {total / len(split.dataset):.3f}")  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    train(args.out, args.images, args.epochs)

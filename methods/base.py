"""The one ``Method`` interface, its named ``Output`` and the method registry.

A Method is a trainable recipe (architecture + objective + schedule) plus the way its
explanation is read out. The generic trainer calls :meth:`Method.training_step`, which
owns its backward pass(es); the evaluator calls ``forward``, :meth:`Method.explain` and
:meth:`Method.class_maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness import device as dev
from harness.backbones import SplitBackbone
from harness.config import TrainConfig
from harness.data import DatasetInfo, Split, loader
from harness.distributed import Engine, direct
from harness.registry import Registry


@dataclass
class Output:
    """Named outputs of a method's forward pass.

    Attributes:
        logits: ``[B,K]`` the prediction (for ABN: the perception branch).
        att_logits: ``[B,K]`` attention-branch logits, for methods that have them.
        attention: ``[B,1,h,w]`` the attention map used by the attention mechanism
            (multi-task ABN: ``[B,T,h,w]``, one map per task).
        class_maps: ``[B,K,h,w]`` class-specific response maps, if produced.
        features: ``[B,C,h,w]`` the feature extractor's output g(x), for methods that
            re-use it (attention mining).
    """

    logits: torch.Tensor
    att_logits: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    class_maps: torch.Tensor | None = None
    features: torch.Tensor | None = None


class Method(nn.Module):
    """Base class of every method.

    Subclasses implement :meth:`forward`, :meth:`loss` (or override
    :meth:`training_step`) and :meth:`explain`.

    Args:
        backbone: the split backbone the method builds on.
        info: the dataset's static facts (class count, image size, boxes).
    """

    name: ClassVar[str] = ""
    #: registry id of the method whose trained checkpoint this one starts from
    init_from: ClassVar[str | None] = None
    #: the registered explainer computing exactly this method's own explanation (so
    #: that explainer is not applied to it a second time), if there is one
    native_explainer: ClassVar[str | None] = None
    #: on a multi-label dataset, how an image's per-label losses add up (``mean`` or
    #: ``sum``, :class:`harness.config.TrainConfig`); set from ``train.label_loss``
    #: when the trainer builds the method
    label_loss: str = "mean"

    def __init__(self, backbone: SplitBackbone, info: DatasetInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.info = info

    def forward(self, x: torch.Tensor) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: Output, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective for one forward pass; returns (loss, named parts).

        Losses are computed in float32 from the (possibly bf16-autocast) outputs."""
        loss = self.classification_loss(out.logits, batch)
        return loss, {"loss": float(loss.detach())}

    def classification_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """:func:`classification_loss` of ``logits`` on this method's dataset, with its
        ``label_loss``."""
        return classification_loss(logits, batch, self.info, self.label_loss)

    def configure_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """One SGD optimiser over all parameters (methods needing two override this)."""
        return [torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)]

    def training_step(self, batch: dict[str, Any],
                      optimizers: Sequence[torch.optim.Optimizer],
                      run: Engine[Any] = direct) -> dict[str, float]:
        """One optimisation step on ``batch``; returns scalar logs.

        Args:
            run: runs each loss computation (a closure returning ``(loss, logs)``)
                whose backward pass follows: directly in one process, through
                DistributedDataParallel under torchrun (:mod:`harness.distributed`).
                Every forward pass that a backward pass goes through must happen inside
                one ``run`` call.
        """
        (opt,) = optimizers
        loss, logs = run(lambda: self.loss(self(batch["image"]), batch))
        descend(opt, loss)
        return logs

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The explanation for class ``target``: ``[B,1,H,W]``, >= 0, at input size."""
        raise NotImplementedError

    def class_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor | None:
        """Class-specific maps ``[B,C,h,w]`` for ``classes`` ``[B,C]``, if the method has them."""
        return None

    def load_parent(self, state: dict[str, torch.Tensor]) -> None:
        """Initialise from the ``init_from`` method's trained state.

        Every parent tensor must fit; only buffers this method adds may be missing.
        """
        own_buffers = {n for n, _ in self.named_buffers()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        bad = [k for k in missing if k not in own_buffers or k in state]
        if unexpected or bad:
            raise RuntimeError(f"{self.name}: parent checkpoint does not fit "
                               f"(missing {bad}, unexpected {unexpected})")

    def on_fit_start(self, split: Any, device: torch.device) -> dict[str, Any]:
        """Called once before training (not when loading a cached checkpoint): a method
        may analyse the training split here (e.g. select samples). Returns facts worth
        recording in the run's config."""
        return {}

    def parameter_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The model's parameters as named groups in the order a cascading
        randomisation re-initialises them, top-down (Adebayo et al., NeurIPS 2018,
        Sec. 3.1, "from the top layer successively all the way to the bottom"). For the
        plain backbone: the classifier, the last stage, then each module of the feature
        extractor from the last down to the stem (modules without parameters are no
        group). Every parameter belongs to exactly one group
        (:func:`metrics.randomisation.check_groups`)."""
        b = self.backbone
        groups: list[tuple[str, list[nn.Module]]] = [("backbone.fc", [b.fc]),
                                                      ("backbone.last_stage", [b.last_stage])]
        for i in reversed(range(len(b.features))):
            module = b.features[i]
            if any(True for _ in module.parameters()):
                groups.append((f"backbone.features.{i}", [module]))
        return groups

    def fixed_attention_logits(self, out: Output, boxes: torch.Tensor,
                               image_size: tuple[int, ...]) -> torch.Tensor | None:
        """Prediction with the attention outside ``boxes`` removed (COMB, Table 1), from
        this method's forward output ``out`` on images of ``image_size``; None for
        methods without an attention mechanism."""
        return None


def classification_loss(logits: torch.Tensor, batch: dict[str, Any], info: DatasetInfo,
                        label_loss: str = "mean") -> torch.Tensor:
    """The classification loss of ``logits`` ``[B,K]`` (in float32): softmax
    cross-entropy on ``batch["label"]``, or on a multi-label dataset
    (``info.multi_label``) sigmoid + binary cross-entropy on the 0/1 vector
    ``batch["labels"]``: per image the ``mean`` over labels (the multi-label soft margin
    loss of Wang et al., Sec. 4.3) or their ``sum`` (ABN Sec. 3.4: one sigmoid + binary
    cross-entropy loss per task, the tasks' losses added), averaged over images."""
    if not info.multi_label:
        return F.cross_entropy(logits.float(), batch["label"])
    per_label = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float(),
                                                   reduction="none")
    if label_loss == "sum":
        return per_label.sum(1).mean()
    if label_loss != "mean":
        raise ValueError(f"label_loss must be 'mean' or 'sum', got {label_loss!r}")
    return per_label.mean()


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One gradient step of ``opt`` on ``loss`` (gradients cleared first)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def upsample(m: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of a ``[B,C,h,w]`` map to ``size``."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def eval_batches(split: Split, device: torch.device, batch_size: int = 64
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The split's images without augmentation, for a method's analysis in
    :meth:`Method.on_fit_start`: (x, boxes, labels, index) on ``device``."""
    for batch in loader(split, batch_size, device, dataset=split.eval_view()):
        b = dev.to_device(batch, device)
        yield b["image"], b["bbox"], b["label"], b["index"]


MethodFactory = Callable[..., Method]
METHODS: Registry[MethodFactory] = Registry("method")


def register_method(name: str, *, init_from: str | None = None, paper: str = "",
                    explainer: str = "native", train: dict[str, Any] | None = None,
                    needs_boxes: bool = False, attention: bool = False,
                    reference: bool = False, multi_label: bool = False,
                    multi_task: bool = False, description: str = ""
                    ) -> Callable[[MethodFactory], MethodFactory]:
    """Register a method factory ``(backbone, info, **options) -> Method``.

    Args:
        init_from: method whose trained checkpoint initialises this one.
        train: overrides of the preset's trainer fields (e.g. ``{"epochs": 0}``).
        needs_boxes: the method needs ground-truth boxes at training time.
        attention: the method has an attention mechanism (reads ``Output.attention``).
        reference: its explanation is a reference (not ranked on explanation metrics).
        multi_label: it trains on multi-label targets (``labels``, a 0/1 vector) and
            explains each class it is asked for; methods without it are not run on a
            multi-label dataset.
        multi_task: it is built for multi-label data (one output per task): ``--methods
            all`` runs it on multi-label datasets only; named, it runs on any.
    """
    return METHODS.register(name, init_from=init_from, paper=paper, explainer=explainer,
                            train=dict(train or {}), needs_boxes=needs_boxes,
                            attention=attention, reference=reference,
                            multi_label=multi_label, multi_task=multi_task,
                            description=description)

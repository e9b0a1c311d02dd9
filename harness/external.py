"""Models trained elsewhere (``--model``): evaluated by any explainers on any dataset,
as rows beside the trained methods, without training anything.

A model is given as

* a file: a TorchScript archive (``torch.jit.save``), a ``torch.export`` archive
  (``torch.export.save``, ``.pt2``), or a state dict (read by torch's safe loader) of
  the run's backbone (``--backbone``): attnbench's own backbone keys, a checkpoint of one
  of its methods' plain backbone (``backbone.`` keys), or for a timm backbone timm's
  own keys, classifier included;
* a Python callable ``module:function`` or ``path/to/file.py:function`` returning an
  ``nn.Module`` (called with ``num_classes`` and ``info`` where it takes them).

``NAME=SPEC`` names the row (default: the file's stem or the function's name). A model
that is (or, a timm model, splits into) attnbench's backbone shape ``fc(pool(last_stage(
features(x))))`` gets every explainer that fits it (Grad-CAM, CAM, ...); any other
module is opaque: the explainers that need the scored layer do not apply, those of the
input (captum's through :func:`methods.explainers.from_attribution`, ``random``) do,
and model-parameter randomisation takes its top-level children as the groups, last
first. A model has no explanation of its own: its rows are those of the run's
explainers other than ``native`` (``gradcam`` when none are given). Its checkpoint key
is the digest of its weights (and of the loader's code): the evaluation cache
recognises it whatever its file is called, under every seed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import backbones
from harness.backbones import SplitBackbone
from harness.data import DatasetInfo
from harness.errors import UserError, clip, shown, shown_path
from methods.base import Method, Output


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model``: the row's name and where the model comes from."""

    name: str
    spec: str


def parse(text: str) -> ModelSpec:
    """``NAME=SPEC`` or ``SPEC`` (the name from the file's stem or the function).

    Raises:
        UserError: an empty spec or name."""
    name, sep, spec = text.partition("=")
    if not sep or ("/" in name or ":" in name):  # no name given (a path may hold '=')
        name, spec = "", text
    spec = spec.strip()
    if not spec:
        raise UserError(f"--model {shown(text)}: give a file or module:function")
    if not name:
        target = spec.rpartition(":")[2] if _is_callable_spec(spec) else Path(spec).stem
        name = target.replace("_", "-") or "model"
    return ModelSpec(name.strip(), spec)


def _is_callable_spec(spec: str) -> bool:
    """``module:function`` or ``file.py:function`` (not a Windows drive letter)."""
    head, sep, tail = spec.rpartition(":")
    return bool(sep) and tail.isidentifier() and len(head) > 1


class External(Method):
    """A model trained elsewhere, scored as it is (nothing trained)."""

    name = "external"

    def __init__(self, net: nn.Module, info: DatasetInfo) -> None:
        nn.Module.__init__(self)
        self.info = info
        self.net = _with_modes(net)
        if isinstance(net, SplitBackbone):  # the explainers' scored layer
            self.backbone = net

    def forward(self, x: torch.Tensor) -> Output:
        out = self.net(x)
        if isinstance(out, Output):
            return out
        logits = getattr(out, "logits", out[0] if isinstance(out, (tuple, list)) else out)
        if not isinstance(logits, torch.Tensor):
            raise UserError(f"{self.name}: the model returns {type(out).__name__}, not "
                            "logits (a tensor, a tuple starting with one, or .logits)")
        return Output(logits=logits)

    def explain(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise UserError(f"{self.name}: a model trained elsewhere has no explanation of its "
                        "own; give explainers (--explainers gradcam,...)")

    def parameter_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The backbone's groups (head, last stage, feature modules top-down); for an
        opaque module its top-level children with parameters, last first, where their
        modules can be re-initialised (``reset_parameters``); none otherwise (a
        TorchScript or exported graph: the randomisation columns are n/a)."""
        from metrics.randomisation import check_groups

        if isinstance(self.net, SplitBackbone):
            return super().parameter_groups()
        groups: list[tuple[str, list[nn.Module]]] = [
            (f"net.{n}", [m]) for n, m in reversed(list(self.net.named_children()))
            if any(True for _ in m.parameters())]
        try:
            check_groups(self, groups)
        except ValueError:
            return []
        return groups


def _with_modes(net: nn.Module) -> nn.Module:
    """``net`` with ``train()`` / ``eval()`` working: an exported graph refuses them
    (and they reach every submodule); it runs as it was exported (in eval mode), so
    the flags change nothing."""
    for attr in ("train", "eval"):
        if attr in vars(net):
            delattr(net, attr)
    return net


def load(spec: ModelSpec, backbone: str, info: DatasetInfo,
         backbone_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The module ``spec`` names, on the CPU in eval mode, its output checked against
    ``info`` (``num_classes`` logits for a probe image).

    Raises:
        UserError: one line naming ``--model`` and what is wrong."""
    where = f"--model {shown_path(spec.spec)}"
    if _is_callable_spec(spec.spec) and not Path(spec.spec).exists():
        net = _from_callable(spec.spec, info, where)
    else:
        net = _from_file(Path(spec.spec).expanduser(), backbone, info, backbone_kwargs or {},
                         where)
    net = _with_modes(net).cpu().eval()
    h, w = info.image_size
    try:  # an odd batch: the evaluation's batches vary
        with torch.no_grad():
            out = External(net, info)(torch.zeros(3, 3, h, w)).logits
    except Exception as err:
        raise UserError(f"{where}: the model fails on a batch of 3 images of {h}x{w} (a "
                        "traced or exported graph needs a dynamic batch dimension): "
                        f"{clip(f'{type(err).__name__}: {err}', 160)}") from None
    if tuple(out.shape) != (3, info.num_classes):
        raise UserError(f"{where}: the model gives logits of shape {tuple(out.shape)} for 3 "
                        f"images; dataset {info.name!r} has {info.num_classes} classes")
    return net


def _from_callable(spec: str, info: DatasetInfo, where: str) -> nn.Module:
    target, _, fn_name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise UserError(f"{where}: no such file {shown_path(path)}")
            mod_spec = importlib.util.spec_from_file_location(f"attnbench_model_{path.stem}",
                                                              path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{where}: cannot import {shown(target)}: "
                        f"{clip(f'{type(err).__name__}: {err}', 160)}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"{where}: {target} has no function {fn_name!r}")
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("num_classes", info.num_classes), ("info", info))
              if k in params}
    try:
        net = fn(**kwargs)
    except Exception as err:
        raise UserError(f"{where}: {fn_name}() raised "
                        f"{clip(f'{type(err).__name__}: {err}', 160)}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"{where}: {fn_name}() returned {type(net).__name__}, not an "
                        "nn.Module")
    return _split_if_timm(net)


def _split_if_timm(net: nn.Module) -> nn.Module:
    """A timm classifier split into attnbench's backbone shape (so that the explainers
    of the scored layer apply); anything else as it is."""
    if type(net).__module__.startswith("timm.") and hasattr(net, "feature_info"):
        try:
            return backbones.split_timm(net, type(net).__name__, keep_head=True)
        except UserError:
            return net
    return net


def _from_file(path: Path, backbone: str, info: DatasetInfo, kwargs: dict[str, Any],
               where: str) -> nn.Module:
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    kind = archive_kind(path)
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-any-return]
        if kind == "export":
            return torch.export.load(str(path)).module()  # type: ignore[no-any-return]
    except Exception as err:
        raise UserError(f"{where}: not a loadable {kind} archive: "
                        f"{clip(f'{type(err).__name__}: {err}', 160)}") from None
    state = backbones.read_state_dict(str(path), what="--model")
    return backbones.from_state_dict(backbone, info.num_classes, state, str(path),
                                     what="--model", **kwargs)


def archive_kind(path: Path) -> str:
    """``torchscript``, ``export`` (a ``torch.export`` archive) or ``state`` (anything
    else: read as a state dict)."""
    if not zipfile.is_zipfile(path):
        return "state"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("archive_format") or "/models/" in n for n in names):
        return "export"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "state"


def factory(spec: ModelSpec, net: nn.Module) -> Callable[..., Method]:
    """The method factory registered under the model's name: the loaded module,
    wrapped (the backbone attnbench would build is not used)."""
    def build(backbone: SplitBackbone, info: DatasetInfo) -> Method:
        return External(net, info)

    return build

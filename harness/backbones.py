"""Backbones split into feature extractor / last stage / head.

``SplitBackbone`` is the common shape every method builds on: ``features`` (the
feature extractor g), ``last_stage`` (the stage the attention branch copies), and a
GAP + linear ``fc`` head (so CAM applies). Two families are registered:

* CIFAR-style ResNets as in the ABN authors' code (3 stages of 16/32/64 channels,
  n = (depth-2)/6 blocks per stage, Bottleneck blocks when depth >= 44), split after
  stage 2. ``stem_stride`` (default 1, the original) may be set to 2, or to 4 (a
  stride-2 conv and a max-pool, as ImageNet ResNets), for larger inputs such as the
  64 px embedded default.
* timm ResNet-family and EfficientNet models (``pretrained=False``), split where
  timm's ``feature_info`` reaches stride 16 (after ``layer3`` / ``blocks.4``).

Every backbone also names its *taps*: the feature-extractor stage outputs (one per
resolution) that Multi-Scale ABN fuses.
"""

from __future__ import annotations

import copy
import functools
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.errors import UserError, clip, shown_path
from harness.registry import Registry


class SplitBackbone(nn.Module):
    """A classifier as ``fc(pool(last_stage(features(x))))``.

    Attributes:
        feat_channels: channels of ``features``' output (the ABN split point).
        out_channels: channels of ``last_stage``'s output (input of ``fc``).
        taps: indices into ``features`` whose outputs are the feature pyramid, finest
            first, the last being ``features``' output (CIFAR ResNets: stages 1-2;
            ImageNet-style models: the stride 4, 8 and 16 stages).
        tap_channels: channels of each tap.
    """

    def __init__(self, features: nn.Sequential, last_stage: nn.Module, out_channels: int,
                 feat_channels: int, num_classes: int, taps: tuple[int, ...] = (),
                 tap_channels: tuple[int, ...] = ()) -> None:
        super().__init__()
        if len(taps) != len(tap_channels) or (taps and taps[-1] != len(features) - 1):
            raise ValueError("taps must end at the last feature module, one width each")
        self.features = features
        self.taps = taps
        self.tap_channels = tap_channels
        self.last_stage = last_stage
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(out_channels, num_classes)
        self.feat_channels = feat_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        #: initialised from a pretrained state dict: branches that copy a stage keep
        #: its weights (see :func:`stride1_copy`)
        self.pretrained = False

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output map."""
        return self.fc(self.pool(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last_stage(self.features(x)))

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tap outputs, finest first; the last one is ``features(x)``."""
        if not self.taps:
            raise ValueError("this backbone names no feature taps")
        outs = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                outs.append(x)
        return outs


BackboneFactory = Callable[..., SplitBackbone]
BACKBONES: Registry[BackboneFactory] = Registry("backbone")


def build(name: str, num_classes: int, pretrained: str | None = None,
          **kwargs: Any) -> SplitBackbone:
    """Build the registered backbone ``name`` for ``num_classes`` classes.

    Args:
        pretrained: a local state dict file initialising the backbone (its classifier
            is dropped): for timm models a timm or torchvision state dict of that
            architecture, for the CIFAR ResNets a state dict of the same backbone.

    Raises:
        UserError: unknown name, bad options, or a state dict that does not fit (the
            message lists the first mismatching keys).
    """
    from harness.data import check_options

    entry = BACKBONES.entry(name)
    factory = entry.obj
    check_options(factory, f"backbone {name!r}", num_classes=num_classes, **kwargs)
    if pretrained is not None and entry.meta.get("family", "").startswith("timm"):
        net = factory(num_classes=num_classes, pretrained_file=pretrained, **kwargs)
    else:
        net = factory(num_classes=num_classes, **kwargs)
        if pretrained is not None:
            state = read_state_dict(pretrained)
            load_fitting(net, {k: v for k, v in state.items() if not k.startswith("fc.")},
                         pretrained, name, ignore=("fc.",))
    net.pretrained = pretrained is not None
    return net


def read_state_dict(path: str, what: str = "--pretrained") -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (tensors only; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped), read by torch's safe loader, which never
    runs code a file carries; torch's warnings on the way are turned into the reason.

    Raises:
        UserError: one line naming the file: missing, not a state dict (a TorchScript
            archive, objects other than tensors, an unsupported pickle protocol), or
            weights holding NaN or inf.
    """
    where = f"{what} {shown_path(path)}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{where}: no such file") from None
        except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
            raise UserError(f"{where}: not a readable state dict: "
                            f"{_load_failure(err, [str(w.message) for w in caught])}"
                            ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"{where}: not a state dict of tensors")
    broken = [k for k, v in state.items()
              if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise UserError(f"{where}: the file's weights are broken: {len(broken)} tensor(s) "
                        f"hold NaN or inf ({', '.join(map(str, broken[:3]))}"
                        f"{', ...' if len(broken) > 3 else ''}); use another file")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_failure(err: BaseException, warned: list[str]) -> str:
    """Why torch's safe loader refused a file, in a few words (its own message is a
    page of advice to load it unsafely, which attnbench never does)."""
    text = str(err)
    if "TorchScript" in text or any("TorchScript" in w for w in warned):
        return "a TorchScript archive; save the model's state_dict() with torch.save"
    protocol = next((w.split("protocol ")[1].split()[0] for w in warned
                     if "pickle protocol" in w), None)
    if protocol is not None:
        return (f"pickled with protocol {protocol}, which torch's safe loader does not "
                "read; re-save it with torch.save(state_dict, file)")
    if "GLOBAL" in text or "global" in text:
        name = text.split("GLOBAL ")[1].split()[0] if "GLOBAL " in text else "objects"
        return (f"it holds {clip(name, 60)} besides tensors, which is never unpickled, as "
                "it could run code; save a plain state dict of tensors")
    return f"{type(err).__name__} from torch.load"


def load_fitting(model: nn.Module, state: dict[str, torch.Tensor], path: str, name: str,
                 ignore: tuple[str, ...] = (), option: str = "--pretrained") -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key (other
    than those starting with ``ignore``) is a one-line UserError listing the first."""
    own = model.state_dict()
    # batch-norm step counters are absent from older model-zoo files; they do not
    # change any output
    missing = [k for k in own if k not in state and not k.startswith(ignore)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected),
                           ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what} ({', '.join(keys[:3])}"
                             f"{', ...' if len(keys) > 3 else ''})")
        raise UserError(f"{option} {shown_path(path)} does not fit backbone {name!r}: "
                        + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def stride1_copy(stage: nn.Module, keep_weights: bool = False) -> nn.Module:
    """A copy of ``stage`` whose strides are all 1, freshly initialised unless
    ``keep_weights`` (a pretrained backbone: the branch starts from its weights).

    This is the ABN attention branch's residual stage ("we set the stride of the first
    convolution layer at the residual block as 1", Sec. 3.2). Strided convolutions
    become stride 1 and strided average pools (ResNet-D shortcuts) become identities.
    """
    new = copy.deepcopy(stage)
    for name, mod in list(new.named_modules()):
        if isinstance(mod, nn.Conv2d) and mod.stride != (1, 1):
            mod.stride = (1, 1)
        if isinstance(mod, (nn.AvgPool2d,)) and mod.stride not in (1, (1, 1)):
            parent = new.get_submodule(name.rsplit(".", 1)[0]) if "." in name else new
            setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    if not keep_weights:
        reset_parameters(new)
    return new


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise ``module`` (He init for convs, BN to identity)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()


# --------------------------------------------------------------------------------------
# CIFAR-style ResNets (ABN authors' code)
# --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    if stride == 1 and inplanes == outplanes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False),
                         nn.BatchNorm2d(outplanes))


def cifar_resnet(depth: int, num_classes: int, stem_stride: int = 1,
                 block_type: str = "abn") -> SplitBackbone:
    """CIFAR ResNet of the given depth, split after stage 2 (as ABN on CIFAR).

    Args:
        block_type: ``"abn"``: basic blocks below depth 44 and bottleneck blocks from
            44 on, as the ABN authors' code (n = (depth - 2) / 6 blocks per stage either
            way); ``"basic"``: basic blocks at every depth, as He et al.'s CIFAR ResNets
            (the discriminative-attention paper's ResNet-110).
    """
    if (depth - 2) % 6:
        raise UserError(f"cifar-resnet depth {depth}: depths are 6n+2 (8, 14, 20, 32, ...)")
    if block_type not in ("abn", "basic"):
        raise UserError(f"cifar-resnet block_type must be 'abn' or 'basic', got "
                        f"{block_type!r}")
    n = (depth - 2) // 6
    block: type[BasicBlock] | type[Bottleneck] = (
        Bottleneck if depth >= 44 and block_type == "abn" else BasicBlock)
    inplanes = 16

    def stage(planes: int, stride: int) -> nn.Sequential:
        nonlocal inplanes
        blocks = []
        for i in range(n):
            blocks.append(block(inplanes, planes, stride if i == 0 else 1))
            inplanes = planes * block.expansion
        return nn.Sequential(*blocks)

    if stem_stride not in (1, 2, 4):
        raise UserError(f"cifar-resnet stem_stride must be 1, 2 or 4, got {stem_stride!r}")
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, min(stem_stride, 2), 1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    if stem_stride == 4:  # as ImageNet ResNets: a stride-2 conv, then a 3x3 max-pool
        stem.append(nn.MaxPool2d(3, 2, 1))
    features = nn.Sequential(stem, stage(16, 1), stage(32, 2))
    feat_channels = inplanes
    last = stage(64, 2)
    widths = (16 * block.expansion, feat_channels)
    net = SplitBackbone(features, last, inplanes, feat_channels, num_classes,
                        taps=(1, 2), tap_channels=widths)
    reset_parameters(net)
    return net


for _depth in (8, 14, 20, 32, 44, 56, 110):
    BACKBONES.add(f"cifar-resnet{_depth}", functools.partial(cifar_resnet, _depth),
                  family="cifar-resnet", split="after stage 2",
                  description="ABN's code: " + ("bottleneck" if _depth >= 44 else "basic")
                  + " blocks")
for _depth in (44, 56, 110):
    BACKBONES.add(f"cifar-resnet{_depth}-basic",
                  functools.partial(cifar_resnet, _depth, block_type="basic"),
                  family="cifar-resnet", split="after stage 2",
                  description="He et al.'s CIFAR ResNet: basic blocks")


# --------------------------------------------------------------------------------------
# timm models
# --------------------------------------------------------------------------------------

#: top-level timm modules that are the classifier head (replaced by SplitBackbone's)
_HEAD_MODULES = ("global_pool", "fc", "classifier", "head", "head_drop")


def timm_backbone(model_name: str, num_classes: int, pretrained_file: str | None = None,
                  **kwargs: Any) -> SplitBackbone:
    """A timm model split where its ``feature_info`` reaches stride 16.

    The modules up to that stage (``layer3`` for ResNets, ``blocks.4`` for
    EfficientNets) are the feature extractor, the rest up to the classifier the last
    stage; the stride 4, 8 and 16 stage outputs are the taps. Weights are never
    downloaded: ``pretrained_file`` optionally names a local state dict to load before
    the split (its classifier is dropped).
    """
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
    if pretrained_file is not None:
        state = read_state_dict(pretrained_file)
        pcfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
        head = str(pcfg.get("classifier", "fc")) + "."
        load_fitting(model, {k: v for k, v in state.items() if not k.startswith(head)},
                     pretrained_file, model_name, ignore=(head,))
    return split_timm(model, model_name)


def split_timm(model: nn.Module, model_name: str, *, keep_head: bool = False
               ) -> SplitBackbone:
    """A timm classifier as :class:`SplitBackbone`, its modules reused (see
    :func:`timm_backbone`); ``keep_head``: its trained classifier too (else a fresh
    one, as for training)."""
    num_classes = int(model.num_classes)  # type: ignore[arg-type]
    modules: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name in _HEAD_MODULES:
            continue
        if name == "blocks":  # EfficientNet: one entry per stage
            modules += [(f"blocks.{i}", b) for i, b in enumerate(child.children())]
        else:
            modules.append((name, child))
    names = [n for n, _ in modules]
    feature_info: list[dict[str, Any]] = list(model.feature_info)  # type: ignore[arg-type]
    info = {f["module"]: f for f in feature_info}
    by_stride = {int(f["reduction"]): f for f in feature_info}
    if not all(r in by_stride for r in (4, 8, 16)):
        raise UserError(f"backbone {model_name!r}: no stride 4/8/16 stages to split at")
    taps = tuple(names.index(by_stride[r]["module"]) for r in (4, 8, 16))
    split = taps[-1] + 1
    features = nn.Sequential(*(m for _, m in modules[:split]))
    rest = [m for _, m in modules[split:]]
    last = rest[0] if len(rest) == 1 else nn.Sequential(*rest)
    width: int = model.num_features  # type: ignore[assignment]
    net = SplitBackbone(features, last, width,
                        int(info[names[taps[-1]]]["num_chs"]), num_classes, taps=taps,
                        tap_channels=tuple(int(info[names[t]]["num_chs"]) for t in taps))
    head = model.get_classifier() if keep_head else None  # type: ignore[operator]
    if isinstance(head, nn.Linear) and head.in_features == width:  # its trained weights
        net.fc = head
    return net


def from_state_dict(name: str, num_classes: int, state: dict[str, torch.Tensor], path: str,
                    what: str = "--model", **kwargs: Any) -> SplitBackbone:
    """Backbone ``name`` with every weight from ``state``: attnbench's own keys, a
    checkpoint of its plain backbone (``backbone.`` keys), or, for a timm backbone,
    timm's own keys (classifier included).

    Raises:
        UserError: ``state`` does not fit (the first mismatching keys listed)."""
    if state and all(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    entry = BACKBONES.entry(name)
    net = build(name, num_classes, **kwargs)
    own = set(net.state_dict())
    family = str(entry.meta.get("family", ""))
    body = {k for k in own if not k.startswith("fc.")}
    if family.startswith("timm") and not body & set(state):  # timm's own keys
        import timm

        model_name = entry.obj.args[0] if isinstance(entry.obj, functools.partial) else name
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                  **kwargs)
        load_fitting(model, state, path, name, option=what)
        return split_timm(model, model_name, keep_head=True)
    load_fitting(net, state, path, name, option=what)
    return net


for _name in ("resnet10t", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
              "resnext50_32x4d", "wide_resnet50_2", "seresnet50"):
    BACKBONES.add(_name, functools.partial(timm_backbone, _name),
                  family="timm-resnet", split="after stage 3 (stride 16)")
for _name in ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"):
    BACKBONES.add(_name, functools.partial(timm_backbone, _name),
                  family="timm-efficientnet", split="after blocks.4 (stride 16)")

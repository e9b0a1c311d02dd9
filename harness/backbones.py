"""Backbones split into feature extractor / last stage / head.

``SplitBackbone`` is the common shape every method builds on: ``features`` (the
feature extractor g), ``last_stage`` (the stage the attention branch copies), and a
GAP + linear ``fc`` head (so CAM applies). Registered:

* CIFAR-style ResNets as in the ABN authors' code (3 stages of 16/32/64 channels,
  n = (depth-2)/6 blocks per stage, Bottleneck blocks when depth >= 44), split after
  stage 2. ``stem_stride`` (default 1, the original) may be set to 2, or to 4 (a
  stride-2 conv and a max-pool, as ImageNet ResNets), for larger inputs such as the
  64 px embedded default.
* the other CIFAR baselines of ABN's Table 2 (Sec. 4.1): Wide ResNet, DenseNet-BC and
  ResNeXt, split the same way (DenseNet: after its second transition).
* timm ResNet-family and EfficientNet models (``pretrained=False``), split where
  timm's ``feature_info`` reaches stride 16 (after ``layer3`` / ``blocks.4``).
* torchvision VGG (``weights=None``), split at stride 16 (after pool4), whose head is
  VGG's fully-connected layers (:class:`FCHeadBackbone`), and the CAM paper's VGG-GAP.

Every backbone also names its *taps*: the feature-extractor stage outputs (one per
resolution) that Multi-Scale ABN fuses.
"""

from __future__ import annotations

import copy
import functools
import pickle
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from harness.errors import UserError, clip, shown_path
from harness.registry import Registry


class SplitBackbone(nn.Module):
    """A classifier as ``fc(pool(last_stage(features(x))))``.

    The head is GAP + linear (``head_kind`` ``"gap-linear"``, what CAM reads); a
    subclass may have another (:class:`FCHeadBackbone`: VGG's fully-connected layers).

    Attributes:
        feat_channels: channels of ``features``' output (the ABN split point).
        out_channels: channels of ``last_stage``'s output (input of ``fc``).
        taps: indices into ``features`` whose outputs are the feature pyramid, finest
            first, the last being ``features``' output (CIFAR ResNets: stages 1-2;
            ImageNet-style models: the stride 4, 8 and 16 stages).
        tap_channels: channels of each tap.
    """

    #: the head's kind: ``"gap-linear"`` (``fc`` is one linear layer on the spatial mean
    #: of the last stage's map) or ``"fc"`` (fully-connected layers, no class maps)
    head_kind: ClassVar[str] = "gap-linear"

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

    def attention_trunk(self, keep_weights: bool = False) -> tuple[nn.Module, int]:
        """The trunk of ABN's attention branch and its output width: a copy of the last
        stage with stride 1 (Sec. 3.1, "ResNet models with ABN are constructed from the
        residual block at the attention branch"; :func:`stride1_copy`)."""
        return stride1_copy(self.last_stage, keep_weights=keep_weights), self.out_channels

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
#: families whose factory loads a ``pretrained_file`` in the library's own keys (timm's,
#: torchvision's) before the split
_OWN_LOADERS = ("timm", "torchvision")
BACKBONES: Registry[BackboneFactory] = Registry("backbone")


def build(name: str, num_classes: int, pretrained: str | None = None,
          **kwargs: Any) -> SplitBackbone:
    """Build the registered backbone ``name`` for ``num_classes`` classes.

    Args:
        pretrained: a local state dict file initialising the backbone (its classifier
            is dropped): for timm models a timm or torchvision state dict of that
            architecture, for VGG a torchvision one (fc6 and fc7 kept), for the CIFAR
            nets a state dict of the same backbone.

    Raises:
        UserError: unknown name, bad options, or a state dict that does not fit (the
            message lists the first mismatching keys).
    """
    from harness.data import check_options

    entry = BACKBONES.entry(name)
    factory = entry.obj
    check_options(factory, f"backbone {name!r}", num_classes=num_classes, **kwargs)
    if pretrained is not None and entry.meta.get("family", "").startswith(_OWN_LOADERS):
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


def cifar_stem(family: str, width: int, stem_stride: int, post_activation: bool = True
               ) -> nn.Sequential:
    """The CIFAR nets' stem: a 3x3 convolution to ``width`` channels, then BN and ReLU
    (``post_activation``; pre-activation nets leave them to their first block).

    Args:
        stem_stride: 1 (the original), 2 (a stride-2 convolution) or 4 (a stride-2
            convolution, then a 3x3 max-pool, as ImageNet ResNets) for larger inputs.

    Raises:
        UserError: another ``stem_stride``.
    """
    if stem_stride not in (1, 2, 4):
        raise UserError(f"{family} stem_stride must be 1, 2 or 4, got {stem_stride!r}")
    stem = nn.Sequential(nn.Conv2d(3, width, 3, min(stem_stride, 2), 1, bias=False))
    if post_activation:
        stem.extend([nn.BatchNorm2d(width), nn.ReLU(inplace=True)])
    if stem_stride == 4:
        stem.append(nn.MaxPool2d(3, 2, 1))
    return stem


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

    stem = cifar_stem("cifar-resnet", 16, stem_stride)
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
# The other CIFAR baselines of ABN's Table 2 (Sec. 4.1)
# --------------------------------------------------------------------------------------


def _split_cifar(stem: nn.Module, stages: list[nn.Module], widths: list[int],
                 head_width: int, num_classes: int, tail: tuple[nn.Module, ...] = ()
                 ) -> SplitBackbone:
    """A three-stage CIFAR net split as ABN on CIFAR ("dividing a ResNet model at
    residual block 3", Sec. 4.1): ``features`` = stem + stages 1-2 (+ ``tail``, the
    modules between stage 2 and stage 3 that belong to neither, as DenseNet's second
    transition), ``last_stage`` = stage 3; taps at each feature module after the stem.
    He-initialised (normal, fan-out), BN as the identity, as the CIFAR ResNets."""
    features = nn.Sequential(stem, stages[0], stages[1], *tail)
    taps = tuple(range(1, len(features)))
    net = SplitBackbone(features, stages[2], head_width, widths[-1], num_classes,
                        taps=taps, tap_channels=tuple(widths))
    reset_parameters(net)
    return net


class WideBasic(nn.Module):
    """Wide ResNet's pre-activation block B(3,3) with dropout between the two
    convolutions (Zagoruyko & Komodakis, BMVC 2016, Sec. 2, Fig. 1(d)): BN-ReLU-conv3x3-
    BN-ReLU-dropout-conv3x3, added to the input or, where the width or the stride
    changes, to a 1x1 projection of the pre-activated input (as the authors' code)."""

    def __init__(self, inplanes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.project = stride != 1 or inplanes != planes
        self.shortcut: nn.Module = (nn.Conv2d(inplanes, planes, 1, stride, bias=False)
                                    if self.project else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv2(self.drop(self.relu(self.bn2(self.conv1(act)))))
        return out + self.shortcut(act if self.project else x)


def cifar_wrn(depth: int, widen_factor: int, num_classes: int, dropout: float = 0.3,
              stem_stride: int = 1) -> SplitBackbone:
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (Zagoruyko & Komodakis 2016,
    Table 1): a 16-channel 3x3 stem, three stages of n = (depth - 4) / 6 :class:`WideBasic`
    blocks of 16k, 32k and 64k channels (strides 1, 2, 2), BN-ReLU, GAP, linear. ABN's
    Table 2 uses depth 28, k = 4, dropout 0.3 (Sec. 4.1). Split after stage 2; the final
    BN-ReLU belongs to the last stage (the map CAM reads is the activated one, as the
    GAP input). Deviation: ABN's attention branch copies the stage with that BN-ReLU and
    then applies its own BN, where the authors' code applies its BN to the copied
    blocks' output directly (likewise for :func:`cifar_densenet`)."""
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"cifar-wrn depth {depth}: depths are 6n+4 (10, 16, 22, 28, 40, ...)")
    if widen_factor < 1:
        raise UserError(f"cifar-wrn widen_factor must be >= 1, got {widen_factor!r}")
    if not 0 <= dropout < 1:
        raise UserError(f"cifar-wrn dropout must be in [0, 1), got {dropout!r}")
    n = (depth - 4) // 6
    widths = [16 * widen_factor * 2**i for i in range(3)]
    stages: list[nn.Module] = []
    inplanes = 16
    for i, planes in enumerate(widths):
        stages.append(nn.Sequential(*(WideBasic(inplanes if j == 0 else planes, planes,
                                                (1 if i == 0 else 2) if j == 0 else 1,
                                                dropout) for j in range(n))))
        inplanes = planes
    stages[2] = nn.Sequential(stages[2], nn.BatchNorm2d(widths[2]), nn.ReLU(inplace=True))
    stem = cifar_stem("cifar-wrn", 16, stem_stride, post_activation=False)
    return _split_cifar(stem, stages, widths[:2], widths[2], num_classes)


class DenseLayer(nn.Module):
    """DenseNet-BC's layer (Huang et al., CVPR 2017, Sec. 3, "Bottleneck layers"):
    BN-ReLU-conv1x1 (4k channels)-BN-ReLU-conv3x3 (k channels), its output concatenated
    to its input."""

    def __init__(self, inplanes: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(inplanes), nn.ReLU(inplace=True),
            nn.Conv2d(inplanes, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def _transition(inplanes: int, outplanes: int) -> nn.Sequential:
    """DenseNet's transition layer: BN-ReLU-conv1x1-2x2 average pool (Sec. 3)."""
    return nn.Sequential(nn.BatchNorm2d(inplanes), nn.ReLU(inplace=True),
                         nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.AvgPool2d(2))


def cifar_densenet(depth: int, growth: int, num_classes: int, compression: float = 0.5,
                   stem_stride: int = 1) -> SplitBackbone:
    """DenseNet-BC-``depth`` with growth rate ``growth`` for 32x32 inputs (Huang et al.
    2017, Sec. 3-4): a 3x3 stem of 2k channels, three dense blocks of n = (depth - 4) / 6
    :class:`DenseLayer` s, transitions compressing by ``compression`` (theta = 0.5),
    BN-ReLU, GAP, linear. ABN's Table 2 uses depth 100, k = 12 (Sec. 4.1).

    Split as the ABN authors' code: ``features`` = stem, dense block 1, transition 1 +
    dense block 2, transition 2; ``last_stage`` = dense block 3 and the final BN-ReLU,
    which runs at the resolution of ``features`` (H/4), as its copy in the attention
    branch. Taps: the outputs of dense blocks 1 and 2 and of transition 2.
    """
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"cifar-densenet depth {depth}: DenseNet-BC depths are 6n+4 "
                        "(40, 100, 190, ...)")
    if growth < 1 or not 0 < compression <= 1:
        raise UserError(f"cifar-densenet growth must be >= 1 and compression in (0, 1], "
                        f"got {growth!r}, {compression!r}")
    n = (depth - 4) // 6

    def dense_block(width: int) -> nn.Sequential:
        return nn.Sequential(*(DenseLayer(width + j * growth, growth) for j in range(n)))

    width1 = 2 * growth + n * growth
    out1 = int(width1 * compression)
    width2 = out1 + n * growth
    out2 = int(width2 * compression)
    last_width = out2 + n * growth
    stages: list[nn.Module] = [
        dense_block(2 * growth),
        nn.Sequential(_transition(width1, out1), dense_block(out1)),
        nn.Sequential(dense_block(out2), nn.BatchNorm2d(last_width), nn.ReLU(inplace=True))]
    stem = cifar_stem("cifar-densenet", 2 * growth, stem_stride, post_activation=False)
    return _split_cifar(stem, stages, [width1, width2, out2], last_width, num_classes,
                        tail=(_transition(width2, out2),))


class ResNeXtBlock(nn.Module):
    """ResNeXt's bottleneck, form (c) (Xie et al., CVPR 2017, Fig. 3(c)): conv1x1 to
    C x d channels - grouped conv3x3 (C groups of d) - conv1x1 to ``planes``, BN after
    each, ReLU after the first two and after the residual sum; the shortcut as
    :class:`Bottleneck`'s."""

    def __init__(self, inplanes: int, planes: int, stride: int, cardinality: int,
                 group_width: int) -> None:
        super().__init__()
        inner = cardinality * group_width
        self.conv1 = nn.Conv2d(inplanes, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def cifar_resnext(depth: int, cardinality: int, num_classes: int, group_width: int = 64,
                  widen_factor: int = 4, stem_stride: int = 1) -> SplitBackbone:
    """ResNeXt-``depth``, ``cardinality`` x ``group_width``d for 32x32 inputs (Xie et al.
    2017, Sec. 5.3 / Table 7): a 64-channel 3x3 stem, three stages of
    n = (depth - 2) / 9 :class:`ResNeXtBlock` s (strides 1, 2, 2) whose outputs are
    64 x ``widen_factor`` x 2^i channels and whose groups are ``group_width`` x 2^i
    wide (i = 0, 1, 2), GAP, linear.

    ABN's Table 2 names "ResNeXt (depth=28, cardinality=8, widen factor=4)" (Sec. 4.1).
    We read it as the authors' code builds it: widen factor 4 makes the stage outputs
    256 / 512 / 1024 channels with groups of 64 / 128 / 256 channels (their block is
    C x 64 x 2^i wide whatever the widen factor), i.e. Xie et al.'s ResNeXt-29, 8x64d;
    the depth as 29, the code's default and the depth of its 8x64d CIFAR recipe (the
    code counts (depth - 2) // 9 blocks per stage, so 28 would silently build 2 blocks,
    a 20-layer net). Split after stage 2 as the CIFAR ResNets.
    """
    if depth < 11 or (depth - 2) % 9:
        raise UserError(f"cifar-resnext depth {depth}: depths are 9n+2 (11, 20, 29, ...)")
    if cardinality < 1 or group_width < 1 or widen_factor < 1:
        raise UserError(f"cifar-resnext cardinality, group_width and widen_factor must be "
                        f">= 1, got {cardinality!r}, {group_width!r}, {widen_factor!r}")
    n = (depth - 2) // 9
    widths = [64 * widen_factor * 2**i for i in range(3)]
    stages: list[nn.Module] = []
    inplanes = 64
    for i, planes in enumerate(widths):
        stages.append(nn.Sequential(*(
            ResNeXtBlock(inplanes if j == 0 else planes, planes,
                         (1 if i == 0 else 2) if j == 0 else 1, cardinality,
                         group_width * 2**i) for j in range(n))))
        inplanes = planes
    stem = cifar_stem("cifar-resnext", 64, stem_stride)
    return _split_cifar(stem, stages, widths[:2], widths[2], num_classes)


BACKBONES.add("cifar-wrn28-4", functools.partial(cifar_wrn, 28, 4),
              family="cifar-wrn", split="after stage 2",
              description="ABN Table 2's Wide ResNet: WRN-28-4, dropout 0.3")
BACKBONES.add("cifar-wrn28-10", functools.partial(cifar_wrn, 28, 10),
              family="cifar-wrn", split="after stage 2",
              description="WRN-28-10, dropout 0.3 (the ABN authors' code's recipe)")
BACKBONES.add("cifar-densenet-bc100", functools.partial(cifar_densenet, 100, 12),
              family="cifar-densenet", split="after transition 2",
              description="ABN Table 2's DenseNet: DenseNet-BC, depth 100, k = 12")
BACKBONES.add("cifar-resnext29-8x64d", functools.partial(cifar_resnext, 29, 8),
              family="cifar-resnext", split="after stage 2",
              description="ABN Table 2's ResNeXt (depth 28 in the text, cardinality 8, "
                          "widen factor 4): ResNeXt-29, 8x64d")


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
              "resnext50_32x4d", "wide_resnet50_2", "seresnet50", "seresnet152"):
    BACKBONES.add(_name, functools.partial(timm_backbone, _name),
                  family="timm-resnet", split="after stage 3 (stride 16)")
for _name in ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"):
    BACKBONES.add(_name, functools.partial(timm_backbone, _name),
                  family="timm-efficientnet", split="after blocks.4 (stride 16)")


# --------------------------------------------------------------------------------------
# VGG (torchvision): a fully-connected head
# --------------------------------------------------------------------------------------

#: width of the 3x3 convolution that stands for VGG's fully-connected layers in ABN's
#: attention branch: the CAM paper's VGG-GAP layer (Zhou et al., CVPR 2016, Sec. 2)
VGG_BRANCH_WIDTH = 1024


class FCHeadBackbone(SplitBackbone):
    """A :class:`SplitBackbone` whose head is fully-connected layers on a fixed-size
    pooled map, as VGG's: ``pool`` (pool5, 7x7 adaptive average pool, flatten) then
    ``fc`` (fc6 - ReLU - dropout - fc7 - ReLU - dropout - fc8).

    ABN's attention branch must not keep fully-connected layers: "if a baseline model
    contains a fully-connected layer, such as VGGNet, the attention branch replaces that
    fully-connected layer with a 3x3 convolution layer, similar with CAM" (Sec. 3.1).
    :meth:`attention_trunk` is therefore the stride-1 copy of the last stage followed by
    one 3x3 convolution of :data:`VGG_BRANCH_WIDTH` (1024) channels (+ BN with
    ``batch_norm``) and ReLU, the layer by which the CAM paper replaces VGG's
    fully-connected layers; ABN's K-channel layers follow it. The width is our choice:
    the paper gives none and the authors' released code has no VGG model.

    CAM does not apply (no GAP + linear head, ``head_kind`` ``"fc"``); Grad-CAM and the
    other gradient explainers do.
    """

    head_kind: ClassVar[str] = "fc"

    def __init__(self, features: nn.Sequential, last_stage: nn.Module, out_channels: int,
                 num_classes: int, pool: nn.Module, classifier: nn.Module, *,
                 batch_norm: bool, taps: tuple[int, ...], tap_channels: tuple[int, ...]
                 ) -> None:
        super().__init__(features, last_stage, out_channels, tap_channels[-1], num_classes,
                         taps=taps, tap_channels=tap_channels)
        self.pool = pool  # type: ignore[assignment]
        self.fc = classifier  # type: ignore[assignment]
        self.batch_norm = batch_norm

    def attention_trunk(self, keep_weights: bool = False) -> tuple[nn.Module, int]:
        """The stride-1 copy of the last stage, then a 3x3 convolution (1024 channels)
        in place of the fully-connected layers (Sec. 3.1), freshly initialised."""
        stage, width = super().attention_trunk(keep_weights)
        top = nn.Sequential(nn.Conv2d(width, VGG_BRANCH_WIDTH, 3, 1, 1,
                                      bias=not self.batch_norm))
        if self.batch_norm:
            top.append(nn.BatchNorm2d(VGG_BRANCH_WIDTH))
        top.append(nn.ReLU(inplace=True))
        reset_parameters(top)
        return nn.Sequential(stage, top), VGG_BRANCH_WIDTH


def _vgg_blocks(features: nn.Module) -> list[nn.Sequential]:
    """torchvision VGG's ``features`` as its five conv blocks, each ending at its max-pool."""
    blocks: list[nn.Sequential] = []
    current: list[nn.Module] = []
    for module in features.children():
        current.append(module)
        if isinstance(module, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    return blocks


def vgg_backbone(arch: str, num_classes: int, pretrained_file: str | None = None,
                 gap: bool = False) -> SplitBackbone:
    """torchvision's VGG ``arch`` (``weights=None``: never downloaded) split as ABN's
    ImageNet ResNets, at stride 16: ``features`` = conv blocks 1-4 (through pool4),
    ``last_stage`` = conv5_1 - conv5_3 (14 x 14 at 224 px, the resolution of ABN's
    ResNet attention maps, Sec. 3.4, and of CAM's and Grad-CAM's VGG maps); pool5 opens
    the head. Taps: the outputs of blocks 2, 3, 4 (strides 4, 8, 16). The authors'
    released code has no VGG; the paper gives no split point for it.

    Args:
        pretrained_file: a local torchvision state dict of ``arch`` (fc8 is dropped).
        gap: the CAM paper's VGG-GAP instead (Zhou et al. 2016, Sec. 2): pool5 and the
            fully-connected layers removed, a 3x3 convolution of 1024 channels + ReLU
            appended to the last stage, GAP + linear head.
    """
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if pretrained_file is not None:
        state = read_state_dict(pretrained_file)
        load_fitting(model, {k: v for k, v in state.items()
                             if not k.startswith("classifier.6.")},
                     pretrained_file, arch, ignore=("classifier.6.",))
    blocks = _vgg_blocks(model.features)
    features = nn.Sequential(*blocks[:4])
    conv5 = nn.Sequential(*list(blocks[4])[:-1])
    batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    taps, widths = (1, 2, 3), (128, 256, 512)
    if gap:
        top = nn.Sequential(nn.Conv2d(512, VGG_BRANCH_WIDTH, 3, 1, 1), nn.ReLU(inplace=True))
        reset_parameters(top)
        return SplitBackbone(features, nn.Sequential(*conv5, *top), VGG_BRANCH_WIDTH, 512,
                             num_classes, taps=taps, tap_channels=widths)
    pool = nn.Sequential(blocks[4][-1], model.avgpool, nn.Flatten(1))
    return FCHeadBackbone(features, conv5, 512, num_classes, pool, model.classifier,
                          batch_norm=batch_norm, taps=taps, tap_channels=widths)


for _name, _arch in (("vgg16", "vgg16"), ("vgg16-bn", "vgg16_bn"), ("vgg19", "vgg19")):
    BACKBONES.add(_name, functools.partial(vgg_backbone, _arch),
                  family="torchvision-vgg", split="after pool4 (stride 16)",
                  description="fully-connected head; ABN's branch: 3x3 conv, 1024")
for _name, _arch in (("vgg16-gap", "vgg16"), ("vgg16-bn-gap", "vgg16_bn")):
    BACKBONES.add(_name, functools.partial(vgg_backbone, _arch, gap=True),
                  family="torchvision-vgg", split="after pool4 (stride 16)",
                  description="CAM's VGG-GAP: conv5 + 3x3 conv 1024, GAP + linear")

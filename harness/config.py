"""Run configuration: dataclasses, presets and their resolution.

A preset fixes the dataset size, backbone, schedule and evaluation budget. Each method
may override parts of the schedule through its registered defaults (for example the
post-hoc explainers train for zero epochs). The resolved configuration of a method is
what its checkpoint cache key hashes, and what ``config.yaml`` records.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """The generic trainer's schedule: SGD with momentum and a multi-step LR.

    ``milestones`` are fractions of ``epochs`` at which the LR is multiplied by
    ``gamma`` (ABN paper, Sec. 4.1: divided by 10 at 50 % and 75 % of training).
    """

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation budget and metric options.

    Attributes:
        causal_n: number of test images (the first ones) scored with insertion/deletion.
        causal_step: positions changed per step; 0 means one image row (RISE protocol).
        forward_batch: images per forward pass inside the causal metrics; 0 (the
            default): the batch with the least time per image for the scored model on
            this device, timed once per model kind (:func:`metrics.causal.choose_batch`;
            the scores depend on it by float rounding at most).
        batch_size: test images per evaluation batch.
        bootstrap: resamples for the 95 % intervals.
        gallery_n: test images shown in the HTML attention gallery.
        timing_batches: batches timed for ``explain_ms``.
        precision: arithmetic of the evaluation's forward passes (predictions and the
            causal metrics' perturbed images): ``fp32`` by default, whatever the
            training precision, because the AUCs decide rankings; ``auto``/``bf16``
            allowed (recorded in the row's protocol).
        compile: score the causal metrics' perturbed images through
            ``torch.compile`` of the batch-norm-folded scoring copy (``--compile``; off
            by default: compiling takes seconds to minutes per model and needs a C++
            compiler on CPU). The AUCs agree with eager ones to float rounding (checked
            within 1e-5), like ``forward_batch``, so it is not part of any cache key.
        engine: what runs those forward passes: ``torch`` (the default) or
            ``onnxruntime`` (``--engine``; CPU, fp32: the scoring copy exported to ONNX
            once per model and run by ONNX Runtime; the optional ``onnx`` extra). Also
            float rounding only (checked within 1e-5) and not part of any cache key.
        streams: forward passes of the causal metrics run at once on a CPU, each with
            its share of the intra-op threads; 0 (the default): one per thread, within
            the perturbed images' memory budget (:func:`metrics.causal.choose_streams`),
            one with ``compile`` (its kernels' thread count is fixed when compiled) and
            on a GPU. Float rounding at most (the same images in every pass), not part
            of any cache key.
    """

    causal_n: int = 128
    causal_step: int = 0
    forward_batch: int = 0
    batch_size: int = 100
    bootstrap: int = 1000
    gallery_n: int = 8
    timing_batches: int = 3
    precision: str = "fp32"
    compile: bool = False
    engine: str = "torch"
    streams: int = 0


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on (minus the method list and output directory)."""

    preset: str = "default"
    dataset: str = "cluttered-digits"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone: str = "cifar-resnet8"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    #: per-method overrides: {"abn-amb": {"train": {...}, "options": {"sigma": 0.78}}}
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the method whose misclassified test images the ``comb`` insertion protocol uses
    comb_reference: str = "abn"
    #: arithmetic: "auto" (bfloat16 autocast where the device has it natively), "fp32", "bf16"
    precision: str = "auto"
    #: the methods the preset's protocol is for (``--methods all`` runs these); () = all
    for_methods: tuple[str, ...] = ()
    #: decoding worker processes (None: 0 for in-memory datasets, else up to 8)
    workers: int | None = None
    #: the preset's protocol starts from pretrained backbone weights (``--pretrained``)
    needs_pretrained: bool = False
    #: a local timm / torchvision state dict initialising the backbone (its SHA-256 is
    #: part of every checkpoint key)
    pretrained: str | None = None
    #: the protocol's own dataset and backbone (before ``--dataset``): the papers'
    #: numbers apply on these only
    preset_dataset: str = "cluttered-digits"
    preset_backbone: str = "cifar-resnet8"
    #: the ``--config`` file the run was configured from, if any
    config_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable view."""
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


#: the preset files (``harness/presets/<name>.yaml``), one per protocol
PRESET_DIR = Path(__file__).with_name("presets")
#: keys of a preset file besides the :class:`RunConfig` fields
_PRESET_KEYS = ("portable", "extends")
#: fields a preset or config file may not set (they come from the command line)
_NOT_SETTABLE = ("preset", "seed", "pretrained")


def _load_presets() -> dict[str, dict[str, Any]]:
    """Every preset file, the embedded benchmark's first, then by name."""
    files = sorted(PRESET_DIR.glob("*.yaml"),
                   key=lambda p: (p.stem not in ("smoke", "default"), p.stem != "smoke", p.stem))
    out = {}
    for f in files:
        spec = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        check_spec(spec, f"preset file {f.name}")
        out[f.stem] = spec
    return out


def resolve(preset: str, *, seed: int = 0, dataset: str | None = None,
            config_file: str | Path | None = None, sets: Sequence[str] = ()) -> RunConfig:
    """Build the :class:`RunConfig` of ``preset`` (or of ``config_file``, a preset-shaped
    YAML file that may ``extends:`` a preset), then ``--set key=value`` overrides, then
    ``dataset`` (only the preset's portable data options carry over to another dataset).

    Raises:
        UserError: unknown preset; an unknown or mistyped field (naming the field and the
            file or ``--set``).
    """
    if config_file is not None:
        own = read_config(config_file)
        preset = own.pop("extends", preset)
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r} (known: {', '.join(PRESETS)})")
    spec: dict[str, Any] = json.loads(json.dumps(PRESETS[preset]))
    if config_file is not None:
        _merge(spec, own)
    for item in sets:
        _merge(spec, parse_set(item))
    portable = spec.pop("portable", ())
    spec.pop("extends", None)
    own_dataset = spec.get("dataset", RunConfig.dataset)
    own_backbone = spec.get("backbone", RunConfig.backbone)
    if dataset is not None and dataset != own_dataset:
        # the preset's data options describe its own dataset; only the portable ones
        # (a photo's size and transforms) apply to another
        spec["dataset"] = dataset
        spec["dataset_kwargs"] = {k: v for k, v in spec.get("dataset_kwargs", {}).items()
                                  if k in portable}
    try:
        train = TrainConfig(**_tuples(spec.pop("train", {})))
        ev = EvalConfig(**spec.pop("eval", {}))
        spec["for_methods"] = tuple(spec.get("for_methods", ()))
        cfg = RunConfig(preset=preset, train=train, eval=ev, seed=seed,
                        preset_dataset=own_dataset, preset_backbone=own_backbone,
                        config_file=None if config_file is None else str(config_file),
                        **spec)
    except TypeError as err:  # pragma: no cover - check_spec catches these first
        raise UserError(f"bad configuration for preset {preset!r}: {err}") from None
    return cfg


def read_config(path: str | Path) -> dict[str, Any]:
    """A checked preset-shaped YAML file (see :func:`check_spec`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--config {p}: no such file")
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--config {p}: not valid YAML ({first})") from None
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise UserError(f"--config {p}: expected a mapping of fields, got "
                        f"{type(spec).__name__}")
    check_spec(spec, f"--config {p}")
    return spec


def parse_set(item: str) -> dict[str, Any]:
    """``--set a.b.c=value`` as ``{"a": {"b": {"c": value}}}`` (value read as YAML:
    numbers, booleans, lists), checked like a config file."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise UserError(f"--set {item!r}: expected key=value (e.g. train.epochs=10)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = [k.strip() for k in key.split(".")]
    for k in parts[:-1]:
        node = node.setdefault(k, {})
    node[parts[-1]] = value
    check_spec(out, f"--set {item}")
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def check_spec(spec: dict[str, Any], where: str) -> None:
    """Check a preset-shaped mapping against the dataclasses' fields and types.

    Raises:
        UserError: one line naming ``where`` and the first unknown or mistyped field.
    """
    hints = typing.get_type_hints(RunConfig)
    allowed = [f.name for f in dataclasses.fields(RunConfig)
               if f.name not in (*_NOT_SETTABLE, "preset_dataset", "preset_backbone",
                                 "config_file")]
    for k, v in spec.items():
        if k in ("train", "eval"):
            _check_section(v, TrainConfig if k == "train" else EvalConfig, f"{k}.", where)
        elif k == "methods":
            if not isinstance(v, dict):
                raise UserError(f"{where}: methods must map method ids to {{train, options}}")
            for m, mv in v.items():
                if not isinstance(mv, dict) or set(mv) - {"train", "options"}:
                    bad = sorted(set(mv) - {"train", "options"}) if isinstance(mv, dict) else []
                    raise UserError(f"{where}: methods.{m} takes 'train' and 'options' only"
                                    + (f", not {bad[0]!r}" if bad else ""))
                _check_section(mv.get("train", {}), TrainConfig, f"methods.{m}.train.", where)
                if not isinstance(mv.get("options", {}), dict):
                    raise UserError(f"{where}: methods.{m}.options must be a mapping")
        elif k == "portable":
            if not isinstance(v, list | tuple):
                raise UserError(f"{where}: portable must be a list of dataset options")
        elif k == "extends":
            if not isinstance(v, str):
                raise UserError(f"{where}: extends must name a preset")
        elif k in allowed:
            if not _fits(v, hints[k]):
                raise UserError(f"{where}: {k} must be {_describe(hints[k])}, got {v!r}")
        else:
            raise UserError(f"{where}: unknown field {k!r}{_close(k, [*allowed, *_PRESET_KEYS])}")


def _check_section(section: Any, cls: type, prefix: str, where: str) -> None:
    if not isinstance(section, dict):
        raise UserError(f"{where}: {prefix.rstrip('.')} must be a mapping of fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k, v in section.items():
        if k not in names:
            raise UserError(f"{where}: unknown field {prefix}{k}{_close(k, names)}")
        if not _fits(v, hints[k]):
            raise UserError(f"{where}: {prefix}{k} must be {_describe(hints[k])}, got {v!r}")


def _close(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_fits(x, args[0]) for x in value)
    if origin is dict:
        return isinstance(value, dict)
    return True  # pragma: no cover - no other field types


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], 'values')}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(hint, str(hint))


PRESETS: dict[str, dict[str, Any]] = _load_presets()


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def with_train_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``cfg`` with the trainer fields in ``overrides`` replaced (a method's defaults)."""
    if not overrides:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))


def config_hash(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable payload."""
    blob = json.dumps(_plain(payload), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

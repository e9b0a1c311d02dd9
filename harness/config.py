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
import math
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.device import ENGINES, PRECISIONS
from harness.errors import UserError, clip, shown, shown_path


class _Loader(yaml.SafeLoader):
    """YAML as configurations are written: ``1e-3`` is a number (YAML 1.2; PyYAML's
    1.1 rules read it as the string '1e-3', refused as "must be a number")."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``text`` read as YAML (safe: plain data only; ``1e-3`` a number)."""
    return yaml.load(text, Loader=_Loader)


#: the largest values a setting may take: beyond them a run is a typo, not a plan
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
#: images (causal_n) and positions changed per step (causal_step)
MAX_IMAGES = 2**31 - 1
MAX_WORKERS = 256
MAX_STREAMS = 256
#: below 40 resamples the 2.5 % and 97.5 % percentiles of a 95 % interval are the
#: extreme resamples themselves
MIN_BOOTSTRAP = 40
#: a configuration file larger than this is not one (a wrong path)
MAX_CONFIG_BYTES = 1 << 20
#: the bootstrap holds resamples x test images float64 weights at once (10,000 x the
#: 5,794 CUB test images: 0.5 GB)
MAX_BOOTSTRAP = 10_000
#: any integer in a configuration (dataset, backbone and method options included)
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class Bounds:
    """The values a number may take: ``[lo, hi]`` (an open end with ``lo_open``;
    ``None``: unbounded), always finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def holds(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}]"


def _num(v: float | None) -> str:
    return "-inf" if v is None else str(int(v)) if float(v).is_integer() else f"{v:g}"


def within(lo: float | None, hi: float | None, *, lo_open: bool = False) -> dict[str, Any]:
    """Field metadata: a number (or each number of a list) in :class:`Bounds`."""
    return {"bounds": Bounds(lo, hi, lo_open)}


def require(where: str, name: str, value: Any, lo: float | None, hi: float | None, *,
            lo_open: bool = False, integer: bool = False) -> None:
    """A factory's own option in :class:`Bounds` (a method's, a dataset's), refused in
    the words of the configuration's fields.

    Raises:
        UserError: ``where: name must be a number in [lo, hi], got value``.
    """
    bounds = Bounds(lo, hi, lo_open)
    kind_ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not kind_ok or not bounds.holds(value):
        what = "an integer" if integer else "a number"
        rng = str(bounds) if hi is None else f"in {bounds}"
        raise UserError(f"{where}: {name} must be {what} {rng}, got {shown(value)}")


def one_of(choices: Sequence[str]) -> dict[str, Any]:
    """Field metadata: one of ``choices``."""
    return {"choices": tuple(choices)}


#: the learning-rate schedules of :class:`TrainConfig`
SCHEDULES = ("step", "cosine")
#: how a multi-label loss adds up an image's per-label binary cross-entropies
LABEL_LOSSES = ("mean", "sum")


@dataclass(frozen=True)
class TrainConfig:
    """The generic trainer's schedule: SGD with momentum and a multi-step LR.

    ``milestones`` are fractions of ``epochs`` at which the LR is multiplied by
    ``gamma`` (ABN paper, Sec. 4.1: divided by 10 at 50 % and 75 % of training).
    ``schedule`` ``cosine`` replaces the steps by one cosine annealing cycle from ``lr``
    to 0 over the whole training, updated after every batch (the discriminative-
    attention paper's Caltech-256 recipe: Huang et al.'s cyclic cosine annealing with
    one cycle); ``milestones`` and ``gamma`` are then unused.

    ``label_loss`` (multi-label datasets): an image's loss is the ``mean`` of its
    per-label binary cross-entropies (the multi-label soft margin loss, Wang et al.
    Sec. 4.3) or their ``sum`` (one loss per task, summed, as multi-task learning adds
    its tasks' losses: ABN Sec. 3.4); the sum's gradients are C times the mean's.
    """

    epochs: int = field(default=6, metadata=within(1, MAX_EPOCHS))
    batch_size: int = field(default=64, metadata=within(1, MAX_BATCH))
    lr: float = field(default=0.1, metadata=within(0, None, lo_open=True))
    momentum: float = field(default=0.9, metadata=within(0, 1))
    weight_decay: float = field(default=1e-4, metadata=within(0, None))
    milestones: tuple[float, ...] = field(default=(0.5, 0.75),
                                          metadata=within(0, 1, lo_open=True))
    gamma: float = field(default=0.1, metadata=within(0, 1, lo_open=True))
    schedule: str = field(default="step", metadata=one_of(SCHEDULES))
    label_loss: str = field(default="mean", metadata=one_of(LABEL_LOSSES))


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation budget and metric options.

    Attributes:
        causal_n: number of test images (the first ones) scored by the lenses that
            perturb the images or explain them again: insertion/deletion, the confidence
            change, ROAD, the randomisation test and the robustness lenses.
        causal_step: positions changed per step; 0 means one image row (RISE protocol).
        forward_batch: images per forward pass inside the causal metrics; 0 (the
            default): tuned while the passes run, per model kind, from their measured
            time per image (:class:`metrics.tuning.BatchTuner`; with ``compile``, one
            batch chosen up front). The scores depend on it by float rounding at most;
            a fixed value makes them bitwise reproducible. What was used is recorded
            per row and per model kind (``causal_passes`` in ``config.yaml`` and the
            store, and on the protocol line).
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
        engine: what runs those forward passes (``--engine``): ``torch``, or
            ``onnxruntime`` (CPU, fp32: the scoring copy exported to ONNX once per model
            and run by ONNX Runtime; the optional ``onnx`` extra), or ``auto`` (the
            default): ONNX Runtime on a CPU in fp32 without ``compile`` where it is
            installed, else torch (:func:`harness.device.resolve_engine`). Float
            rounding only (checked within 1e-5) and not part of any cache key.
        streams: forward passes of the causal metrics run at once on a CPU, each with
            its share of the intra-op threads; 0 (the default): one per thread, within
            the perturbed images' memory budget (:func:`metrics.tuning.choose_streams`),
            one with ``compile`` (its kernels' thread count is fixed when compiled) and
            on a GPU. Float rounding at most (the same images in every pass), not part
            of any cache key.
        lens_seed: seeds the trust lenses' random draws (``class_sensitivity``'s other
            class of each image, the randomised models' weights, the robustness
            perturbations, ROAD's noise); the same for every method, so their scores
            pair.
        road_noise: the standard deviation of ROAD's imputation noise in [0, 1] pixel
            units (Rong et al.'s 0.01), divided by the normalisation's std per channel
            for the model inputs.
        sensitivity_radius: r of the robustness lenses' L-infinity ball, in normalised
            input units (0.1: about 10 % of a pixel's spread on the default data, 5-6
            grey levels, below the 8/255 budget read as imperceptible; captum uses
            0.02, about one grey level, Quantus 0.2).
        sensitivity_n: perturbations per image of the robustness lenses (10, captum's
            default; the scores are maxima over them, so they grow with it).
    """

    causal_n: int = field(default=128, metadata=within(1, MAX_IMAGES))
    causal_step: int = field(default=0, metadata=within(0, MAX_IMAGES))
    forward_batch: int = field(default=0, metadata=within(0, MAX_BATCH))
    batch_size: int = field(default=100, metadata=within(1, MAX_BATCH))
    bootstrap: int = field(default=1000, metadata=within(MIN_BOOTSTRAP, MAX_BOOTSTRAP))
    gallery_n: int = field(default=8, metadata=within(0, 1000))
    timing_batches: int = field(default=3, metadata=within(1, 1000))
    precision: str = field(default="fp32", metadata=one_of(PRECISIONS))
    compile: bool = False
    engine: str = field(default="auto", metadata=one_of(ENGINES))
    streams: int = field(default=0, metadata=within(0, MAX_STREAMS))
    lens_seed: int = field(default=0, metadata=within(0, 2 ** 32 - 1))
    road_noise: float = field(default=0.01, metadata=within(0, 1))
    sensitivity_radius: float = field(default=0.1, metadata=within(0, 100, lo_open=True))
    sensitivity_n: int = field(default=10, metadata=within(1, 10_000))


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
    precision: str = field(default="auto", metadata=one_of(PRECISIONS))
    #: the methods the preset's protocol is for (``--methods all`` runs these); () = all
    for_methods: tuple[str, ...] = ()
    #: decoding worker processes (None: 0 for in-memory datasets, else up to 8)
    workers: int | None = field(default=None, metadata=within(0, MAX_WORKERS))
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
#: RunConfig fields a preset or --config file cannot hold (set by the run itself)
NOT_IN_FILES = (*_NOT_SETTABLE, "preset_dataset", "preset_backbone", "config_file")


def _load_presets() -> dict[str, dict[str, Any]]:
    """Every preset file, the embedded benchmark's first, then by name."""
    files = sorted(PRESET_DIR.glob("*.yaml"),
                   key=lambda p: (p.stem not in ("smoke", "default"), p.stem != "smoke", p.stem))
    out = {}
    for f in files:
        spec = load_yaml(f.read_text(encoding="utf-8")) or {}
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
        close = difflib.get_close_matches(preset.lower(), list(PRESETS), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown --preset {shown(preset)} ({hint}--list names all "
                        f"{len(PRESETS)})")
    spec: dict[str, Any] = json.loads(json.dumps(PRESETS[preset]))
    overrides = ([own] if config_file is not None else []) + [parse_set(i) for i in sets]
    # what the preset itself names, before any override: its paper values are for these
    own_bb = spec.get("backbone", RunConfig.backbone)
    own_dataset = spec.get("dataset", RunConfig.dataset)
    new_bb = next((o["backbone"] for o in reversed(overrides) if "backbone" in o), own_bb)
    if new_bb != own_bb and spec.pop("backbone_kwargs", None):
        # the preset's backbone options describe its own backbone, not another
        print(f"note: backbone {new_bb} does not take preset {preset!r}'s backbone_kwargs "
              f"(options of {own_bb}): they are not used", file=sys.stderr)
    for extra in overrides:
        _merge(spec, extra)
    portable = spec.pop("portable", ())
    spec.pop("extends", None)
    if dataset is not None and dataset != own_dataset:
        # the preset's data options describe its own dataset; only the portable ones
        # (a photo's size and transforms) apply to another, and those the user set
        asked = {k for o in overrides for k in o.get("dataset_kwargs", {})}
        spec["dataset"] = dataset
        spec["dataset_kwargs"] = {k: v for k, v in spec.get("dataset_kwargs", {}).items()
                                  if k in portable or k in asked}
    try:
        train = TrainConfig(**_tuples(spec.pop("train", {})))
        ev = EvalConfig(**spec.pop("eval", {}))
        spec["for_methods"] = tuple(spec.get("for_methods", ()))
        cfg = RunConfig(preset=preset, train=train, eval=ev, seed=seed,
                        preset_dataset=own_dataset, preset_backbone=own_bb,
                        config_file=None if config_file is None else str(config_file),
                        **spec)
    except TypeError as err:  # pragma: no cover - check_spec catches these first
        raise UserError(f"bad configuration for preset {preset!r}: {err}") from None
    return cfg


def read_config(path: str | Path) -> dict[str, Any]:
    """A checked preset-shaped YAML file (see :func:`check_spec`)."""
    from harness.safeio import need_file

    p = need_file(path, "--config", "YAML file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"--config {shown_path(p)}: {p.stat().st_size >> 20} MB, not a "
                        "configuration (at most 1 MB)")
    try:
        spec = load_yaml(p.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--config {shown_path(p)}: not valid YAML ({clip(first)})") from None
    except OSError as err:
        raise UserError(f"--config {shown_path(p)}: cannot read it ({err.strerror or err})"
                        ) from None
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise UserError(f"--config {shown_path(p)}: expected a mapping of fields, got "
                        f"{type(spec).__name__}")
    check_spec(spec, f"--config {shown_path(p)}")
    return spec


def parse_set(item: str) -> dict[str, Any]:
    """``--set a.b.c=value`` as ``{"a": {"b": {"c": value}}}`` (value read as YAML:
    numbers, booleans, lists), checked like a config file."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise UserError(f"--set {shown(item)}: expected key=value (e.g. train.epochs=10)")
    try:
        value = load_yaml(raw)
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of > 4300 digits
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = [k.strip() for k in key.split(".")]
    for k in parts[:-1]:
        node = node.setdefault(k, {})
    node[parts[-1]] = value
    check_spec(out, f"--set {clip(item)}")
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def check_spec(spec: dict[str, Any], where: str) -> None:
    """Check a preset-shaped mapping against the dataclasses' fields, types and ranges.

    Every number is checked: a field's range (its ``bounds`` metadata, e.g.
    ``train.epochs`` in [1, 10000]), a string field's choices, and in the free-form
    mappings (``dataset_kwargs``, ``backbone_kwargs``, ``methods.*.options``) every
    number is finite and every integer at most :data:`MAX_INT` in magnitude (their
    types are checked against the named factory by :func:`check_kwargs`).

    Raises:
        UserError: one line naming ``where``, the first unknown or mistyped field and,
            for a number out of range, the allowed range.
    """
    hints = typing.get_type_hints(RunConfig)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    allowed = [n for n in fields if n not in NOT_IN_FILES]
    for k, v in spec.items():
        if k in ("train", "eval"):
            _check_section(v, TrainConfig if k == "train" else EvalConfig, f"{k}.", where)
        elif k == "methods":
            if not isinstance(v, dict):
                raise UserError(f"{where}: methods must map method ids to {{train, options}}")
            for m, mv in v.items():
                if not isinstance(mv, dict) or set(mv) - {"train", "options"}:
                    bad = sorted(set(mv) - {"train", "options"}) if isinstance(mv, dict) else []
                    raise UserError(f"{where}: methods.{shown(m)[1:-1]} takes 'train' and "
                                    "'options' only"
                                    + (f", not {shown(bad[0])}" if bad else ""))
                _check_section(mv.get("train", {}), TrainConfig, f"methods.{m}.train.", where)
                if not isinstance(mv.get("options", {}), dict):
                    raise UserError(f"{where}: methods.{m}.options must be a mapping")
                _check_numbers(mv.get("options", {}), f"methods.{m}.options", where)
        elif k == "portable":
            if not isinstance(v, list | tuple):
                raise UserError(f"{where}: portable must be a list of dataset options")
        elif k == "extends":
            if not isinstance(v, str):
                raise UserError(f"{where}: extends must name a preset")
        elif k in allowed:
            _check_value(v, hints[k], fields[k].metadata, k, where)
            if isinstance(v, dict):
                _check_numbers(v, k, where)
        else:
            raise UserError(f"{where}: unknown field {shown(k)}"
                            f"{_close(str(k), [*allowed, *_PRESET_KEYS])}")


def _check_section(section: Any, cls: type, prefix: str, where: str) -> None:
    if not isinstance(section, dict):
        raise UserError(f"{where}: {prefix.rstrip('.')} must be a mapping of fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in section.items():
        if k not in fields:
            raise UserError(f"{where}: unknown field {prefix}{shown(k)[1:-1]}"
                            f"{_close(str(k), list(fields))}")
        _check_value(v, hints[k], fields[k].metadata, f"{prefix}{k}", where)


def _check_value(v: Any, hint: Any, meta: Any, name: str, where: str) -> None:
    """One field's value: its type, then its range or choices."""
    if not _fits(v, hint):
        raise UserError(f"{where}: {name} must be {_describe(hint)}, got {shown(v)}")
    bounds: Bounds | None = meta.get("bounds")
    if bounds is not None and v is not None:
        many = isinstance(v, list | tuple)
        if not all(bounds.holds(x) for x in (v if many else [v])):
            what = f"{_describe(hint)}, each" if many else _describe(hint)
            where_to = f" {bounds}" if bounds.hi is None else f" in {bounds}"
            raise UserError(f"{where}: {name} must be {what}{where_to}, got {shown(v)}")
    choices = meta.get("choices")
    if choices and v not in choices:
        raise UserError(f"{where}: {name} must be one of {', '.join(choices)}, got {shown(v)}")


def _check_numbers(value: Any, name: str, where: str) -> None:
    """Every number inside ``value`` (mappings and lists, nested) is finite and, if an
    integer, at most :data:`MAX_INT` in magnitude."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{name}.{k}", where)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_numbers(v, f"{name}[{i}]", where)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and abs(value) > MAX_INT:
        raise UserError(f"{where}: {name} must be an integer in [-{MAX_INT}, {MAX_INT}], "
                        f"got {shown(value)}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a finite number, got {value}")


def check_kwargs(fn: Any, kwargs: dict[str, Any], what: str, where: str) -> None:
    """The values of ``kwargs`` have the types ``fn``'s signature annotates (names it
    does not take are left to the caller).

    Raises:
        UserError: ``where: what.name must be <type>, got <value>``.
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return
    for k, v in kwargs.items():
        if k in hints and not _fits(v, hints[k]):
            raise UserError(f"{where}: {what}.{k} must be {_describe(hints[k])}, got "
                            f"{shown(v)}")


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
    if hint is Path:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list, Sequence):
        return isinstance(value, list | tuple) and all(_fits(x, args[0]) for x in value)
    if origin is dict:
        return isinstance(value, dict)
    return True  # other annotations (a factory's own types): not checked here


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list, Sequence):
        plural = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], 'values')}"
    if origin is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", Path: "a path"}.get(hint, getattr(hint, "__name__", str(hint)))


PRESETS: dict[str, dict[str, Any]] = _load_presets()
#: who registered each preset that is not a file of :data:`PRESET_DIR` (a plugin)
PRESET_SOURCES: dict[str, str] = {}


def register_preset(name: str, spec: dict[str, Any] | str | Path) -> None:
    """Add preset ``name`` (a preset-shaped mapping, or a YAML file's path), checked as
    the project's own preset files are; it may ``extends:`` one of them.

    Raises:
        UserError: the name is taken (naming both sources), or a field is wrong.
    """
    from harness.registry import OWN, current_source

    source = current_source()
    if name in PRESETS:
        raise UserError(f"preset {shown(name)} is registered twice: by "
                        f"{PRESET_SOURCES.get(name, OWN)} and by {source}")
    if isinstance(spec, (str, Path)):
        where = f"preset file {shown_path(spec)}"
        own = load_yaml(Path(spec).read_text(encoding="utf-8")) or {}
    else:
        where = f"preset {name!r}"
        own = json.loads(json.dumps(spec))
    if not isinstance(own, dict):
        raise UserError(f"{where}: expected a mapping of fields")
    base = own.pop("extends", None)
    out: dict[str, Any] = {}
    if base is not None:
        if base not in PRESETS:
            raise UserError(f"{where}: extends unknown preset {shown(base)} (known: "
                            f"{', '.join(PRESETS)})")
        out = json.loads(json.dumps(PRESETS[base]))
    _merge(out, own)
    check_spec(out, where)
    PRESETS[name] = out
    PRESET_SOURCES[name] = source


def remove_presets(source: str) -> list[str]:
    """Forget the presets ``source`` registered; returns their names."""
    gone = [n for n, s in PRESET_SOURCES.items() if s == source]
    for n in gone:
        del PRESETS[n]
        del PRESET_SOURCES[n]
    return gone


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

"""Device selection and the few device-dependent speed paths, shared by training and
evaluation.

Everywhere: channels_last memory format for models and image batches (measured on the
2-core CPU default: +15 % training and +40 % inference throughput for the CIFAR ResNets).
On CUDA only: pinned host memory and non-blocking copies.

Precision (``--precision``): ``auto`` trains and scores under bfloat16 autocast where the
device computes bfloat16 natively (CUDA GPUs with bf16 support; CPUs with AMX or
AVX512-BF16, measured 1.4x-2.7x faster training steps on the default), float32
elsewhere. Under CPU autocast activations (attention maps included) are bfloat16; every
loss and every thresholded quantity upcasts what it reads to float32, and no loss
scaling is needed for bfloat16. The resolved precision is part of every checkpoint's
cache key and of the run record.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from harness.errors import UserError, clip, shown


def select(name: str) -> torch.device:
    """Resolve ``--device auto|cpu|cuda[:N]``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {clip(name)}: CUDA is not available on this machine (use "
                        "cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {shown(name)}")
    return torch.device(name)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a collated batch to ``device`` (non-blocking on CUDA)."""
    nb = device.type == "cuda"
    out = {k: v.to(device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in batch.items()}
    out["image"] = channels_last(out["image"])
    return out


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """``images`` ``[B,C,H,W]`` in channels_last memory format (values unchanged)."""
    return images.contiguous(memory_format=torch.channels_last)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in channels_last memory format."""
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = (getattr(torch.cpu, "_is_amx_tile_supported", None),
                  getattr(torch.cpu, "_is_avx512_bf16_supported", None))
        return any(bool(f()) for f in checks if f is not None)
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where native, else ``fp32``; explicit values pass through."""
    if requested not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                        f"{shown(requested)}")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bfloat16 autocast when ``precision`` resolves to bf16 on ``device``; else a no-op."""
    if resolve_precision(precision, device) == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders should pin host memory."""
    return device.type == "cuda"


def fixed_batch(fn: Callable[[torch.Tensor], torch.Tensor], batch: int
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` (images -> logits) always called with ``batch`` images: a shorter input
    is padded with copies of its first image and the extra rows dropped, a longer one
    split (rows are independent in eval mode). For engines specialised to one shape."""

    def run(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for lo in range(0, len(x), batch):
            part = x[lo : lo + batch]
            n = len(part)
            if n < batch:
                part = torch.cat([part, part[:1].expand(batch - n, *part.shape[1:])])
            outs.append(fn(part)[:n])
        return torch.cat(outs) if len(outs) != 1 else outs[0]

    return run


def compiled_logits(fn: Callable[[torch.Tensor], torch.Tensor], batch: int
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` through ``torch.compile``, specialised to ``batch`` images
    (:func:`fixed_batch`), so it is never recompiled."""
    # a new model each time: dynamo's caches start empty, so models evaluated one after
    # another do not add up to its recompile limit (then it would run eager, silently)
    torch._dynamo.reset()
    return fixed_batch(torch.compile(fn, dynamic=False), batch)


#: inference engines for the causal metrics' forward passes (``eval.engine``); ``auto``
#: resolves to one of the others (:func:`resolve_engine`)
ENGINES = ("auto", "torch", "onnxruntime")


def check_engine(name: str) -> str:
    """``name`` if it is one of :data:`ENGINES`, else a one-line error."""
    if name not in ENGINES:
        raise UserError(f"eval.engine must be one of {', '.join(ENGINES)}, got {shown(name)}")
    return name


def resolve_engine(name: str, device: torch.device, precision: str, compiled: bool) -> str:
    """``eval.engine`` as it runs: ``auto`` is ``onnxruntime`` on a CPU in fp32 without
    ``--compile`` when ONNX Runtime and the ONNX exporter are installed (the ``onnx``
    extra; the same scores to float rounding, faster on a CPU), else ``torch``; the
    others as given."""
    if check_engine(name) != "auto":
        return name
    if device.type != "cpu" or precision != "fp32" or compiled:
        return "torch"
    import importlib.util

    have = all(importlib.util.find_spec(m) is not None
               for m in ("onnxruntime", "onnx", "onnxscript"))
    return "onnxruntime" if have else "torch"


def _export_onnx(model: nn.Module, x: torch.Tensor, path: str, *, dynamo: bool) -> None:
    """``model`` traced on ``x`` into an ONNX file at ``path``, the batch dimension free:
    by the ``torch.export`` exporter (``dynamo``) or by the TorchScript one (a tenth of
    a second for the default's models where the other takes 1-3 s)."""
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, input_names=["images"],
                              output_names=["logits"], dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("images", min=1)},))
        else:
            torch.onnx.export(model, (x,), path, input_names=["images"],
                              output_names=["logits"], dynamo=False,
                              dynamic_axes={"images": {0: "images"}})


def _same_logits(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether an exported graph's logits are the model's up to float rounding: within
    1e-3 of the logits' largest magnitude (plus 1e-4). Rounding grows with the size of
    the values a network carries, not with each logit's own: a deep network's logits of
    order 1e9 (an untrained ResNet-110) differ by hundreds after a reordered sum, and a
    logit near 0 among them by as much. Where the model's own logits are NaN or inf (an
    untrained network in eval mode can overflow), the graph's must be the same there;
    what the model then scores is for the evaluation's own checks to say."""
    ok = torch.isfinite(want)
    if not torch.equal(ok, torch.isfinite(got)) or not torch.equal(
            want[~ok].nan_to_num(), got[~ok].nan_to_num()):
        return False
    if not ok.any():
        return True
    return bool((got[ok] - want[ok]).abs().max() <= 1e-3 * want[ok].abs().max() + 1e-4)


def onnx_logits(model: nn.Module, batch: int, sample: torch.Tensor,
                threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (images -> logits, eval mode, float32) exported to ONNX, traced on
    ``batch`` images like ``sample`` ``[C,H,W]`` with the batch dimension left free (any
    number of images a call: the forward batch may change while the causal metrics
    run; as fast as a graph of one fixed batch, measured), and run by ONNX Runtime's
    CPU provider with ``threads`` threads a call (default: this process's thread count;
    calls from several threads run at once); inputs and outputs stay torch tensors on
    the CPU. The TorchScript exporter's graph is kept when it gives the model's logits
    (:func:`_same_logits`) on random images at another batch than traced; otherwise
    (an operator or a shape it cannot trace, a batch size baked into the graph) the
    ``torch.export`` exporter's is.

    Raises:
        UserError: the ``onnx`` extra is not installed, or ``sample`` is not on the CPU.
        RuntimeError: neither exporter's graph reproduces the model's logits.
    """
    import os
    import tempfile

    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("--engine onnxruntime needs ONNX Runtime: pip install "
                        "'attnbench[onnx]'") from None
    if sample.device.type != "cpu":
        raise UserError("--engine onnxruntime runs on the CPU; on CUDA use --compile")
    x = sample.detach().expand(max(2, batch), *sample.shape).contiguous().float()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # idle ORT threads would spin between passes, taking the cores from torch's
    # building of the next perturbed batch (measured: 1.9 s -> 0.96 s a run)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    # another number of images than traced, so that a graph with the batch baked in fails
    check = torch.randn(x.shape[0] + 1, *sample.shape,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(check).float()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scoring.onnx")
        # the TorchScript exporter first; where it cannot trace the model, or its graph
        # does not give the model's logits at another batch, torch.export's
        for dynamo in (False, True):
            try:
                _export_onnx(model, x, path, dynamo=dynamo)
                session = ort.InferenceSession(path, opts,
                                               providers=["CPUExecutionProvider"])
                got = torch.from_numpy(session.run(None, {"images": check.numpy()})[0])
                if got.shape == want.shape and _same_logits(got, want):
                    break
            except Exception:  # the tracer's failures take many forms: try the other
                if dynamo:
                    raise
        else:  # torch.export's graph, and it disagrees with the model
            raise RuntimeError("the ONNX export of the scoring model does not reproduce "
                               "its logits; use --engine torch")

    def run(z: torch.Tensor) -> torch.Tensor:
        arr = z.detach().float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"images": arr})[0])

    return run

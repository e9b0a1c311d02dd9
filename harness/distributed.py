"""Runs across processes: ``torchrun --nproc_per_node N -m harness.run ...``.

torchrun starts N copies of the run and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init` joins them into one process group (NCCL on CUDA, gloo on
CPU). Every rank runs the same program; what differs is decided here:

- training: each method's training steps run through one
  :class:`torch.nn.parallel.DistributedDataParallel` wrapper (:func:`ddp_engine`), each
  rank on its part of every global batch (:class:`GlobalBatches`), so the preset's
  batch size stays the global one and the world size is not part of a checkpoint's key;
- files: rank 0 alone reads and writes checkpoints, resume files, the results store and
  the reports; what it read is broadcast (:func:`share`), so ranks on machines without
  a shared file system get the same state;
- evaluation: the test images are dealt out (:func:`shard`) and the per-image metric
  states gathered back in image order (:meth:`metrics.base.PerImageMetric.gather`).

One process (no torchrun) is the world of size 1, and every function here is then a
no-op or the identity.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from harness.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"
    #: batch norm statistics over the global batch while training (``--sync-bn``)
    sync_bn: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that reads and writes files and prints."""
        return self.rank == 0


_WORLD = World()


def current() -> World:
    """The world :func:`init` joined (size 1 before, or without torchrun)."""
    return _WORLD


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto", timeout_minutes: float = 60.0, sync_bn: bool = False
         ) -> World:
    """Join torchrun's process group (nothing to do for one process).

    Args:
        device: the run's ``--device``: CUDA ranks use NCCL, CPU ranks gloo.
        sync_bn: train with :class:`torch.nn.SyncBatchNorm` (CUDA only).
        timeout_minutes: how long a collective waits for the other ranks (one rank may
            train a parent method for a while before the others' next step).
    """
    global _WORLD
    if not launched():
        _WORLD = World()
        return _WORLD
    if _WORLD.size > 1:
        return _WORLD
    cuda = device != "cpu" and torch.cuda.is_available()
    if sync_bn and not cuda:
        raise UserError("--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm does not "
                        "run on CPU")
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    except (RuntimeError, ValueError) as err:
        raise UserError(f"could not join torchrun's process group ({backend}): "
                        f"{str(err).splitlines()[0]}") from None
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local, backend, sync_bn)
    return _WORLD


def device(requested: str) -> str:
    """The device a rank runs on: ``cuda`` becomes this rank's ``cuda:LOCAL_RANK``."""
    w = current()
    if w.size > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return requested


def finish() -> None:
    """Leave the process group once every rank is done (rank 0 may still be writing
    the reports when the others arrive)."""
    global _WORLD
    if _WORLD.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _WORLD = World()


def barrier() -> None:
    """Wait until every rank is here."""
    if current().size > 1:
        dist.barrier()


def share(make: Callable[[], T]) -> T:
    """``make()`` computed on rank 0 and broadcast to every rank (pickled): what rank 0
    read from a file, so that all ranks continue from the same state. An exception
    raised by ``make`` on rank 0 is raised on every rank."""
    w = current()
    if w.size == 1:
        return make()
    box: list[Any] = [None]
    if w.main:
        try:
            box[0] = ("ok", make())
        except BaseException as err:  # re-raised here and on every other rank
            box[0] = ("err", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]


def broadcast_state(module: nn.Module) -> None:
    """Every rank's parameters and buffers set to rank 0's (after training: the batch
    norm statistics of each rank's last forward differ)."""
    if current().size == 1:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def shard(n: int) -> range:
    """The test images of this rank: ``rank, rank + size, ...`` below ``n`` (no
    padding: each image is scored on exactly one rank)."""
    w = current()
    return range(w.rank, n, w.size)


def check_batch(global_batch: int) -> int:
    """This rank's batch size: the preset's (global) batch over the world size."""
    w = current()
    if global_batch % w.size:
        raise UserError(f"train.batch_size {global_batch} is not divisible by the world "
                        f"size {w.size}: the global batch is split evenly across ranks "
                        "(set --set train.batch_size=... or change --nproc_per_node)")
    return global_batch // w.size


class GlobalBatches(Sampler[list[int]]):
    """Batches of sample indices: this rank's part of each global batch of one shuffled
    pass, the permutation drawn from ``generator`` exactly as a single process's
    ``DataLoader(shuffle=True, drop_last=True)`` draws it, so that N ranks together see
    the same global batches as one process (unlike
    :class:`torch.utils.data.DistributedSampler`, which permutes with its own seed and
    pads). Rank r takes rows ``r*b .. (r+1)*b - 1`` of each global batch of ``size*b``.
    """

    def __init__(self, n: int, global_batch: int, generator: torch.Generator) -> None:
        w = current()
        self.n, self.global_batch, self.generator = n, global_batch, generator
        self.per_rank = check_batch(global_batch)
        self.lo = w.rank * self.per_rank

    def __len__(self) -> int:
        return self.n // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        for i in range(len(self)):
            start = i * self.global_batch + self.lo
            yield perm[start : start + self.per_rank]
        # torch's RandomSampler draws a second (empty) permutation when it is exhausted:
        # drawn here too, so the next epoch's generator state is a shuffling loader's
        torch.randperm(self.n, generator=self.generator)


class _Closure(nn.Module):
    """The module DDP wraps: its forward runs whatever loss computation it is given, so
    that a method's training step, whichever sub-modules and however many forward
    passes it uses, goes through DDP's forward once per backward pass."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, objective: Callable[[], Any]) -> Any:
        return objective()


#: runs a method's loss computation (a closure) for one backward pass
Engine = Callable[[Callable[[], T]], T]


def direct(objective: Callable[[], T]) -> T:
    """One process: the loss computation as it is."""
    return objective()


@contextlib.contextmanager
def ddp_engine(method: nn.Module, device: torch.device) -> Iterator[Engine[Any]]:
    """The engine running a method's loss computations under DDP, for the block (the
    wrapper and its gradient hooks are released at its end).

    Each call is one DDP forward, so the backward pass that follows averages the
    gradients over the ranks: a method with two optimisers (COT, COMB) makes two calls
    per step, each followed by its own backward and optimiser step, and both are
    synchronised (no ``no_sync``: each step needs the averaged gradients). Methods
    taking gradients inside the loss (discriminative attention, ``create_graph=True``)
    call ``torch.autograd.grad`` with respect to feature maps inside the closure; DDP's
    gradient hooks fire only in the final ``backward`` into the parameters.
    ``find_unused_parameters`` is on because several steps leave parameters out (the
    frozen feature extractor of ``abn-hk``, the perception branch in COMB's second
    step).
    """
    if current().size == 1:
        yield direct
        return
    held = [nn.parallel.DistributedDataParallel(
        _Closure(method), device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True, broadcast_buffers=True)]
    try:
        yield lambda objective: held[0](objective)
    finally:
        held.clear()
        gc.collect()  # the reducer (and its hooks on the parameters) goes now


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (the same keys on every rank)."""
    if current().size == 1 or not values:
        return values
    w = current()
    where = torch.device("cuda", w.local_rank) if w.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=where)
    dist.all_reduce(t)
    return {k: float(v) / current().size for k, v in zip(values, t.tolist(), strict=True)}


def sync_batchnorm(method: nn.Module, device: torch.device) -> Callable[[], None]:
    """Every :class:`torch.nn.BatchNorm2d` of ``method`` replaced by a
    :class:`torch.nn.SyncBatchNorm` sharing its parameters and statistics (CUDA only:
    PyTorch's implementation refuses CPU tensors). Returns the function that puts the
    original modules back (they hold the trained values, being shared), for the
    evaluator's batch-norm folding and one-process use.

    Raises:
        UserError: not on CUDA, or batch norms of another kind (e.g. timm's
            ``BatchNormAct2d``, whose activation a SyncBatchNorm would drop).
    """
    if device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm does not "
                        "run on CPU")
    norms = [(n, m) for n, m in method.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    other = sorted({type(m).__name__ for _, m in norms if type(m) is not nn.BatchNorm2d})
    if other:
        raise UserError(f"--sync-bn converts torch.nn.BatchNorm2d only; this model also "
                        f"has {', '.join(other)}")
    for name, bn in norms:
        sync = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                bn.track_running_stats)
        if bn.affine:
            sync.weight, sync.bias = bn.weight, bn.bias
        sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
        sync.num_batches_tracked = bn.num_batches_tracked
        sync.train(bn.training)
        method.set_submodule(name, sync)

    def restore() -> None:
        for name, bn in norms:
            bn.train(method.get_submodule(name).training)
            method.set_submodule(name, bn)

    return restore


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the other ranks do (e.g. building a dataset cache
    the others then read)."""
    w = current()
    if w.size > 1 and not w.main:
        dist.barrier()
    yield
    if w.size > 1 and w.main:
        dist.barrier()

"""Model-parameter randomisation (Adebayo et al., NeurIPS 2018, "Sanity checks for
saliency maps", Sec. 3.1): copies of a trained model whose parameter groups are
re-initialised top-down, one more group per step (cascading) or one group alone
(independent), and the similarity of a map before and after (Spearman rank correlation
of ``|map|``, SSIM). An explanation that passes changes when the model does.

Groups come from :meth:`methods.base.Method.parameter_groups`. A group is
re-initialised by its modules' own ``reset_parameters`` (PyTorch's default initialisers,
as Quantus' ``get_random_layer_generator``), under a seed derived from the lens seed and
the group's position, with the global generators restored afterwards. Batch-norm layers
in a group are reset by theirs too: scale 1, shift 0, running mean 0 and variance 1, so
in evaluation such a layer passes its input through (divided by sqrt(1 + eps)); their
statistics are not re-estimated on data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["MODES", "check_groups", "randomised_models", "rank_correlation", "ranks",
           "spearman", "step_seed"]

#: the two randomisation schemes, in the order their steps are reported
MODES = ("cascading", "independent")

Groups = Sequence[tuple[str, Sequence[nn.Module]]]


def check_groups(model: nn.Module, groups: Groups) -> None:
    """Refuse groups that do not partition ``model``'s parameters or that hold a
    parameter no ``reset_parameters`` re-initialises.

    Raises:
        ValueError: a parameter in no group or in two, a duplicate group name, or a
            module owning parameters without ``reset_parameters``.
    """
    owner: dict[int, str] = {}
    names: set[str] = set()
    for name, modules in groups:
        if name in names:
            raise ValueError(f"parameter group {name!r} is named twice")
        names.add(name)
        for module in modules:
            for sub_name, sub in module.named_modules():
                if any(True for _ in sub.parameters(recurse=False)) and not callable(
                        getattr(sub, "reset_parameters", None)):
                    raise ValueError(f"group {name!r}: module {sub_name or type(sub).__name__} "
                                     f"({type(sub).__name__}) has parameters but no "
                                     "reset_parameters to randomise them")
            for p in module.parameters():
                if owner.get(id(p), name) != name:
                    raise ValueError(f"a parameter is in groups {owner[id(p)]!r} and {name!r}")
                owner[id(p)] = name
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    if missing:
        raise ValueError(f"parameters in no group: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))


def step_seed(seed: int, step: int) -> int:
    """The seed re-initialising the ``step``-th group (0: the top one) under lens seed
    ``seed``: distinct groups draw distinct weights (Quantus seeds every layer alike)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _reinitialise(modules: Sequence[nn.Module], seed: int) -> None:
    """Every module under ``modules`` that owns parameters or batch-norm statistics
    re-initialised by its own ``reset_parameters`` from ``seed``; the global random
    generators are left as they were."""
    devices = sorted({p.device.index or 0 for m in modules for p in m.parameters()
                      if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in modules:
            for sub in module.modules():
                own = any(True for _ in sub.parameters(recurse=False))
                stats = isinstance(sub, nn.modules.batchnorm._NormBase)
                reset = getattr(sub, "reset_parameters", None)
                if (own or stats) and callable(reset):
                    reset()


def _in_copy(model: nn.Module, clone: nn.Module,
             modules: Sequence[nn.Module]) -> list[nn.Module]:
    """``modules`` of ``model`` as the same modules of its deep copy ``clone``."""
    path = {id(m): n for n, m in model.named_modules()}
    return [clone.get_submodule(path[id(m)]) for m in modules]


def randomised_models(model: nn.Module, groups: Groups, seed: int,
                      seeds: Sequence[int] | None = None
                      ) -> list[tuple[str, str, nn.Module]]:
    """(mode, group, model copy) for each step of both schemes: cascading, where step
    i re-initialises groups 0..i (the top ``i + 1``), then independent, where step i
    re-initialises group i alone. Group i uses ``seeds[i]`` (default
    :func:`step_seed` of ``seed``), the same in both schemes, so the first steps of the
    two are one model (returned once for each). ``model`` is left untouched; the copies
    keep its training mode and device.

    Raises:
        ValueError: groups that do not partition the parameters (:func:`check_groups`).
    """
    check_groups(model, groups)
    seeds = [step_seed(seed, i) for i in range(len(groups))] if seeds is None else seeds
    out: list[tuple[str, str, nn.Module]] = []
    cascade = copy.deepcopy(model)
    for i, (name, modules) in enumerate(groups):
        _reinitialise(_in_copy(model, cascade, modules), seeds[i])
        out.append(("cascading", name, copy.deepcopy(cascade)))
    for i, (name, modules) in enumerate(groups):
        if i == 0:
            out.append(("independent", name, out[0][2]))
            continue
        alone = copy.deepcopy(model)
        _reinitialise(_in_copy(model, alone, modules), seeds[i])
        out.append(("independent", name, alone))
    return out


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based, float64) of each row of ``x`` ``[B,n]``, tied values sharing the
    mean of their ranks (``scipy.stats.rankdata``'s ``average``)."""
    b, n = x.shape
    v, order = torch.sort(x, dim=1, stable=True)
    new = torch.ones_like(v, dtype=torch.bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    group = new.long().cumsum(1) - 1 + n * torch.arange(b, device=x.device).view(-1, 1)
    pos = torch.arange(n, device=x.device, dtype=torch.float64).expand(b, n).reshape(-1)
    flat = group.reshape(-1)
    first = torch.full((b * n,), float(n), dtype=torch.float64, device=x.device)
    first = first.scatter_reduce(0, flat, pos, "amin")
    last = torch.zeros(b * n, dtype=torch.float64, device=x.device)
    last = last.scatter_reduce(0, flat, pos, "amax")
    mean_rank = ((first[flat] + last[flat]) / 2 + 1).view(b, n)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of rows (maps are flattened): the Pearson
    correlation of their ranks, ties averaged (``scipy.stats.spearmanr``). Where a map
    is constant it has no order: 1 if both are constant (nothing changed), else 0
    (scipy: NaN). In float64; ``[B]``."""
    return rank_correlation(ranks(a.flatten(1).double()), ranks(b.flatten(1).double()))


def rank_correlation(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """:func:`spearman` from the rows' :func:`ranks` (a map compared with several
    others is ranked once)."""
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    sa, sb = ra.square().sum(1), rb.square().sum(1)
    flat_a, flat_b = sa == 0, sb == 0
    r = (ra * rb).sum(1) / (sa * sb).clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    r = torch.where(flat_a | flat_b, torch.zeros_like(r), r.clamp(-1, 1))
    return torch.where(flat_a & flat_b, torch.ones_like(r), r)

"""ROAD, Remove And Debias (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods"): the pixels an explanation ranks first (MoRF) or last
(LeRF) are removed and filled by *noisy linear imputation*, and the model's probability
of the tracked class is read on the filled image, at several removed fractions.

Sec. 4 of the paper: each removed pixel takes the weighted mean of its 8 neighbours inside
the image (weight 1/6 for the 4 direct, 1/12 for the 4 diagonal ones), kept or removed
alike. Those equations, one per removed pixel and channel, form a sparse symmetric
positive definite system, solved here for a whole batch at once by conjugate gradients
preconditioned with a geometric multigrid V-cycle (:func:`impute`). Gaussian noise of a
small standard deviation is then added to the filled pixels only, so that the filled
values do not give away where the mask was (the paper's "debiasing").

Functional cores on batches, on the images' device; :func:`road_scores` turns maps into the
``[B, F]`` MoRF and LeRF probabilities and :func:`road_summary` into per-image columns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metrics import checks
from metrics.causal import rank_positions

__all__ = ["FRACTIONS", "ORDERS", "image_seed", "impute", "removed_count", "road_images",
           "road_keep_masks", "road_scores", "road_summary"]

#: the removed fractions of Rong et al.'s figures and of pytorch-grad-cam's ROAD averages
FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: most relevant first, least relevant first
ORDERS = ("morf", "lerf")

Model = Callable[[torch.Tensor], torch.Tensor]

# The imputation's neighbour weights (Sec. 4): 1/6 for a direct, 1/12 for a diagonal
# neighbour. The solver works with 12 times the equations, whose coefficients are then
# small integers (2 and 1, exact in float32 on every level of the multigrid).
_DIRECT, _DIAGONAL = 2.0, 1.0
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # row-major 3 x 3
_CENTRE = 4
# damping of the Jacobi smoother. The V-cycle is a symmetric positive definite
# preconditioner when 2 D / omega - A is positive definite on every level, which holds for
# omega <= 1 (each level's matrix is weakly diagonally dominant and its graph, with the
# diagonal couplings, not bipartite). Measured on 64 x 64 images, 18 masks: 0.7 -> 16.8,
# 0.9 -> 15.6, 1.0 -> 15.4 CG iterations on average; 0.9 keeps a margin.
_OMEGA = 0.9
# pixels (systems x H x W) solved together: bounds the solver's buffers (about 50 bytes
# a pixel and channel) and keeps them near the CPU's caches
_CHUNK_PIXELS = 1 << 18
# the coarsest level, solved with the inverse of its matrix, has at most this many cells
# (4 x 4 for a power-of-two side)
_DENSE = 16


def _weight(dy: int, dx: int) -> float:
    return _DIRECT if dy == 0 or dx == 0 else _DIAGONAL


def _fractions(fractions: Sequence[float]) -> list[float]:
    out = [float(f) for f in fractions]
    if not out:
        raise ValueError("fractions is empty: give at least one removed fraction")
    bad = [f for f in out if not (math.isfinite(f) and 0.0 < f < 1.0)]
    if bad:
        raise ValueError(f"fractions must lie strictly between 0 and 1, got {bad}")
    return out


def removed_count(fraction: float, pixels: int) -> int:
    """Pixels removed of ``pixels`` at ``fraction``: ``floor(fraction * pixels + 1/2)``
    (the nearest integer, halves rounded up)."""
    return math.floor(fraction * pixels + 0.5)


def road_keep_masks(maps: torch.Tensor, fractions: Sequence[float] = FRACTIONS,
                    order: str = "morf") -> torch.Tensor:
    """The pixels kept at each removed fraction, by rank (Rong et al. 2022).

    The map ranks the H*W pixels in one descending order, ties in raster (row-major)
    order: the rank of :func:`metrics.causal.rank_positions`, a stable sort. At fraction f
    exactly ``k = floor(f * H * W + 1/2)`` pixels are removed: MoRF removes the first k of
    that order (among equal values the lower raster index goes first), LeRF the last k
    (among equal values the higher raster index goes first; LeRF is the tail of the same
    order, as in the authors' code, not a second sort). A map that is constant, or has
    more zeros than k, still loses exactly k pixels. pytorch-grad-cam instead keeps the
    pixels *below* a percentile of the map, so a tie at the percentile removes all of the
    tied pixels, at MoRF on a map that is mostly 0 every pixel. (The authors' code takes
    ``int(f * H * W)`` pixels, breaks ties with a fixed random jitter of 1e-4 on the
    rescaled map, and indexes its LeRF run by the *kept* fraction: its LeRF at p removes
    the last 1 - p. Here both orders are indexed by the removed fraction; over the
    symmetric 0.1 ... 0.9 the means are the same.)

    Args:
        maps: ``[B,H,W]`` or ``[B,1,H,W]`` finite saliency maps.
        fractions: removed fractions, each in (0, 1).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).

    Returns:
        bool ``[B, F, H, W]`` on the maps' device, True where the pixel is kept.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    fr = _fractions(fractions)
    m = checks.maps(maps, "maps")
    b, h, w = m.shape
    n = h * w
    rank = rank_positions(m).view(b, 1, n)
    k = torch.tensor([removed_count(f, n) for f in fr], device=m.device).view(1, -1, 1)
    keep = rank >= k if order == "morf" else rank < n - k
    return keep.view(b, len(fr), h, w)


# ---------------------------------------------------------------------------------------
# the linear fill: 12 x (the paper's equations) on the removed pixels R,
#   deg(i) u_i - sum_{j in N(i)} w_ij u_j = 0   for i in R,   u = image on kept pixels,
# deg(i) = sum of the weights of i's in-image neighbours (12 inside, 8 on an edge, 5 in a
# corner). With the separable [1,2,1] x [1,2,1] sum S (zero padded, centre weight 4) and
# s1 = S(1) = deg + 4, the matrix on R is A x = m * (s1 x - S x), m the removed mask.
# ---------------------------------------------------------------------------------------


def _sep121(x: torch.Tensor) -> torch.Tensor:
    """S x on the last two dims of ``x``: [1,2,1] x [1,2,1] with zero padding."""
    p = F.pad(x, (1, 1, 1, 1))
    t = p[..., :-2, :] + p[..., 2:, :] + 2 * p[..., 1:-1, :]
    return t[..., :-2] + t[..., 2:] + 2 * t[..., 1:-1]


def _coarse_fill(v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The starting guess: ``v`` where ``k`` > 0, elsewhere a coarse-to-fine fill. The
    grid is halved with mask-weighted 2 x 2 means down to one pixel, each level's holes
    are filled from the level below, upsampled bilinearly (a "push-pull" pyramid).
    ``v`` ``[M,C,H,W]``, ``k`` ``[M,1,H,W]`` 0/1 of ``v``'s dtype, every image with some
    ``k`` > 0."""
    h, w = v.shape[-2:]
    if h == 1 and w == 1:
        return v
    vk = F.pad(v * k, (0, w % 2, 0, h % 2))
    kk = F.pad(k, (0, w % 2, 0, h % 2))
    vs, ks = F.avg_pool2d(vk, 2), F.avg_pool2d(kk, 2)
    coarse = _coarse_fill(vs / ks.clamp_min(1e-12), (ks > 0).to(v.dtype))
    up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    return torch.where(k > 0, v, up[..., :h, :w])


def _galerkin(c: torch.Tensor) -> torch.Tensor:
    """The 3 x 3 stencils ``[9, M, h, w]`` (one plane per offset in :data:`_OFFSETS`; the
    coefficient of pixel i on pixel i + d) of P^T A P, P the piecewise-constant
    prolongation from 2 x 2 blocks: a coarse cell couples to a neighbour cell with the sum
    of the couplings between their children. Odd sides get a zero row / column."""
    h, w = c.shape[-2:]
    c = F.pad(c, (0, w % 2, 0, h % 2))
    out = c.new_zeros(9, c.shape[1], (h + 1) // 2, (w + 1) // 2)
    for j, (dy, dx) in enumerate(_OFFSETS):
        for ay in (0, 1):
            for ax in (0, 1):
                cy, cx = (ay + dy) // 2, (ax + dx) // 2  # the child's neighbour's block
                out[(cy + 1) * 3 + cx + 1] += c[j, :, ay::2, ax::2]
    return out


class _Grid:
    """One level of the solver's grids. A field of ``C`` channels over ``M`` systems is a
    ``[C, M * (h+2) * (w+2)]`` tensor: each system's ``h`` x ``w`` values inside a border of
    zeros, all systems one after the other. A neighbour at offset (dy, dx) is then a
    constant shift of the flat index, so every stencil term is one contiguous slice for
    the whole batch (``lo:hi`` covers every inner pixel; what lands on a border is
    multiplied by a zero coefficient)."""

    def __init__(self, systems: int, h: int, w: int) -> None:
        self.m, self.h, self.w = systems, h, w
        self.pitch = w + 2
        self.size = (h + 2) * (w + 2)
        self.n = systems * self.size
        self.lo, self.hi = self.pitch + 1, self.n - self.pitch - 1

    def planes(self, x: torch.Tensor) -> torch.Tensor:
        """``[K, M, h, w]`` -> flat ``[K, n]`` with the zero borders."""
        return F.pad(x, (1, 1, 1, 1)).reshape(x.shape[0], self.n)

    def inner(self, flat: torch.Tensor) -> torch.Tensor:
        """The ``[K, M, h, w]`` view of the inner pixels of a flat field."""
        return flat.view(flat.shape[0], self.m, self.h + 2, self.w + 2)[:, :, 1:-1, 1:-1]

    def blocks(self, flat: torch.Tensor, hc: int, wc: int) -> torch.Tensor:
        """The ``[K, M, 2 hc, 2 wc]`` view covering the 2 x 2 blocks of the next level (an
        odd side takes in the zero border's row / column)."""
        g = flat.view(flat.shape[0], self.m, self.h + 2, self.w + 2)
        return g[:, :, 1:1 + 2 * hc, 1:1 + 2 * wc]

    def at(self, flat: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
        """The slice of ``flat`` holding, at every inner pixel, its neighbour (dy, dx)."""
        o = dy * self.pitch + dx
        return flat[..., self.lo + o: self.hi + o]


def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    """Inverses of the symmetric positive definite ``[M, n, n]`` by Gauss-Jordan elimination
    in place, without pivoting (stable for SPD matrices). Plain batched tensor ops: a
    batched LAPACK inverse costs a call per matrix, which on a busy 2-core CPU took
    15 ms each."""
    a = a.clone()
    for k in range(a.shape[-1]):
        inv = 1.0 / a[:, k, k]
        row = a[:, k, :] * inv[:, None]
        col = a[:, :, k].clone()
        a -= col[:, :, None] * row[:, None, :]
        a[:, k, :] = row
        a[:, :, k] = -col * inv[:, None]
        a[:, k, k] = inv
    return a


def _dense_inverse(stencil: torch.Tensor) -> torch.Tensor:
    """``[M, h*w, h*w]`` inverses of the matrices whose 3 x 3 stencils are ``stencil``
    ``[9, M, h, w]``; a cell without unknowns (zero row) gets a 1 on the diagonal, so it
    stays decoupled and its value 0. Formed in float64, returned in float32."""
    _, m_, h, w = stencil.shape
    n = h * w
    mat = torch.zeros(m_, n, n, dtype=torch.float64, device=stencil.device)
    cell = torch.arange(n, device=stencil.device)
    y, x = cell // w, cell % w
    for j, (dy, dx) in enumerate(_OFFSETS):
        ok = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
        rows = cell[ok]
        mat[:, rows, rows + dy * w + dx] += stencil[j].reshape(m_, n)[:, rows].double()
    diag = mat.diagonal(dim1=1, dim2=2)
    diag += (diag <= 0).double()
    return _spd_inverse(mat).float()


class _Level:
    """A coarse level: its Galerkin stencils and the solver's buffers. The coarsest level
    (at most :data:`_DENSE` cells) is solved exactly with the inverse of its matrix."""

    def __init__(self, grid: _Grid, stencil: torch.Tensor, c: int, last: bool) -> None:
        self.grid = grid
        flat = grid.planes(stencil)  # [9, n]
        self.coef = [flat[j, grid.lo:grid.hi] for j in range(9)]
        diag = flat[_CENTRE]
        self.inv = torch.where(diag > 0, _OMEGA / diag.clamp_min(1e-30),
                               torch.zeros_like(diag))
        self.live = (diag > 0).to(diag.dtype)
        self.dense = _dense_inverse(stencil) if last else None
        self.r, self.z, self.t, self.up = (torch.zeros(c, grid.n, dtype=diag.dtype,
                                                       device=diag.device) for _ in range(4))

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out = A x`` on this level (the inner range; borders stay 0)."""
        g = self.grid
        o = out[:, g.lo:g.hi]
        torch.mul(g.at(x), self.coef[_CENTRE], out=o)
        for j, (dy, dx) in enumerate(_OFFSETS):
            if j != _CENTRE:
                o.addcmul_(self.coef[j], g.at(x, dy, dx))

    def exact(self) -> None:
        """``z`` = A^-1 ``r`` with the dense inverse (the coarsest level)."""
        assert self.dense is not None
        g = self.grid
        r = g.inner(self.r).reshape(-1, g.m, 1, g.h * g.w)  # [C, M, 1, hw]
        z = (self.dense * r).sum(-1)  # [C, M, hw]: a broadcast product, no BLAS call
        g.inner(self.z).copy_(z.view(-1, g.m, g.h, g.w))


class _Solver:
    """Conjugate gradients for ``M`` systems of ``C`` channels at once, preconditioned by
    a V(1,1)-cycle: damped Jacobi before and after the coarse correction, 2 x 2
    aggregation and Galerkin coarse stencils down to at most :data:`_DENSE` cells, solved
    exactly there. The cycle is symmetric, so it is a valid CG preconditioner. float32
    throughout."""

    def __init__(self, removed: torch.Tensor, c: int) -> None:
        m_, h, w = removed.shape
        dev = removed.device
        f32 = torch.float32
        self.c = c
        self.grid = g = _Grid(m_, h, w)
        rem = removed.to(f32).unsqueeze(0)  # [1, M, h, w]
        # the finest level's 3 x 3 stencils: -w_d on removed neighbours, deg on the centre
        rp = F.pad(rem, (1, 1, 1, 1))
        inside = F.pad(torch.ones(1, 1, h, w, device=dev, dtype=f32), (1, 1, 1, 1))
        planes = []
        deg = torch.zeros(1, 1, h, w, device=dev, dtype=f32)
        for dy, dx in _OFFSETS:
            if (dy, dx) == (0, 0):
                planes.append(rem)  # placeholder, set below
                continue
            wt = _weight(dy, dx)
            planes.append(-wt * rem * rp[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
            deg = deg + wt * inside[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        planes[_CENTRE] = deg * rem
        stencil = torch.cat(planes, 0)  # [9, M, h, w]
        jacobi = torch.where(deg > 0, _OMEGA / deg.clamp_min(1), torch.zeros_like(deg)) * rem
        flat = g.planes(torch.cat([rem, (deg + 4) * rem, jacobi], 0))
        self.mask = flat[0]  # removed pixels
        self.ms1 = flat[1, g.lo:g.hi]  # s1 on removed pixels
        self.neg_mask = -flat[0, g.lo:g.hi]
        self.inv = flat[2]  # damped Jacobi: omega / deg on removed pixels
        self.levels: list[_Level] = []
        hh, ww = h, w
        while not self.levels or hh * ww > _DENSE:
            stencil = _galerkin(stencil)
            hh, ww = stencil.shape[-2:]
            self.levels.append(_Level(_Grid(m_, hh, ww), stencil, c, hh * ww <= _DENSE))
        self.t, self.res, self.up, self.tmp = (torch.zeros(c, g.n, device=dev, dtype=f32)
                                               for _ in range(4))

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out = A x`` on the finest level (borders of ``out`` stay 0)."""
        g = self.grid
        t = self.t[:, g.lo - 1:g.hi + 1]  # vertical [1,2,1] one pixel either side
        torch.add(x[:, g.lo - 1 - g.pitch:g.hi + 1 - g.pitch],
                  x[:, g.lo - 1 + g.pitch:g.hi + 1 + g.pitch], out=t)
        t.add_(x[:, g.lo - 1:g.hi + 1], alpha=2)
        o = out[:, g.lo:g.hi]
        torch.add(t[:, :-2], t[:, 2:], out=o)
        o.add_(t[:, 1:-1], alpha=2)  # S x
        o.mul_(self.neg_mask).addcmul_(self.ms1, g.at(x))  # m * (s1 x - S x)

    @staticmethod
    def _restrict(src_grid: _Grid, src: torch.Tensor, dst: _Level) -> None:
        """``dst.r`` = the 2 x 2 block sums of ``src`` (P^T; ``src`` is 0 off the mask)."""
        b = src_grid.blocks(src, dst.grid.h, dst.grid.w)
        d = dst.grid.inner(dst.r)
        torch.add(b[..., 0::2, 0::2], b[..., 0::2, 1::2], out=d)
        d.add_(b[..., 1::2, 0::2]).add_(b[..., 1::2, 1::2])

    @staticmethod
    def _prolong(level: _Level, dst_grid: _Grid, up: torch.Tensor) -> None:
        """``up`` = ``level.z`` copied to each cell's 2 x 2 children (P, before the
        mask)."""
        z = level.grid.inner(level.z)
        b = dst_grid.blocks(up, level.grid.h, level.grid.w)
        for ay in (0, 1):
            for ax in (0, 1):
                b[..., ay::2, ax::2] = z

    def _coarse(self, i: int) -> None:
        """V-cycle on coarse level ``i``: ``level.z`` from ``level.r``."""
        lv = self.levels[i]
        if lv.dense is not None:
            lv.exact()
            return
        torch.mul(lv.r, lv.inv, out=lv.z)
        lv.apply(lv.z, lv.t)
        torch.sub(lv.r, lv.t, out=lv.t)
        nxt = self.levels[i + 1]
        self._restrict(lv.grid, lv.t, nxt)
        self._coarse(i + 1)
        self._prolong(nxt, lv.grid, lv.up)
        lv.z.addcmul_(lv.live, lv.up)
        lv.apply(lv.z, lv.t)
        torch.sub(lv.r, lv.t, out=lv.t)
        lv.z.addcmul_(lv.inv, lv.t)

    def precondition(self, r: torch.Tensor, z: torch.Tensor) -> None:
        """``z`` = the V-cycle applied to ``r`` (finest level)."""
        torch.mul(r, self.inv, out=z)
        self.apply(z, self.res)
        torch.sub(r, self.res, out=self.res)
        self._restrict(self.grid, self.res, self.levels[0])
        self._coarse(0)
        self._prolong(self.levels[0], self.grid, self.up)
        z.addcmul_(self.mask, self.up)
        self.apply(z, self.res)
        torch.sub(r, self.res, out=self.res)
        z.addcmul_(self.inv, self.res)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[C, M]`` inner products per system and channel."""
        torch.mul(a, b, out=self.tmp)
        return self.tmp.view(self.c, self.grid.m, self.grid.size).sum(-1)

    def solve(self, r: torch.Tensor, tol2b: torch.Tensor, max_iter: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preconditioned CG for ``A d = r`` from ``d = 0``: ``r`` flat ``[C, n]`` (consumed),
        ``tol2b`` ``[C, M]`` the squared residual norm below which a system stops. Each
        system and channel has its own step sizes and stops on its own (its later steps
        are 0), so its result does not depend on the others in the batch. Returns ``d``
        and the iterations per system and channel."""
        c, m_, size = self.c, self.grid.m, self.grid.size
        d = torch.zeros_like(r)
        z, p, q = torch.zeros_like(r), torch.zeros_like(r), torch.zeros_like(r)
        r3, d3, p3, q3 = (t.view(c, m_, size) for t in (r, d, p, q))
        active = self.dot(r, r) > tol2b
        iterations = torch.zeros(c, m_, dtype=torch.long, device=r.device)
        if not bool(active.any()):
            return d, iterations
        self.precondition(r, z)
        p.copy_(z)
        rz = self.dot(r, z)
        for _ in range(max_iter):
            iterations += active
            self.apply(p, q)
            pq = self.dot(p, q)
            alpha = torch.where(active & (pq > 0), rz / pq.clamp_min(1e-30),
                                torch.zeros_like(pq)).unsqueeze(-1)
            d3.addcmul_(alpha, p3)
            r3.addcmul_(alpha, q3, value=-1.0)
            active &= self.dot(r, r) > tol2b
            if not bool(active.any()):
                break
            self.precondition(r, z)
            rz_new = self.dot(r, z)
            beta = torch.where(active & (rz > 0), rz_new / rz.clamp_min(1e-30),
                               torch.zeros_like(rz)).unsqueeze(-1)
            p3.mul_(beta).add_(z.view(c, m_, size))
            rz = rz_new
        return d, iterations


def _wide(device: torch.device) -> torch.dtype:
    """float64 where the device has it (the starting guess, the first residual and the
    final sum are formed in it), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def _fill_chunk(images: torch.Tensor, keep: torch.Tensor, tol: float, max_iter: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise-free linear fill of ``images`` ``[M,C,H,W]`` (each with a removed and a
    kept pixel) under ``keep`` ``[M,H,W]``, in the wide dtype, and the iterations
    ``[M, C]``."""
    c = images.shape[1]
    x = images.to(_wide(images.device))
    k = keep.unsqueeze(1).to(x.dtype)
    u0 = _coarse_fill(x, k)
    s1 = _sep121(torch.ones_like(k[:1]))
    rem = 1 - k
    r0 = rem * (_sep121(u0) - s1 * u0)  # residual of the starting guess (12 x)
    b = rem * _sep121(x * k)  # right-hand side: the kept neighbours' weighted sum (12 x)
    tol2b = (tol ** 2) * b.square().sum((-2, -1)).t().float()  # [C, M]
    solver = _Solver(~keep, c)
    g = solver.grid
    r = g.planes(r0.float().transpose(0, 1).contiguous())
    d, iterations = solver.solve(r, tol2b, max_iter)
    filled = u0 + g.inner(d).transpose(0, 1).to(x.dtype)
    return filled, iterations.t()


def _linear_fill(images: torch.Tensor, keep: torch.Tensor, tol: float, max_iter: int,
                 source: torch.Tensor | None = None, chunk_pixels: int = _CHUNK_PIXELS
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`impute` without noise. System i fills ``images[source[i]]`` (``source``
    None: image i) under ``keep[i]`` ``[N,H,W]``. Returns the filled images ``[N,C,H,W]``
    (the images' dtype, kept pixels bitwise unchanged) and the CG iterations ``[N, C]``
    (0 for a system without removed pixels). The systems are solved in chunks of about
    ``chunk_pixels`` pixels, ordered by their number of removed pixels, so that the
    systems of a chunk need about as many iterations."""
    src = torch.arange(len(keep), device=images.device) if source is None else source
    out = images[src]
    n, c, h, w = out.shape
    iterations = torch.zeros(n, c, dtype=torch.long, device=images.device)
    removed = (~keep).flatten(1).sum(1)
    todo = torch.nonzero(removed > 0).flatten()
    todo = todo[torch.argsort(removed[todo], stable=True)]
    step = max(1, chunk_pixels // (h * w))
    for lo in range(0, len(todo), step):
        idx = todo[lo:lo + step]
        filled, its = _fill_chunk(out[idx], keep[idx], tol, max_iter)
        out[idx] = torch.where(keep[idx].unsqueeze(1), out[idx], filled.to(out.dtype))
        iterations[idx] = its
    unconverged = int((iterations >= max_iter).any(1).sum())
    if unconverged:
        warnings.warn(f"noisy linear imputation: {unconverged} of {n} images did not reach "
                      f"the relative residual {tol:g} in {max_iter} iterations",
                      RuntimeWarning, stacklevel=3)
    return out, iterations


def _keep_plane(keep: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    k = keep[:, 0] if keep.dim() == 4 and keep.shape[1] == 1 else keep
    n, _, h, w = images.shape
    if tuple(k.shape) != (n, h, w):
        raise ValueError(f"keep has shape {tuple(keep.shape)}: expected [{n},{h},{w}] or "
                         f"[{n},1,{h},{w}] for images {tuple(images.shape)}")
    if k.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor (True = kept), got {k.dtype}")
    k = k.to(images.device)
    empty = torch.nonzero(~k.flatten(1).any(1)).flatten()
    if len(empty):
        raise ValueError(f"image(s) {empty[:5].tolist()} keep no pixel: linear imputation "
                         "needs at least one known pixel per image")
    return k


def _noise_std(noise: float | Sequence[float] | torch.Tensor, c: int,
               ref: torch.Tensor) -> torch.Tensor:
    """The noise's standard deviation as ``[C,1,1]`` (or ``[1,1,1]``) on ``ref``'s device."""
    std = torch.as_tensor(noise, dtype=ref.dtype, device=ref.device).reshape(-1)
    if std.numel() not in (1, c) or not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
        raise ValueError(f"noise must be one standard deviation >= 0 or one per channel "
                         f"({c}), got {noise!r}")
    return std.view(-1, 1, 1)


@torch.no_grad()
def impute(images: torch.Tensor, keep: torch.Tensor,
           noise: float | Sequence[float] | torch.Tensor = 0.01,
           generator: torch.Generator | None = None, tol: float = 1e-7,
           max_iter: int = 200) -> torch.Tensor:
    """Noisy linear imputation (Rong et al. 2022, Sec. 4; the authors' ``NoisyLinearImputer``).

    Every removed pixel's value, per channel, solves the linear system in which each
    removed pixel equals the weighted mean of its neighbours inside the image, kept or
    removed: ``deg(i) u_i = sum_j w_ij u_j`` with w = 1/6 for the 4 direct and 1/12 for the
    4 diagonal neighbours and ``deg(i)`` the sum of the weights of i's in-image neighbours
    (1 inside, 2/3 on an edge, 5/12 in a corner); kept neighbours are known values. The
    matrix is symmetric positive definite once an image keeps a pixel (each region of
    removed pixels then touches a kept one). Then Gaussian noise of standard deviation
    ``noise`` is added to the imputed pixels only. Kept pixels are returned unchanged.

    Solved for the whole batch at once by conjugate gradients, preconditioned by a
    geometric multigrid V-cycle (damped Jacobi, 2 x 2 aggregation, Galerkin coarse
    stencils), expressed as shifted adds on the images' device, started from a
    coarse-to-fine fill of the kept pixels; each image and channel has its own step
    sizes and stops when its residual is below ``tol`` times its right-hand side (2-norm
    over the removed pixels). The iterations run in float32, the starting residual and the
    final sum in float64: on 64 x 64 images with 90 % removed the result agrees with a
    direct sparse solve to about 3e-6 at the default ``tol``. Measured on 64 x 64 images
    under smooth maps: about 16 iterations on average over ROAD's 18 masks, at most 25
    (at 90 %); Jacobi-preconditioned CG needs 5 to 8 times as many.

    Args:
        images: ``[N,C,H,W]`` float.
        keep: bool ``[N,H,W]`` or ``[N,1,H,W]``, True where the pixel is kept.
        noise: the noise's standard deviation in the images' units, one value or one per
            channel (the paper's 0.01 is for pixel values in [0, 1]: on normalised inputs
            divide it by each channel's standard deviation); 0 gives the exact fill.
        generator: the ``torch.Generator`` the noise is drawn from, on the images'
            device (None: the global one). The noise is one ``randn`` of the images' shape,
            so the same generator state gives the same noise.
        tol: relative residual at which a system stops.
        max_iter: iterations at most (a RuntimeWarning names the images that did not
            converge).

    Returns:
        ``[N,C,H,W]`` of the images' dtype.

    Raises:
        ValueError: ``images`` not ``[N,C,H,W]`` float; ``keep`` of another shape or not
            bool; an image keeping no pixel; a negative or non-finite ``noise``.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float [N,C,H,W] tensor, got {images.dtype} "
                         f"{tuple(images.shape)}")
    k = _keep_plane(keep, images)
    std = _noise_std(noise, images.shape[1], images)
    out, _ = _linear_fill(images, k, tol, max_iter)
    if bool((std > 0).any()):
        eps = torch.randn(images.shape, generator=generator, device=images.device,
                          dtype=images.dtype)
        out = out + torch.where(k.unsqueeze(1), torch.zeros_like(eps), eps * std)
    return out


def image_seed(seed: int, image_id: int) -> int:
    """The 64-bit seed of the noise of the image with test-split index ``image_id``:
    ``numpy.random.SeedSequence([seed, image_id])``'s first 64-bit word (independent of the
    other images in the batch)."""
    if seed < 0 or image_id < 0:
        raise ValueError(f"seed and image ids must be >= 0, got {seed} and {image_id}")
    return int(np.random.SeedSequence([seed, image_id]).generate_state(1, np.uint64)[0])


def _image_ids(ids: torch.Tensor | Sequence[int] | None, b: int) -> list[int]:
    if ids is None:
        return list(range(b))
    out = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]
    if len(out) != b:
        raise ValueError(f"ids has {len(out)} entries for {b} images")
    return out


@torch.inference_mode()
def road_images(images: torch.Tensor, maps: torch.Tensor,
                fractions: Sequence[float] = FRACTIONS, orders: Sequence[str] = ORDERS,
                noise: float | Sequence[float] | torch.Tensor = 0.01, seed: int = 0,
                ids: torch.Tensor | Sequence[int] | None = None, tol: float = 1e-7,
                max_iter: int = 200) -> torch.Tensor:
    """The images after ROAD's removal (Rong et al. 2022, Sec. 4): for each image,
    order and fraction f, the pixels of :func:`road_keep_masks` removed and filled by
    :func:`impute`, batched over images x orders x fractions.

    The noise of image i is ``randn(len(orders) * F, C, H, W)`` (the first order's
    fractions, then the next's) drawn on the CPU from a ``torch.Generator`` seeded with
    :func:`image_seed` ``(seed, ids[i])``, then moved to the images' device and kept on
    the removed pixels only: an image gets the same noise whatever else is in the batch,
    on every device.

    Args:
        images: ``[B,C,H,W]`` model inputs.
        maps: ``[B,H,W]`` or ``[B,1,H,W]`` at the input resolution.
        fractions: removed fractions, each in (0, 1).
        orders: which of :data:`ORDERS` to remove in, each giving F images.
        noise: the imputation noise's standard deviation in the images' units, one value
            or one per channel (:func:`impute`).
        seed: the run's seed of the noise.
        ids: ``[B]`` the images' indices in their split (None: 0..B-1).
        tol, max_iter: the imputation's convergence (:func:`impute`).

    Returns:
        ``[B, len(orders) * F, C, H, W]`` of the images' dtype, on their device.

    Raises:
        ValueError: bad shapes, orders, fractions, noise or ids; a fraction that removes
            every pixel.
    """
    images = checks.images(images)
    b, c, h, w = images.shape
    sal = checks.maps(maps, "maps", n=b)
    if tuple(sal.shape[-2:]) != (h, w):
        raise ValueError(f"maps of {tuple(sal.shape[-2:])} pixels for images of {(h, w)}: "
                         "resize them to the input first")
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise ValueError(f"orders must be some of {ORDERS}, got {tuple(orders)}")
    fr = _fractions(fractions)
    n = len(orders) * len(fr)
    std = _noise_std(noise, c, images)
    seeds = [image_seed(seed, i) for i in _image_ids(ids, b)]
    if b == 0:
        return images.new_zeros(0, n, c, h, w)
    sal = sal.to(images.device)
    keep = torch.cat([road_keep_masks(sal, fr, o) for o in orders], 1)  # [B, n, H, W]
    if not bool(keep.flatten(2).any(2).all()):
        raise ValueError(f"a fraction of {max(fr):g} removes every pixel of a {h} x {w} "
                         "image: linear imputation needs a kept pixel")
    source = torch.arange(b, device=images.device).repeat_interleave(n)
    x, _ = _linear_fill(images, keep.view(-1, h, w), tol, max_iter, source=source)
    if bool((std > 0).any()):
        gen = torch.Generator(device="cpu")
        for i, s in enumerate(seeds):
            gen.manual_seed(s)
            eps = torch.randn((n, c, h, w), generator=gen, dtype=images.dtype)
            rows = slice(i * n, (i + 1) * n)
            x[rows] += torch.where(keep[i].unsqueeze(1), 0.0, eps.to(images.device) * std)
    return x.view(b, n, c, h, w)


@torch.inference_mode()
def road_scores(model: Model, images: torch.Tensor, maps: torch.Tensor,
                classes: torch.Tensor, fractions: Sequence[float] = FRACTIONS,
                noise: float | Sequence[float] | torch.Tensor = 0.01, seed: int = 0,
                ids: torch.Tensor | Sequence[int] | None = None,
                forward_batch: int | None = None, tol: float = 1e-7,
                max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax probability of ``classes`` after ROAD's removal (Rong et al. 2022,
    Sec. 4 and 5): for each image and fraction f, the pixels of
    :func:`road_keep_masks` removed in MoRF and in LeRF order, filled by :func:`impute`
    (the images of :func:`road_images`: an image gets the same noise whatever else is in
    the batch, on every device). The authors' code
    tracks the class predicted on the unperturbed image, pytorch-grad-cam's example the
    label: ``classes`` decides.

    Args:
        model: maps ``[N,C,H,W]`` images to logits ``[N,K]``.
        images: ``[B,C,H,W]`` model inputs.
        maps: ``[B,H,W]`` or ``[B,1,H,W]`` at the input resolution.
        classes: ``[B]`` the class whose probability is read.
        fractions: removed fractions, each in (0, 1).
        noise: the imputation noise's standard deviation in the images' units, one value
            or one per channel (:func:`impute`).
        seed: the run's seed of the noise.
        ids: ``[B]`` the images' test-split indices (None: 0..B-1, i.e. the noise then
            follows the position in this batch).
        forward_batch: perturbed images per forward pass (None: all ``2 F B`` at once).
        tol, max_iter: the imputation's convergence (:func:`impute`).

    Returns:
        ``(morf, lerf)``, float32 ``[B, F]`` on the images' device.

    Raises:
        ValueError: bad shapes, classes, fractions, noise, ids or ``forward_batch``.
    """
    images = checks.images(images)
    b = images.shape[0]
    classes = checks.classes(classes, b).to(images.device)
    if forward_batch is not None and forward_batch < 1:
        raise ValueError(f"forward_batch must be >= 1 or None, got {forward_batch}")
    nf = len(_fractions(fractions))
    x = road_images(images, maps, fractions, ORDERS, noise, seed, ids, tol,
                    max_iter).flatten(0, 1)
    rows_total = len(x)
    step = rows_total if forward_batch is None else forward_batch
    probs = torch.empty(rows_total, device=images.device, dtype=torch.float32)
    cls = classes.repeat_interleave(2 * nf)
    for lo in range(0, rows_total, step):
        logits = model(x[lo:lo + step]).float()
        if lo == 0:
            checks.classes(classes, b, logits.shape[1])
        p = torch.softmax(logits, dim=1)
        probs[lo:lo + step] = p.gather(1, cls[lo:lo + step].view(-1, 1)).squeeze(1)
    probs = probs.view(b, 2 * nf)
    return probs[:, :nf].contiguous(), probs[:, nf:].contiguous()


def road_summary(morf: torch.Tensor, lerf: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ROAD columns from :func:`road_scores`' ``[B, F]`` probabilities:

    - ``road_morf``: the mean of MoRF over the fractions (lower is better: removing what
      the map ranks first should hurt most);
    - ``road_lerf``: the mean of LeRF (higher is better);
    - ``road_combined``: the mean of (LeRF - MoRF) / 2 (higher is better), what
      pytorch-grad-cam's ``ROADCombined`` computes from its two averages. Rong et al.
      report the two curves and their consistency, not one number.
    """
    if morf.shape != lerf.shape or morf.dim() != 2:
        raise ValueError(f"morf {tuple(morf.shape)} and lerf {tuple(lerf.shape)} must both "
                         "be [B, F]")
    return {"road_morf": morf.mean(1), "road_lerf": lerf.mean(1),
            "road_combined": ((lerf - morf) / 2).mean(1)}

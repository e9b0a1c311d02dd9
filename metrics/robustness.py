"""Robustness lenses: how much a map moves when its image moves a little. Each image is
perturbed ``n`` times within an L-infinity ball (uniform noise of radius r on the model
inputs) and explained again for the same class; the scores are the largest and the mean
relative change of the map (Max- and Avg-Sensitivity, Yeh et al., NeurIPS 2019) and the
largest change per unit of input change (local Lipschitz estimate, Alvarez-Melis &
Jaakkola, 2018). Functional cores on batches, on the images' device.

The perturbations are fixed per image by a seed and the image's test-split index, drawn
by a generator of their own: not NumPy's or torch's global generator, which is what
Quantus' default ``uniform_noise`` / ``batch_uniform_noise`` (``np.random.uniform``,
unseeded) and captum's ``default_perturb_func`` (``torch.FloatTensor.uniform_``) draw
from, so that their scores change from call to call unless the caller seeds globally.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["SCORES", "perturbations", "sensitivity"]


#: the keys of :func:`sensitivity`'s result
SCORES = ("max_sensitivity", "avg_sensitivity", "local_lipschitz")

#: explain(images ``[m,C,H,W]``, classes ``[m]``) -> maps ``[m,1,H,W]``
Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(radius: float, n: int) -> None:
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"the perturbation radius must be a positive number, got {radius}")
    if n < 1:
        raise ValueError(f"at least one perturbation per image is needed, got n={n}")


def perturbations(images: torch.Tensor, ids: torch.Tensor, radius: float, n: int,
                  seed: int) -> torch.Tensor:
    """``[B,n,C,H,W]`` perturbations δ drawn uniformly in the L-infinity ball of radius
    ``radius``: each coordinate uniform in [-r, r), the ball of SENS_MAX (Yeh et al.,
    NeurIPS 2019, Def. 3.1) sampled as their released code, captum's
    ``default_perturb_func`` and Quantus' ``uniform_noise`` sample it; in the units of
    ``images`` (the model's normalised inputs).

    Image ``b``'s δ depends on ``seed`` and ``ids[b]`` only, not on the batch it comes in
    nor on the other images asked for: its own PCG64 generator seeded by
    ``numpy.random.SeedSequence([seed, ids[b]])`` draws ``n * C * H * W`` float32 values
    u in [0, 1) in C order and δ = (2u - 1) r, on the CPU in float32, then moved to the
    images' device (so CPU and GPU runs see the same δ). A larger ``n`` extends a smaller
    one: the first ``n`` perturbations of ``n + k`` are those of ``n``. No global
    generator is read or advanced.

    Args:
        images: ``[B,C,H,W]`` model inputs; only their shape and device are used.
        ids: ``[B]`` non-negative test-split indices of the images.
        radius: r > 0, in the units of ``images``.
        n: perturbations per image.
        seed: non-negative seed of the draw (``eval.lens_seed``).

    Returns:
        float32 ``[B,n,C,H,W]`` on ``images.device``, ``|δ| <= float32(r)``.
    """
    _check(radius, n)
    if images.dim() != 4:
        raise ValueError(f"images must be [B,C,H,W], got {tuple(images.shape)}")
    keys = [int(i) for i in ids.reshape(-1).tolist()]
    if len(keys) != images.shape[0]:
        raise ValueError(f"{len(keys)} ids for {images.shape[0]} images")
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError("the seed and the ids must be non-negative")
    shape = (n, *images.shape[1:])
    r = np.float32(radius)
    out = np.empty((len(keys), *shape), dtype=np.float32)
    for b, key in enumerate(keys):  # one generator per image: the draw is the image's own
        u = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key])))
        out[b] = (u.random(shape, dtype=np.float32) * np.float32(2) - np.float32(1)) * r
    return torch.from_numpy(out).to(images.device)


def _flat64(maps: torch.Tensor, m: int) -> torch.Tensor:
    """``[m,K]`` float64 of ``m`` maps of any layout (``[m,1,H,W]``, ``[m,H,W]``)."""
    if maps.shape[0] != m:
        raise ValueError(f"the explainer returned {maps.shape[0]} maps for {m} images")
    return maps.detach().reshape(m, -1).double()


def _explain_chunked(explain: Explain, images: torch.Tensor, classes: torch.Tensor,
                     chunk: int) -> torch.Tensor:
    return torch.cat([_flat64(explain(images[s:s + chunk], classes[s:s + chunk]),
                              len(images[s:s + chunk]))
                      for s in range(0, len(images), chunk)])


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 / 0 = 0 and x / 0 = +inf for x > 0 (num, den >= 0)."""
    safe = num / den.clamp_min(torch.finfo(den.dtype).tiny)
    zero = torch.where(num > 0, torch.full_like(num, math.inf), torch.zeros_like(num))
    return torch.where(den > 0, safe, zero)


def sensitivity(explain: Explain, images: torch.Tensor, classes: torch.Tensor,
                ids: torch.Tensor, radius: float, n: int, seed: int,
                maps: torch.Tensor | None = None,
                chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Max-Sensitivity, Avg-Sensitivity and the local Lipschitz estimate of each image's
    map, from the maps Φ(x + δ) of the ``n`` perturbations δ of :func:`perturbations`
    (``radius``, ``n``, ``seed``, ``ids``), explained for the same ``classes``:

    - ``max_sensitivity``: max_δ ||Φ(x + δ) - Φ(x)||_F / ||Φ(x)||_F, the Monte Carlo
      estimate of SENS_MAX (Yeh et al., "On the (In)fidelity and Sensitivity of
      Explanations", NeurIPS 2019, Def. 3.1) divided by the map's norm, as their
      released code, ``captum.metrics.sensitivity_max`` and Quantus' ``MaxSensitivity``
      (``norm_denominator=fro_norm``) divide it: a ratio blind to the map's scale;
    - ``avg_sensitivity``: the mean of the same ratio over the ``n`` perturbations, the
      Monte Carlo estimate of the expectation over the ball (average sensitivity,
      Bhatt et al., IJCAI 2020; Quantus' ``AvgSensitivity``);
    - ``local_lipschitz``: max_δ ||Φ(x + δ) - Φ(x)||_2 / ||δ||_2 (Alvarez-Melis &
      Jaakkola, "On the Robustness of Interpretability Methods", WHI 2018, Eq. 1, the
      maximum over sampled points of the ball; Quantus' ``LocalLipschitzEstimate`` with
      its default Euclidean distances over the flattened map and the flattened image,
      but without its 1e-10 added to the denominator). In map units per input unit:
      it depends on the map's scale.

    Norms are over all the map's values (pixels of a one-channel map) and, for δ, over
    all the image's values (channels and pixels), in float64. A map without mass
    (||Φ(x)|| = 0) has a ratio of 0 to a perturbed map without mass too (nothing moved)
    and of +inf to any other (a change relative to nothing is unbounded); captum divides
    by 1 instead (the change in map units), Quantus divides by 0 (inf, or NaN when the
    perturbed map is 0 too, which ``np.nanmax`` skips). NaN in a map propagates.

    The ``B * n`` perturbed images go to ``explain`` in image-major order (image 0's
    ``n`` perturbations, then image 1's, ...) in calls of at most ``chunk`` images
    (``None``: one call), with gradients left as the caller set them (a gradient
    explainer manages its own); ``x + δ`` is in the images' dtype.

    Args:
        explain: ``explain(images [m,C,H,W], classes [m]) -> maps [m,1,H,W]`` float.
        images: ``[B,C,H,W]`` model inputs (normalised).
        classes: ``[B]`` the class each map explains.
        ids: ``[B]`` test-split indices (fix the perturbations, see :func:`perturbations`).
        radius: r > 0 of the L-infinity ball, in input units.
        n: perturbations per image.
        seed: seed of the perturbations.
        maps: Φ(x), ``[B,1,H,W]`` (or ``[B,H,W]``) when already computed; else computed
            with ``explain`` (in calls of at most ``chunk`` images).
        chunk: the most images per call of ``explain``; ``None`` for one call.

    Returns:
        ``{"max_sensitivity", "avg_sensitivity", "local_lipschitz"}``: float64 ``[B]``
        on the images' device, >= 0 (lower is more robust); 0 for a map that ignores
        its input.
    """
    _check(radius, n)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of images, got {chunk}")
    b = images.shape[0]
    if classes.shape[0] != b or ids.numel() != b:
        raise ValueError(f"{b} images, {classes.shape[0]} classes and {ids.numel()} ids")
    if not b:
        empty = torch.zeros(0, dtype=torch.float64, device=images.device)
        return {k: empty.clone() for k in SCORES}
    classes, ids = classes.to(images.device), ids.reshape(-1)
    step = b * n if chunk is None else chunk
    base = (_explain_chunked(explain, images, classes, b if chunk is None else chunk)
            if maps is None else _flat64(maps, b).to(images.device))

    change, size = [], []  # ||Φ(x + δ) - Φ(x)||, ||δ|| per perturbed image, image-major
    for start in range(0, b * n, step):
        end = min(start + step, b * n)
        first, last = start // n, (end - 1) // n + 1  # the images this call touches
        delta = perturbations(images[first:last], ids[first:last], radius, n,
                              seed).flatten(0, 1)[start - first * n:end - first * n]
        owner = torch.arange(start, end, device=images.device) // n
        out = _flat64(explain(images[owner] + delta.to(images.dtype), classes[owner]),
                      end - start)
        if out.shape[1] != base.shape[1]:
            raise ValueError(f"maps of {out.shape[1]} values for perturbed images, "
                             f"{base.shape[1]} for the images")
        change.append(torch.linalg.vector_norm(out - base[owner], dim=1))
        size.append(torch.linalg.vector_norm(delta.flatten(1).double(), dim=1))
    diff = torch.cat(change).view(b, n)
    norm = torch.linalg.vector_norm(base, dim=1, keepdim=True).expand(b, n)
    rel = _ratio(diff, norm)
    return {"max_sensitivity": rel.amax(1),
            "avg_sensitivity": rel.mean(1),
            "local_lipschitz": _ratio(diff, torch.cat(size).view(b, n)).amax(1)}

"""Localisation metrics against NumPy references written pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics import localization as loc


def np_norm(s: np.ndarray) -> np.ndarray:
    lo, hi = s.min(), s.max()
    return np.zeros_like(s) if hi == lo else (s - lo) / (hi - lo)


def np_inside(box: np.ndarray, r: int, c: int) -> bool:
    x1, y1, x2, y2 = box
    return bool(x1 <= c + 0.5 <= x2 and y1 <= r + 0.5 <= y2)


def np_metrics(sal: np.ndarray, box: np.ndarray, tol: float) -> tuple[float, float, float]:
    s = np_norm(sal.astype(np.float64))
    h, w = s.shape
    on = inside_on = 0
    e_in = 0.0
    for r in range(h):
        for c in range(w):
            ins = np_inside(box, r, c)
            if s[r, c] >= 0.2:
                on += 1
                inside_on += ins
            e_in += s[r, c] * ins
    frac = inside_on / on if on else 0.0
    energy = e_in / s.sum() if s.sum() > 0 else 0.0
    best, br, bc = -1.0, 0, 0
    for r in range(h):  # first arg-max in raster order
        for c in range(w):
            if s[r, c] > best:
                best, br, bc = s[r, c], r, c
    dists = [np.hypot(br - r, bc - c) for r in range(h) for c in range(w)
             if np_inside(box, r, c)]
    hit = bool(dists) and (min(dists) == 0 or min(dists) < tol)
    return frac, energy, float(hit)


@pytest.mark.parametrize("tol", [0.0, 2.0, 4.5])
def test_against_numpy_reference(tol: float) -> None:
    rng = np.random.default_rng(1)
    b, h, w = 12, 9, 11
    sal = rng.random((b, h, w)).astype(np.float32) ** 3
    sal[0] = 0.7  # constant map
    sal[1, 2, 3] = sal[1, 5, 5] = sal[1].max() + 1  # arg-max tie
    x1 = rng.uniform(-2, w - 1, b)
    y1 = rng.uniform(-2, h - 1, b)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 6, b), y1 + rng.uniform(0, 6, b)], 1)
    boxes[2] = np.nan
    st, bt = torch.from_numpy(sal), torch.from_numpy(boxes).float()
    f = loc.bbox_inside_frac(st, bt)
    e = loc.energy_pointing_game(st[:, None], bt)  # [B,1,H,W] accepted too
    p = loc.pointing_game(st, bt, tolerance=tol)
    for i in range(b):
        rf, re_, rp = np_metrics(sal[i], boxes[i].astype(np.float32), tol)
        assert f[i].item() == pytest.approx(rf, abs=1e-6)
        assert e[i].item() == pytest.approx(re_, abs=1e-5)
        assert p[i].item() == rp, i
    # batch at once equals one at a time
    one = torch.cat([loc.pointing_game(st[i : i + 1], bt[i : i + 1], tol) for i in range(b)])
    assert torch.equal(one, p)


def test_known_answers() -> None:
    sal = torch.zeros(1, 4, 4)
    sal[0, 1, 1] = 1.0  # all mass in pixel (r1, c1)
    box = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # exactly that pixel
    assert loc.bbox_inside_frac(sal, box).item() == 1.0
    assert loc.energy_pointing_game(sal, box).item() == 1.0
    assert loc.pointing_game(sal, box, 0).item() == 1.0
    far = torch.tensor([[3.0, 3.0, 4.0, 4.0]])  # pixel (3,3): distance sqrt(8) = 2.828...
    assert loc.pointing_game(sal, far, 2.82).item() == 0.0
    assert loc.pointing_game(sal, far, 2.83).item() == 1.0
    assert loc.pointing_game(sal, far, np.sqrt(8)).item() == 0.0  # strictly closer
    assert loc.bbox_inside_frac(torch.zeros(1, 4, 4), box).item() == 0.0  # empty -> 0
    assert loc.energy_pointing_game(sal, far).item() == 0.0

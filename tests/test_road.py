"""ROAD (:mod:`metrics.road`): exact-k removal on hand-made maps, the linear imputation
against a sparse direct solve written here from the paper's equations, parity with
pytorch-grad-cam's imputer and ROAD scores where they agree, and the differences of
pytorch-grad-cam and Quantus pinned where they do not."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from metrics import road

# ---------------------------------------------------------------- references


def sparse_fill(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Rong et al. Sec. 4 solved directly: for each removed pixel i and channel,
    sum_j w_ij (u_i - u_j) = 0 over i's in-image 8-neighbours j, w = 1/6 direct and 1/12
    diagonal; u_j of a kept j is known and goes to the right-hand side. ``img`` [C,H,W],
    ``keep`` [H,W] bool. One equation per removed pixel, assembled pixel by pixel."""
    c, h, w = img.shape
    removed = [(y, x) for y in range(h) for x in range(w) if not keep[y, x]]
    var = {p: i for i, p in enumerate(removed)}
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(removed), c))
    for i, (y, x) in enumerate(removed):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= ny < h and 0 <= nx < w):
                    continue
                wt = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                rows.append(i)
                cols.append(i)
                vals.append(wt)
                if keep[ny, nx]:
                    rhs[i] += wt * img[:, ny, nx]
                else:
                    rows.append(i)
                    cols.append(var[(ny, nx)])
                    vals.append(-wt)
    n = len(removed)
    a = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(n, n))  # duplicates summed
    sol = scipy.sparse.linalg.spsolve(a, rhs).reshape(n, c)
    out = img.astype(np.float64).copy()
    for i, (y, x) in enumerate(removed):
        out[:, y, x] = sol[i]
    return out


def random_keep(rng: np.random.Generator, h: int, w: int, frac: float) -> np.ndarray:
    keep = np.ones(h * w, dtype=bool)
    keep[rng.permutation(h * w)[: round(frac * h * w)]] = False
    return keep.reshape(h, w)


def toy_model(c: int = 3, h: int = 8, w: int = 8, k: int = 5) -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * h * w, k)).eval()


# ---------------------------------------------------------------- exact-k removal

# a 4 x 4 map with ties (raster indices in the comments):
#   0:.9  1:.5  2:.5  3:0
#   4:.5  5:.8  6:.2  7:.2
#   8:0   9:.5 10:.4 11:.2
#  12:0  13:0  14:0  15:.3
# descending, ties in raster order: 0 5 | 1 2 4 9 | 10 15 | 6 7 11 | 3 8 12 13 14
TIED = torch.tensor([[0.9, 0.5, 0.5, 0.0], [0.5, 0.8, 0.2, 0.2],
                     [0.0, 0.5, 0.4, 0.2], [0.0, 0.0, 0.0, 0.3]])


def removed_set(keep: torch.Tensor) -> set[int]:
    return set(torch.nonzero(~keep.flatten()).flatten().tolist())


def test_exact_k_removal_with_ties() -> None:
    morf = road.road_keep_masks(TIED[None], (0.25, 0.5), "morf")
    lerf = road.road_keep_masks(TIED[None, None], (0.25, 0.5), "lerf")  # [B,1,H,W] too
    assert morf.shape == lerf.shape == (1, 2, 4, 4) and morf.dtype == torch.bool
    # 25 %: k = 4; the tie at .5 straddles the cut, its lower indices (1, 2) go first
    assert removed_set(morf[0, 0]) == {0, 5, 1, 2}
    # LeRF takes the tail of the same order: of the five zeros the last four go, 3 stays
    assert removed_set(lerf[0, 0]) == {8, 12, 13, 14}
    # 50 %: k = 8, and the two orders split the map between them
    assert removed_set(morf[0, 1]) == {0, 5, 1, 2, 4, 9, 10, 15}
    assert removed_set(lerf[0, 1]) == {6, 7, 11, 3, 8, 12, 13, 14}


def test_constant_map_removes_exactly_k() -> None:
    zeros = torch.zeros(2, 4, 4)
    morf = road.road_keep_masks(zeros, (0.1, 0.25, 0.9), "morf")
    lerf = road.road_keep_masks(zeros, (0.1, 0.25, 0.9), "lerf")
    # k = floor(f * 16 + 1/2): 2, 4, 14 -- never all 16
    assert (~morf).flatten(2).sum(2).tolist() == [[2, 4, 14]] * 2
    assert (~lerf).flatten(2).sum(2).tolist() == [[2, 4, 14]] * 2
    assert removed_set(morf[0, 1]) == {0, 1, 2, 3}
    assert removed_set(lerf[0, 1]) == {12, 13, 14, 15}


def test_removed_count_rounds_half_up() -> None:
    assert road.removed_count(0.1, 25) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert road.removed_count(0.1, 4096) == 410 and road.removed_count(0.9, 4096) == 3686
    with pytest.raises(ValueError, match="strictly between"):
        road.road_keep_masks(TIED[None], (0.0, 0.5))
    with pytest.raises(ValueError, match="order"):
        road.road_keep_masks(TIED[None], (0.5,), "random")


# ---------------------------------------------------------------- imputation


def test_affine_ramp_is_reproduced_inside() -> None:
    # An interior removed pixel has all 8 neighbours in the image, with weights summing
    # to 1 and symmetric under (dy, dx) -> (-dy, -dx). For u = a + b y + c x the weighted
    # mean of the neighbours is then u itself (the odd moments sum w * dy, w * dx vanish),
    # so the ramp satisfies every equation of an interior block; the system has one
    # solution, hence the fill is the ramp. (At the image border the in-image weights are
    # not symmetric and the ramp is not a solution: that case is the parity tests'.)
    h, w = 24, 20
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    ramp = torch.stack([0.5 + 0.03 * yy - 0.02 * xx, -1 + 0.1 * xx, 2 - 0.05 * yy])
    keep = torch.ones(1, h, w, dtype=torch.bool)
    keep[0, 3:20, 2:17] = False  # a 17 x 15 block, two pixels from the border
    out = road.impute(ramp[None].float(), keep, noise=0)[0]
    np.testing.assert_allclose(out.double().numpy(), ramp.numpy(), rtol=0, atol=2e-6)


def test_kept_pixels_unchanged_and_dtype_kept() -> None:
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.normal(size=(3, 3, 16, 16))).float()
    keep = torch.from_numpy(np.stack([random_keep(rng, 16, 16, f) for f in (0.1, 0.5, 0.9)]))
    for noise in (0.0, 0.3):
        out = road.impute(img, keep[:, None], noise=noise)  # [N,1,H,W] keep works too
        assert out.dtype == img.dtype and out.shape == img.shape
        k = keep[:, None].expand_as(img)
        assert torch.equal(out[k], img[k])  # bitwise
        assert not torch.equal(out[~k], img[~k])
    out64 = road.impute(img.double(), keep, noise=0)
    assert out64.dtype == torch.float64


def test_noise_only_on_imputed_pixels_with_its_std() -> None:
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.normal(size=(4, 3, 32, 32))).float()
    keep = torch.from_numpy(np.stack([random_keep(rng, 32, 32, 0.5) for _ in range(4)]))
    exact = road.impute(img, keep, noise=0)
    g = torch.Generator().manual_seed(5)
    noisy = road.impute(img, keep, noise=0.1, generator=g)
    diff = (noisy - exact)[~keep[:, None].expand_as(img)]
    assert torch.equal((noisy - exact)[keep[:, None].expand_as(img)],
                       torch.zeros(3 * int(keep.sum())))
    assert diff.numel() == 3 * 4 * 512
    assert abs(diff.std().item() - 0.1) < 0.005  # 6144 draws: about 1 % standard error
    assert abs(diff.mean().item()) < 0.005
    again = road.impute(img, keep, noise=0.1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(noisy, again)
    other = road.impute(img, keep, noise=0.1, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(noisy, other)
    # one standard deviation per channel (normalised inputs: 0.01 / channel std)
    per = road.impute(img, keep, noise=[0.0, 0.1, 0.0],
                      generator=torch.Generator().manual_seed(5))
    assert torch.equal(per[:, 0], exact[:, 0]) and torch.equal(per[:, 2], exact[:, 2])
    assert not torch.equal(per[:, 1], exact[:, 1])


def test_impute_rejects_an_image_without_kept_pixels() -> None:
    img = torch.zeros(2, 3, 4, 4)
    keep = torch.ones(2, 4, 4, dtype=torch.bool)
    keep[1] = False
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] keep no pixel"):
        road.impute(img, keep)
    with pytest.raises(ValueError, match="bool"):
        road.impute(img, keep.float())


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("frac", [0.1, 0.9])
def test_imputation_matches_sparse_direct_solve(size: int, frac: float) -> None:
    rng = np.random.default_rng(size + int(frac * 10))
    img = rng.normal(size=(3, 3, size, size)).astype(np.float32)
    keep = np.stack([random_keep(rng, size, size, frac) for _ in range(3)])
    keep[2] = True
    keep[2, : size // 2, : size // 2] = False  # one block at a corner: border equations
    out = road.impute(torch.from_numpy(img), torch.from_numpy(keep), noise=0).numpy()
    for i in range(3):
        np.testing.assert_allclose(out[i], sparse_fill(img[i], keep[i]), rtol=0, atol=1e-5)


def test_imputation_64px_90_percent_smooth_mask() -> None:
    # the hardest case of the benchmark: MoRF at 90 % of a smooth map leaves one region
    # of about 400 kept pixels; also bounds the preconditioned CG's iterations
    g = torch.Generator().manual_seed(3)
    img = 2 * F.interpolate(torch.randn(2, 3, 8, 8, generator=g), size=(64, 64),
                            mode="bilinear") + 0.3 * torch.randn(2, 3, 64, 64, generator=g)
    maps = F.interpolate(torch.randn(2, 1, 7, 7, generator=g), size=(64, 64),
                         mode="bilinear")
    keep = torch.cat([road.road_keep_masks(maps, (0.9,), o) for o in road.ORDERS], 1)
    src = torch.tensor([0, 0, 1, 1])
    out, its = road._linear_fill(img, keep.view(4, 64, 64), 1e-7, 200, source=src)
    assert int(its.max()) <= 30
    for i in (0, 3):
        ref = sparse_fill(img[src[i]].numpy(), keep.view(4, 64, 64)[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- pytorch-grad-cam

# its NoisyLinearImputer calls np.argwhere on a torch tensor (NumPy 2 deprecation)
GRAD_CAM_NUMPY = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


@GRAD_CAM_NUMPY
def test_imputer_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(7)
    img = torch.from_numpy(rng.normal(size=(3, 12, 10)).astype(np.float32))
    for frac in (0.1, 0.6, 0.9):
        keep = random_keep(rng, 12, 10, frac)
        # its mask: [H,W] float, 1 = known, 0 = imputed; its image [C,H,W]
        theirs = NoisyLinearImputer(noise=0)(img, torch.from_numpy(keep.astype(np.float32)))
        ours = road.impute(img[None], torch.from_numpy(keep)[None], noise=0)[0]
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-5)


FRACS = (0.25, 0.5, 0.75)  # on 8 x 8: pytorch-grad-cam's percentile cut removes k too


def _untied_batch() -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.normal(size=(3, 3, 8, 8)).astype(np.float32))
    cams = rng.permutation(3 * 64).reshape(3, 8, 8).astype(np.float32) / 192  # no ties
    return images, cams, torch.tensor([0, 2, 4])


@GRAD_CAM_NUMPY
def test_road_scores_match_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = toy_model()
    images, cams, classes = _untied_batch()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    morf, lerf = road.road_scores(model, images, torch.from_numpy(cams), classes,
                                  fractions=FRACS, noise=0)
    with torch.no_grad():
        p0 = torch.softmax(model(images), 1).gather(1, classes[:, None])
    for j, f in enumerate(FRACS):
        # its percentile p keeps the pixels below the p-th percentile: it removes
        # (100 - p) % at MoRF (the top) and at LeRF (the bottom, percentile of 1 - cam)
        p = round(100 * (1 - f))
        for cls, ours in ((ROADMostRelevantFirst, morf), (ROADLeastRelevantFirst, lerf)):
            metric = cls(percentile=p)
            metric.perturbation.imputer.noise = 0  # its NoisyLinearImputer's default is 0.01
            # it returns the score after imputation minus the score before (return_diff)
            theirs = metric(images, cams, targets, model)
            np.testing.assert_allclose((ours[:, j:j + 1] - p0).flatten().numpy(), theirs,
                                       rtol=0, atol=1e-5)


@GRAD_CAM_NUMPY
def test_road_combined_matches_pytorch_grad_cam(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_grad_cam.metrics import road as gc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    # ROADCombined builds a fresh NoisyLinearImputer() per percentile: noise off via the
    # default argument
    monkeypatch.setattr(gc_road.NoisyLinearImputer.__init__, "__defaults__",
                        (0.0, gc_road.neighbors_weights))
    model = toy_model()
    images, cams, classes = _untied_batch()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    # (mean LeRF diff - mean MoRF diff) / 2 over the percentiles: the score before cancels
    theirs = gc_road.ROADCombined(percentiles=[25, 50, 75])(images, cams, targets, model)
    morf, lerf = road.road_scores(model, images, torch.from_numpy(cams), classes,
                                  fractions=FRACS, noise=0)
    summary = road.road_summary(morf, lerf)
    np.testing.assert_allclose(summary["road_combined"].numpy(), theirs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(summary["road_morf"].numpy(), morf.mean(1).numpy())
    np.testing.assert_allclose(summary["road_lerf"].numpy(), lerf.mean(1).numpy())


def grad_cam_keeps(order: str, percentile: int, cam: torch.Tensor) -> torch.Tensor:
    """The pixels pytorch-grad-cam's ROAD keeps at ``percentile`` of ``cam`` ``[H,W]``:
    its binary mask, caught at its imputer (bool ``[H,W]``)."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )

    seen: list[torch.Tensor] = []

    def catch(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen.append(mask)
        return img

    cls = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    cls(percentile, catch)(torch.zeros(3, *cam.shape), cam)
    return seen[0] > 0.5  # 0 = imputed


def _grad_cam_removed(order: str, percentile: int, cam: np.ndarray) -> int:
    """How many pixels pytorch-grad-cam's ROAD removes."""
    return int((~grad_cam_keeps(order, percentile, torch.from_numpy(cam))).sum())


def test_pytorch_grad_cam_percentile_cut_differs_from_exact_k() -> None:
    # A ReLU-like 8 x 8 map: 48 zeros, 16 distinct positive values. At 50 % (k = 32)
    # pytorch-grad-cam's 50th percentile is 0; MoRF keeps the pixels < 0, i.e. none, and
    # removes all 64; LeRF's percentile of 1 - cam is 1 and it keeps the 16 positives < 1,
    # removing all 48 zeros. Ours removes 32 either way.
    cam = np.zeros((8, 8), dtype=np.float32)
    cam.flat[np.random.default_rng(0).permutation(64)[:16]] = np.arange(1, 17) / 16
    assert _grad_cam_removed("morf", 50, cam) == 64
    assert _grad_cam_removed("lerf", 50, cam) == 48
    for order in road.ORDERS:
        keep = road.road_keep_masks(torch.from_numpy(cam)[None], (0.5,), order)
        assert int((~keep).sum()) == 32
    # without ties its linear-interpolated percentile removes 1 + floor((n - 1) f)
    # pixels, one more than k = round(f n) at e.g. f = 0.1 of 64 (7, not 6)
    untied = np.arange(64, dtype=np.float32).reshape(8, 8) / 64
    assert _grad_cam_removed("morf", 90, untied) == 7
    assert int((~road.road_keep_masks(torch.from_numpy(untied)[None], (0.1,))).sum()) == 6


# ---------------------------------------------------------------- Quantus


def test_quantus_road_fails_on_rgb() -> None:
    import quantus

    model = toy_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    a = rng.random((2, 1, 8, 8)).astype(np.float32)
    metric = quantus.ROAD(percentages=[10, 50], noise=0.0, disable_warnings=True,
                          display_progressbar=False)
    # ROAD.evaluate_batch broadcasts the [B,1,H,W] attributions to x's [B,3,H,W] and
    # argsorts them flattened, so the top-k indices run over 3 H W entries, while
    # noisy_linear_imputation builds its mask over the H W pixels (arr.reshape(C, -1)):
    # ``mask[indices] = 0`` indexes past the end
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 64"):
        metric(model=model, x_batch=x, y_batch=np.array([0, 1]), a_batch=a, device="cpu")


# ---------------------------------------------------------------- scores


def test_scores_do_not_depend_on_the_batch() -> None:
    model = toy_model(h=12, w=12)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 12, 12, generator=g)
    maps = torch.rand(3, 12, 12, generator=g)
    classes = torch.tensor([1, 3, 0])
    ids = torch.tensor([40, 7, 123])
    morf, lerf = road.road_scores(model, images, maps, classes, ids=ids, seed=9,
                                  forward_batch=5)
    assert morf.shape == lerf.shape == (3, 9) and morf.dtype == torch.float32
    for i in range(3):
        alone = road.road_scores(model, images[i:i + 1], maps[i:i + 1], classes[i:i + 1],
                                 ids=ids[i:i + 1], seed=9)
        torch.testing.assert_close(alone[0][0], morf[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(alone[1][0], lerf[i], rtol=0, atol=1e-6)
    # the noise is there, follows the id and the seed
    exact = road.road_scores(model, images, maps, classes, ids=ids, noise=0)
    assert (exact[0] - morf).abs().max() > 1e-4
    moved = road.road_scores(model, images[:1], maps[:1], classes[:1], ids=[41], seed=9)
    assert not torch.allclose(moved[0][0], morf[0], rtol=0, atol=1e-6)
    reseeded = road.road_scores(model, images[:1], maps[:1], classes[:1], ids=[40], seed=8)
    assert not torch.allclose(reseeded[0][0], morf[0], rtol=0, atol=1e-6)


def test_scores_input_checks() -> None:
    model = toy_model(h=4, w=4)
    images, maps, classes = torch.zeros(1, 3, 4, 4), torch.rand(1, 4, 4), torch.tensor([0])
    with pytest.raises(ValueError, match="removes every pixel"):
        road.road_scores(model, images, maps, classes, fractions=(0.99,))
    with pytest.raises(ValueError, match="resize"):
        road.road_scores(model, images, torch.rand(1, 5, 4), classes)
    with pytest.raises(ValueError, match="outside"):
        road.road_scores(model, images, maps, torch.tensor([7]))
    with pytest.raises(ValueError, match="ids"):
        road.road_scores(model, images, maps, classes, ids=[1, 2])


def test_the_road_columns_share_one_computation_with_noise_in_pixel_units(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The three leaderboard columns: one road_scores call per batch for all three, on
    the causal subset's maps of the predicted class, the noise in [0, 1] pixel units
    divided by the normalisation's std per channel, each image's noise fixed by its
    test-split index; road_morf / road_lerf keep their curves."""
    from metrics.base import EvalBatch
    from metrics.standard import ROAD, RoadCombined, RoadLeRF

    seen: list[dict[str, object]] = []
    real = road.road_scores

    def spy(*args: object, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(kw)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(road, "road_scores", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    maps = torch.rand(4, 1, 8, 8, generator=g)
    pred = torch.tensor([0, 1, 2, 0])
    batch = EvalBatch(images=x, labels=torch.zeros(4, dtype=torch.long),
                      logits=torch.zeros(4, 3), saliency=maps, model=model,
                      causal_images=x[:3], causal_saliency=maps[:3], causal_classes=pred[:3],
                      indices=torch.tensor([10, 11, 12, 13]), input_std=(0.5, 0.25, 0.1))
    cols = {"road_morf": ROAD(noise=0.01, seed=3), "road_lerf": RoadLeRF(noise=0.01, seed=3),
            "road_combined": RoadCombined(noise=0.01, seed=3)}
    for m in cols.values():
        m.update(batch)
    assert len(seen) == 1
    assert np.allclose(seen[0]["noise"], [0.02, 0.04, 0.1])  # type: ignore[arg-type]
    morf, lerf = real(model, x[:3], maps[:3], pred[:3], noise=[0.02, 0.04, 0.1], seed=3,
                      ids=torch.tensor([10, 11, 12]))
    assert np.allclose(cols["road_morf"].per_image()[0], morf.mean(1).numpy(), atol=1e-6)
    assert np.allclose(cols["road_lerf"].per_image()[0], lerf.mean(1).numpy(), atol=1e-6)
    assert np.allclose(cols["road_combined"].per_image()[0],
                       ((lerf - morf) / 2).mean(1).numpy(), atol=1e-6)
    assert np.allclose(cols["road_morf"].mean_curve(), morf.mean(0).numpy(), atol=1e-6)
    assert list(cols["road_lerf"].image_ids()) == [10, 11, 12]
    assert not cols["road_morf"].higher_is_better and cols["road_combined"].higher_is_better

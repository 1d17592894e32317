"""Golden tests of spanlib.eval.ap and spanlib.eval.metrics: AP against scikit-learn, the patch path
against the pixel path, and hand-built maps for the pointing game, the mass
threshold and IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from spanlib.eval import ap, metrics


def sklearn_ap(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """scikit-learn's AP per map; nan for a map without positives (our convention)."""
    s = scores.flatten(1).double().numpy()
    t = targets.flatten(1).numpy().astype(bool)
    out = []
    for row_s, row_t in zip(s, t):
        if not row_t.any():
            out.append(math.nan)
            continue
        # scikit-learn rejects infinities; any order-preserving finite stand-in gives the same AP
        finite = np.nan_to_num(row_s, posinf=1e300, neginf=-1e300)
        out.append(average_precision_score(row_t, finite))
    return np.array(out)


def assert_matches_sklearn(ours: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
    expected = sklearn_ap(scores, targets)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-9, equal_nan=True)


def random_maps(seed: int, batch: int = 12, shape: tuple[int, ...] = (23, 31)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand((batch, *shape), generator=gen)
    fraction = torch.rand(batch, *([1] * len(shape)), generator=gen)
    targets = torch.rand((batch, *shape), generator=gen) < fraction
    return scores, targets


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ap_random_maps(backend: str, seed: int) -> None:
    scores, targets = random_maps(seed)
    assert_matches_sklearn(ap.average_precision(scores, targets, backend=backend), scores, targets)


@pytest.mark.parametrize("threads", [1, 3])
def test_ap_threads_do_not_change_result(threads: int) -> None:
    scores, targets = random_maps(2, batch=7)
    ours = ap.average_precision(scores, targets, num_threads=threads)
    assert_matches_sklearn(ours, scores, targets)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ap_ties(backend: str) -> None:
    scores, targets = random_maps(3, batch=10, shape=(40, 40))
    scores = torch.round(scores * torch.arange(1, 11).view(10, 1, 1)) / 10  # 2..11 distinct values
    assert_matches_sklearn(ap.average_precision(scores, targets, backend=backend), scores, targets)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ap_signs_zeros_and_infinities(backend: str) -> None:
    scores, targets = random_maps(4, batch=6, shape=(300,))
    scores[0] = scores[0] - 0.5  # mixed signs: the 64-bit key
    scores[1] = -scores[1]  # all non-positive: the 32-bit magnitude key
    scores[2, :100] = -0.0  # -0.0 and +0.0 are one threshold
    scores[2, 100:200] = 0.0
    scores[3, :5] = math.inf
    scores[3, 5:10] = -math.inf
    scores[4] = torch.randn(300, generator=torch.Generator().manual_seed(5))
    assert_matches_sklearn(ap.average_precision(scores, targets, backend=backend), scores, targets)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ap_degenerate_maps_in_one_batch(backend: str) -> None:
    scores, targets = random_maps(6, batch=5, shape=(20, 20))
    targets[0] = False  # no positive: nan (scikit-learn warns and says 0.0)
    targets[1] = True  # all positive: 1
    scores[2] = 0.25  # constant score: the positive fraction
    scores[3] = 0.25
    targets[3] = True
    ours = ap.average_precision(scores, targets, backend=backend)
    assert math.isnan(ours[0])
    assert ours[1] == pytest.approx(1.0, abs=1e-12)
    assert ours[2] == pytest.approx(targets[2].double().mean().item(), abs=1e-12)
    assert ours[3] == pytest.approx(1.0, abs=1e-12)
    assert_matches_sklearn(ours, scores, targets)


def test_ap_float64_and_integer_scores() -> None:
    scores, targets = random_maps(7, batch=4, shape=(500,))
    fine = scores.double() + torch.arange(500, dtype=torch.float64) * 1e-13  # float32 would merge these
    coarse = scores.double()  # exactly representable in float32
    integers = (scores * 7).long()
    for s in (fine, coarse, integers):
        for backend in ("numpy", "torch"):
            assert_matches_sklearn(ap.average_precision(s, targets, backend=backend), s, targets)


def test_ap_targets_as_numbers_and_single_map() -> None:
    scores, targets = random_maps(8, batch=1, shape=(50,))
    ours = ap.average_precision(scores, targets.float())
    assert ours.shape == (1,)
    assert_matches_sklearn(ours, scores, targets)


def test_ap_rejects_bad_input() -> None:
    scores, targets = random_maps(9, batch=2, shape=(10,))
    with pytest.raises(ValueError, match="NaN"):
        ap.average_precision(torch.where(scores > 0.5, math.nan, scores), targets)
    with pytest.raises(ValueError, match="NaN"):
        ap.average_precision(torch.where(scores > 0.5, math.nan, scores), targets, backend="torch")
    with pytest.raises(ValueError, match="0/1"):
        ap.average_precision(scores, targets.float() * 2)
    with pytest.raises(ValueError, match="shape"):
        ap.average_precision(scores, targets[:, :5])
    with pytest.raises(ValueError, match=r"\[1, N\]"):
        ap.average_precision(scores[0], targets[0])
    with pytest.raises(ValueError, match="backend"):
        ap.average_precision(scores, targets, backend="cuda")


@pytest.mark.parametrize("size", [(7, 7), (14, 14), (28, 28), (30, 45), (100, 75), (224, 224), (3, 20)])
def test_nearest_source_index_matches_interpolate(size: tuple[int, int]) -> None:
    grid = torch.arange(14 * 14, dtype=torch.float32).view(1, 1, 14, 14)
    up = F.interpolate(grid, size=size, mode="nearest")[0, 0].long()
    rows = ap.nearest_source_index(14, size[0])
    cols = ap.nearest_source_index(14, size[1])
    assert torch.equal(up, rows[:, None] * 14 + cols[None, :])


@pytest.mark.parametrize("size", [(224, 224), (100, 75), (30, 45), (10, 9), (14, 14), (33, 200)])
def test_patch_path_equals_pixel_path(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(size))
    attention = torch.rand(6, 14, 14, generator=gen)
    attention[:2] = torch.round(attention[:2] * 4) / 4  # patches with equal scores
    masks = torch.rand(6, *size, generator=gen) < 0.4
    masks[5] = False
    pixel = ap.average_precision(ap.upsample_nearest(attention, size), masks)
    patch = ap.attention_average_precision(attention, masks)
    np.testing.assert_allclose(patch.numpy(), pixel.numpy(), rtol=0, atol=1e-12, equal_nan=True)
    assert math.isnan(patch[5])


@pytest.mark.parametrize("size", [(224, 224), (100, 75), (10, 9), (7, 5)])
@pytest.mark.parametrize("grid", [14, (4, 6)])
def test_patch_counts_backends_agree_and_cover_every_pixel(size: tuple[int, int], grid: int | tuple[int, int]) -> None:
    masks = torch.rand(3, *size, generator=torch.Generator().manual_seed(1)) < 0.5
    pos_np, neg_np = ap.patch_counts(masks, grid, backend="numpy")
    pos_t, neg_t = ap.patch_counts(masks, grid, backend="torch")
    assert torch.equal(pos_np, pos_t) and torch.equal(neg_np, neg_t)
    assert torch.equal(pos_np.sum(dim=(1, 2)), masks.sum(dim=(1, 2)))
    assert int((pos_np + neg_np).sum()) == masks.numel()
    grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
    # each cell's counts are the mask pixels that nearest upsampling fills from that cell
    cell = ap.nearest_source_index(grid_h, size[0])[:, None] * grid_w + ap.nearest_source_index(grid_w, size[1])
    expected = torch.stack([torch.bincount(cell[m], minlength=grid_h * grid_w) for m in masks])
    assert torch.equal(pos_np.flatten(1), expected)


@pytest.mark.parametrize("size,grid", [((224, 224), 14), ((256, 256), 16), ((100, 75), 14)])
def test_patch_path_matches_sklearn_on_attention_maps(size: tuple[int, int], grid: int) -> None:
    """Softmax attention on a grid, upsampled nearest: the patch path is scikit-learn's AP."""
    gen = torch.Generator().manual_seed(grid)
    attention = (2 * torch.randn(5, grid * grid, generator=gen)).softmax(dim=1).view(5, grid, grid)
    attention[0, :4] = attention[0, 4:8]  # patches with equal scores
    masks = torch.rand(5, *size, generator=gen) < 0.3
    masks[1] = True
    masks = masks.transpose(1, 2).contiguous().transpose(1, 2)  # a non-contiguous view
    assert_matches_sklearn(ap.attention_average_precision(attention, masks), ap.upsample_nearest(attention, size), masks)


@pytest.mark.parametrize("height", [255, 256])
def test_patch_counts_long_runs_do_not_overflow_bytes(height: int) -> None:
    """A cell of up to 255 rows is summed in uint64 lanes; 256 rows take the byte-safe path."""
    masks = torch.ones(2, height, 16, dtype=torch.bool)
    pos, neg = ap.patch_counts(masks, (1, 2), backend="numpy")
    assert pos.tolist() == [[[height * 8, height * 8]]] * 2 and int(neg.sum()) == 0


def test_patch_counts_small_image_leaves_cells_empty() -> None:
    masks = torch.ones(1, 5, 5, dtype=torch.bool)
    pos, neg = ap.patch_counts(masks, 14)
    assert int(pos.sum()) == 25 and int(neg.sum()) == 0
    assert int((pos > 0).sum()) == 25  # 25 cells used, 171 empty


def test_average_precision_patches_against_expanded_pixels() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1, 0.7]])
    pos = torch.tensor([[3, 1, 0, 2, 0]])
    neg = torch.tensor([[1, 2, 4, 5, 0]])  # the last patch covers no pixel
    pixel_scores = torch.repeat_interleave(scores[0], (pos + neg)[0])
    pixel_targets = torch.cat([torch.tensor([True] * p + [False] * n) for p, n in zip(pos[0].tolist(), neg[0].tolist())])
    expected = average_precision_score(pixel_targets.numpy(), pixel_scores.numpy())
    ours = ap.average_precision_patches(scores, pos, neg)
    assert ours.item() == pytest.approx(expected, abs=1e-12)
    # by hand: thresholds 0.9 (P 3/4, R 3/6), 0.5 (P 4/11, R 4/6), 0.1 (P 6/18, R 1)
    assert ours.item() == pytest.approx(0.5 * 3 / 4 + (1 / 6) * 4 / 11 + (2 / 6) * 6 / 18, abs=1e-12)
    assert math.isnan(ap.average_precision_patches(scores, torch.zeros_like(pos), neg + 1).item())


def test_pointing_game_hand_built() -> None:
    attention = torch.tensor(
        [
            [[0.1, 0.9], [0.2, 0.3]],  # peak top right
            [[0.1, 0.2], [0.9, 0.3]],  # peak bottom left
            [[0.9, 0.9], [0.1, 0.1]],  # tie: top left first, top right second
            [[0.9, 0.1], [0.1, 0.9]],  # tie: top left and bottom right
        ]
    )
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[:, :2, 2:] = True  # the top-right quadrant
    assert metrics.pointing_game(attention, masks).tolist() == [True, False, False, False]
    assert metrics.pointing_game(attention, masks, ties="any").tolist() == [True, False, True, False]
    masks[3, 2:, 2:] = True
    masks[3, :2, :2] = True
    assert metrics.pointing_game(attention, masks, ties="all").tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="ties"):
        metrics.pointing_game(attention, masks, ties="mean")


def test_pointing_game_non_divisible_size_uses_nearest_assignment() -> None:
    attention = torch.zeros(1, 3, 3)
    attention[0, 2, 2] = 1.0
    masks = torch.zeros(1, 5, 5, dtype=torch.bool)
    rows, cols = ap.nearest_source_index(3, 5), ap.nearest_source_index(3, 5)
    masks[0] = (rows[:, None] == 2) & (cols[None, :] == 2)
    assert metrics.pointing_game(attention, masks).item()


def test_mass_threshold_hand_built() -> None:
    attention = torch.tensor([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]])
    kept = metrics.mass_threshold(attention, keep=0.6)
    # 0.5 alone holds 0.5 < 0.6, so 0.3 joins; equal values: row-major order
    assert kept.tolist() == [[False, True, False, True], [True, True, True, False]]
    assert metrics.mass_threshold(attention, keep=1.0).all()
    assert not metrics.mass_threshold(torch.zeros(1, 2, 2)).any()
    assert metrics.mass_threshold(attention.view(2, 2, 2)).shape == (2, 2, 2)


def test_mass_threshold_matches_dino_rule() -> None:
    attention = torch.rand(5, 196, generator=torch.Generator().manual_seed(3)).softmax(dim=1)
    # facebookresearch/dino visualize_attention.py
    val, idx = torch.sort(attention)
    val = val / torch.sum(val, dim=1, keepdim=True)
    th_attn = torch.cumsum(val, dim=1) > (1 - 0.6)
    dino = torch.stack([th_attn[h][torch.argsort(idx[h])] for h in range(5)])
    assert torch.equal(metrics.mass_threshold(attention, keep=0.6), dino)


def test_iou_hand_built() -> None:
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred[0, :2] = True  # 8 pixels
    mask[0, 1:3] = True  # 8 pixels, 4 shared
    pred[1] = True
    mask[1] = True
    ious = metrics.iou(pred, mask)
    assert ious[0].item() == pytest.approx(4 / 12)
    assert ious[1].item() == 1.0
    assert math.isnan(ious[2])


def test_mass_threshold_iou_pipeline() -> None:
    attention = torch.zeros(1, 2, 2)
    attention[0, 0, 0] = 0.7
    attention[0, 1, 1] = 0.3
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    kept = metrics.mass_threshold(attention, keep=0.6)
    up = ap.upsample_nearest(kept.float(), (4, 4)) > 0
    assert metrics.iou(up, masks).item() == 1.0

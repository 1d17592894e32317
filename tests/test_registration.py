"""Deformable registration: b-spline maths, nearest-neighbour mask warping, recovery, fallbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spanlib.maps import bspline as bs
from spanlib.maps import registration as reg
from spanlib.maps import registration_sitk as rs
from spanlib.maps.quality import dice

FAST = reg.RegistrationConfig(
    affine_levels=((32, 40),), bspline_levels=((32, 4, 40), (64, 8, 40)), batch_size=8
)


def drawn_shapes(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A smooth grey image of three overlapping ellipses and their masks ``[3, size, size]``."""
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0

    body = ellipse(0.5, 0.5, 0.42, 0.46)
    left, right = ellipse(0.68, 0.42, 0.14, 0.26), ellipse(0.32, 0.42, 0.14, 0.26)
    heart = ellipse(0.56, 0.66, 0.16, 0.11)
    image = 0.1 + 0.5 * body - 0.35 * (left | right) + 0.15 * heart
    image += 0.05 * np.sin(9 * xs) * np.cos(7 * ys)  # texture, so that there is something to match everywhere
    image = F.avg_pool2d(torch.from_numpy(image.astype(np.float32))[None, None], 3, 1, 1, count_include_pad=False)
    return image[0, 0].numpy(), np.stack([left, right, heart])


def known_deformation(size: int, seed: int) -> torch.Tensor:
    """A smooth sampling grid ``[1, size, size, 2]``: shift, scale, and a random b-spline field."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.tensor([[[1.06, 0.03, 0.05], [-0.02, 0.95, -0.04]]])
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    control = (torch.rand(1, 2, 7, 7, generator=gen) - 0.5) * 0.12
    basis = bs.bspline_basis(size, 4)
    return grid + (basis @ (control @ basis.T)).permute(0, 2, 3, 1)


def deformed_pair(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image, masks = drawn_shapes(size)
    grid = known_deformation(size, seed)
    warped = bs.warp(torch.from_numpy(image)[None, None], grid)[0, 0].numpy()
    return warped, bs.warp_masks(masks, grid)[0]


def test_bspline_basis_is_a_partition_of_unity() -> None:
    basis = bs.bspline_basis(50, 6)
    assert basis.shape == (50, 9)
    torch.testing.assert_close(basis.sum(dim=1), torch.ones(50))
    assert (basis >= 0).all()


def test_box_mean_equals_avg_pool_without_padding() -> None:
    x = torch.randn(2, 3, 19, 23)
    for window in (3, 9):
        expected = F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)
        torch.testing.assert_close(bs.box_mean(x, window), expected, rtol=1e-5, atol=1e-5)


def test_identity_has_no_folding_and_a_mirror_folds_everywhere() -> None:
    identity = F.affine_grid(torch.eye(2, 3)[None], [1, 1, 16, 16], align_corners=False)
    assert float(bs.folding_fraction(identity)[0]) == 0.0
    torch.testing.assert_close(bs.jacobian_determinant(identity), torch.ones(1, 15, 15))
    mirror = identity * torch.tensor([-1.0, 1.0])
    assert float(bs.folding_fraction(mirror)[0]) == 1.0


def test_nearest_neighbour_warp_keeps_masks_binary() -> None:
    _, masks = drawn_shapes(64)
    grid = known_deformation(48, seed=3)
    warped = bs.warp_masks(masks, grid)
    assert warped.dtype == bool and warped.shape == (1, 3, 48, 48)
    # every output value is an input value: sample the masks as 0/1 floats and look at the values
    values = bs.warp(torch.from_numpy(masks.astype(np.float32))[None], grid, mode="nearest")
    assert set(np.unique(values.numpy())) <= {0.0, 1.0}
    # bilinear warping, the pitfall, would have produced fractions at the edges
    blurred = bs.warp(torch.from_numpy(masks.astype(np.float32))[None], grid, mode="bilinear")
    assert ((blurred > 0.01) & (blurred < 0.99)).any()


def test_registration_recovers_a_known_deformation() -> None:
    exemplar, masks = drawn_shapes(64)
    targets = [deformed_pair(64, seed) for seed in range(3)]
    fallback = np.zeros((3, 64, 64), bool)
    results = reg.register_batch([t[0] for t in targets], exemplar, masks, fallback, FAST)
    for (_, truth), result in zip(targets, results):
        assert result.method == "deformable", result.reason
        assert result.maps.dtype == bool and result.maps.shape == (3, 64, 64)
        before = np.mean([dice(m, t) for m, t in zip(masks, truth)])
        after = np.mean([dice(m, t) for m, t in zip(result.maps, truth)])
        assert after > 0.93 and after > before + 0.05, (before, after)
        assert result.quality["ncc_deformable"] > result.quality["ncc_identity"]
        assert result.quality["folding"] == 0.0


def test_maps_come_out_at_the_fallback_size() -> None:
    exemplar, masks = drawn_shapes(64)
    target, _ = deformed_pair(64, 1)
    result = reg.register_batch([target], exemplar, masks, np.zeros((3, 128, 128), bool), FAST)[0]
    assert result.maps.shape == (3, 128, 128)


def test_garbage_images_fall_back_and_are_recorded() -> None:
    exemplar, masks = drawn_shapes(64)
    good, _ = deformed_pair(64, 0)
    nan_image = good.copy()
    nan_image[10, 10] = np.nan
    fallback = np.zeros((3, 64, 64), bool)
    fallback[:, :8] = True
    results = reg.register_batch([np.full((64, 64), 0.5, np.float32), good, nan_image], exemplar, masks, fallback, FAST)
    assert [r.method for r in results] == ["fallback", "deformable", "fallback"]
    assert "constant" in results[0].reason and "non-finite" in results[2].reason
    np.testing.assert_array_equal(results[0].maps, fallback)
    assert math.isnan(results[0].quality["ncc_deformable"])


def test_an_exception_falls_back_image_by_image(monkeypatch: pytest.MonkeyPatch) -> None:
    exemplar, masks = drawn_shapes(64)
    images = [deformed_pair(64, s)[0] for s in range(2)]

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("optimiser diverged")

    monkeypatch.setattr(reg, "_register_chunk", explode)
    results = reg.register_batch(images, exemplar, masks, np.zeros((3, 64, 64), bool), FAST)
    assert [r.method for r in results] == ["fallback", "fallback"]
    assert all("optimiser diverged" in r.reason for r in results)


def test_bad_exemplar_raises() -> None:
    _, masks = drawn_shapes(32)
    with pytest.raises(ValueError, match="exemplar: image is constant"):
        reg.register_batch([np.zeros((32, 32), np.float32)], np.ones((32, 32), np.float32), masks,
                           np.zeros((3, 32, 32), bool))


def test_fallback_chain_order() -> None:
    deformable, affine, fallback = (np.full((1, 4, 4), v) for v in (True, False, False))
    fallback[0, 0, 0] = True
    good = {"ncc_identity": 0.5, "ncc_affine": 0.8, "ncc_deformable": 0.9, "folding": 0.0}
    args = (0.3, 0.01, 0.02)
    assert reg.choose(good, deformable, affine, fallback, *args).method == "deformable"
    folded = reg.choose({**good, "folding": 0.2}, deformable, affine, fallback, *args)
    assert folded.method == "affine" and "folds" in folded.reason
    worse = reg.choose({**good, "ncc_deformable": 0.7}, deformable, affine, fallback, *args)
    assert worse.method == "affine" and "worse than affine" in worse.reason
    poor = reg.choose({**good, "ncc_affine": 0.1, "ncc_deformable": 0.2}, deformable, affine, fallback, *args)
    assert poor.method == "fallback" and "affine NCC" in poor.reason
    np.testing.assert_array_equal(poor.maps, fallback)
    failed = reg.choose({**good, "ncc_deformable": math.nan}, None, affine, fallback, *args)
    assert failed.method == "affine" and "non-finite" in failed.reason


def test_simpleitk_reference_registers_and_falls_back() -> None:
    exemplar, masks = drawn_shapes(64)
    target, truth = deformed_pair(64, 2)
    config = rs.SitkConfig(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0), affine_iterations=50,
                            bspline_iterations=20, sampling_fraction=0.5)
    result = rs.register_pair_sitk(target, exemplar, masks, np.zeros((3, 64, 64), bool), config)
    assert result.maps.dtype == bool and result.maps.shape == (3, 64, 64)
    assert result.method in ("deformable", "affine")
    before = np.mean([dice(m, t) for m, t in zip(masks, truth)])
    after = np.mean([dice(m, t) for m, t in zip(result.maps, truth)])
    assert after > before
    nan_result = rs.register_pair_sitk(np.full((64, 64), np.nan, np.float32), exemplar, masks,
                                        np.zeros((3, 64, 64), bool), config)
    assert nan_result.method == "fallback" and "non-finite" in nan_result.reason


def test_rejected_deformations_fall_back_to_the_affine_stage() -> None:
    from dataclasses import replace

    exemplar, masks = drawn_shapes(64)
    target, truth = deformed_pair(64, 0)
    fallback = np.zeros((3, 32, 32), bool)
    strict = replace(FAST, max_folding=-1.0)  # every deformation "folds"
    result = reg.register_batch([target], exemplar, masks, fallback, strict)[0]
    assert result.method == "affine" and "folds" in result.reason
    assert result.maps.shape == (3, 32, 32) and result.maps.any()
    hopeless = replace(FAST, min_ncc=2.0)  # no NCC is good enough
    result = reg.register_batch([target], exemplar, masks, fallback, hopeless)[0]
    assert result.method == "fallback" and "affine NCC" in result.reason
    np.testing.assert_array_equal(result.maps, fallback)


def test_benchmark_runs_and_reports_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from spanlib.bench.register import main

    code = main(["--n", "2", "--ref-n", "1", "--rounds", "1", "--workers", "1", "--image-size", "64", "--map-size",
                 "32", "--candidates", "1", "--variants", "", "--no-global", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("maps_per_s", "dice_mean", "reference_maps_per_s", "reference_dice_mean", "speedup",
                "triangular_dice", "deformable_dice", "cpu_ms_per_map"):
        assert key in report, key
    assert report["n"] == 2 and report["reference_n"] == 1 and 0.0 < report["dice_mean"] <= 1.0

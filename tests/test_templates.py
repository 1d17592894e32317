"""Knowledge maps: spatial heuristics, storage, loader, Dice, and the batch tool."""

from __future__ import annotations

import numpy as np
import pytest

from spanlib.templates import CHEST_ORGANS, fill_triangle, part_heuristic_maps, triangular_maps


def test_triangular_maps_shape_and_dtype() -> None:
    maps = triangular_maps(64, 48)
    assert maps.shape == (3, 64, 48)
    assert maps.dtype == bool
    assert all(m.any() for m in maps)


def test_triangular_maps_follow_organ_order() -> None:
    full = triangular_maps(32, 32)
    swapped = triangular_maps(32, 32, ("heart", "left_lung"))
    np.testing.assert_array_equal(swapped[0], full[CHEST_ORGANS.index("heart")])
    np.testing.assert_array_equal(swapped[1], full[CHEST_ORGANS.index("left_lung")])


def test_patient_left_lung_is_on_image_right() -> None:
    left, right, heart = triangular_maps(100, 100)
    cols = np.arange(100)
    centroid = lambda m: (m.sum(0) * cols).sum() / m.sum()  # noqa: E731
    assert centroid(left) > 60 and centroid(right) < 40
    # the lungs mirror each other; the heart leans to the patient's left, sits low
    np.testing.assert_array_equal(left, right[:, ::-1])
    assert centroid(heart) > 50
    rows = np.nonzero(heart.any(1))[0]
    assert rows.min() > 40 and rows.max() > 75
    # lungs reach higher (apex) than the heart
    assert np.nonzero(left.any(1))[0].min() < rows.min()


def test_triangular_maps_scale_with_size() -> None:
    small = triangular_maps(50, 50).mean(axis=(1, 2))
    large = triangular_maps(200, 200).mean(axis=(1, 2))
    np.testing.assert_allclose(small, large, atol=0.02)


def test_fill_triangle_area() -> None:
    tri = fill_triangle(200, 200, ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))
    assert abs(tri.mean() - 0.5) < 0.01


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="organ"):
        triangular_maps(10, 10, ("spleen",))
    with pytest.raises(ValueError, match="positive"):
        triangular_maps(0, 10)
    with pytest.raises(ValueError, match="region"):
        part_heuristic_maps(10, 10, ("flange",))


def test_part_heuristic_hub_inside_rim() -> None:
    rim, hub = part_heuristic_maps(64, 64)
    assert not (rim & hub).any()
    assert hub[32, 32] and not rim[32, 32]
    radius = lambda m: np.hypot(*(np.stack(np.nonzero(m)) + 0.5 - 32))  # noqa: E731
    assert radius(rim).min() > radius(hub).max()

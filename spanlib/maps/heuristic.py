"""Spatial-heuristic knowledge maps: triangles for chest films, rings for cast parts.

Three kinds of knowledge map K guide the assigned attention heads (SPAN):

* ``triangular``: the paper's spatial heuristic, three triangles (left lung,
  right lung, heart) placed by radiology convention, and the analogous
  concentric rim/hub heuristic for cast parts (:func:`triangular_maps`,
  :func:`part_heuristic_maps`), in this module;
* ``global``: a segmentation network's predicted probabilities averaged over
  the pretraining set (:mod:`spanlib.maps.segmentation`);
* ``deformable``: one annotated exemplar registered onto every image
  (:mod:`spanlib.maps.registration`).

Built maps are stored and read by :mod:`spanlib.maps.store` and scored
against ground-truth masks by :mod:`spanlib.maps.quality`.

Radiology convention: a frontal chest film is displayed as if facing the
patient, so the patient's LEFT lung lies on the IMAGE's RIGHT (larger column
index) and the heart bulges toward the image's right as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spanlib.core.mapspec import MAP_KINDS
from spanlib.data.parts import PART_MASKS as PART_REGIONS
from spanlib.data.sample import CHEST_ORGANS

__all__ = [
    "CHEST_ORGANS",
    "MAP_KINDS",
    "PART_REGIONS",
    "fill_triangle",
    "heuristic_maps",
    "part_heuristic_maps",
    "triangle_vertices",
    "triangular_maps",
]

# Vertices (x, y) as fractions of width and height (x to the image's right,
# y down). The patient's right lung is drawn on the image's left; the left
# lung is its mirror image (x -> 1 - x). Each lung is a triangle with its apex
# at the top, a long lateral edge down to the costophrenic angle and a base
# rising toward the mediastinum; the heart is a triangle with its base on the
# diaphragm, shifted toward the patient's left, apex pointing up. On the
# book's chest phantoms they overlap the true organs with Dice of about
# 0.65 (left lung), 0.75 (right lung) and 0.73 (heart).
_CHEST_TRIANGLES: dict[str, tuple[tuple[float, float], ...]] = {
    "right_lung": ((0.30, 0.10), (0.08, 0.80), (0.48, 0.66)),
    "left_lung": ((0.70, 0.10), (0.92, 0.80), (0.52, 0.66)),
    "heart": ((0.56, 0.45), (0.36, 0.78), (0.76, 0.78)),
}


def triangle_vertices(organ: str) -> tuple[tuple[float, float], ...]:
    """The heuristic triangle of one chest organ.

    Args:
        organ: one of :data:`CHEST_ORGANS`.

    Returns:
        Three ``(x, y)`` vertices as fractions of width and height; ``x``
        grows to the image's right, ``y`` downward.

    Raises:
        ValueError: for an organ without a triangle.
    """
    if organ not in _CHEST_TRIANGLES:
        raise ValueError(f"no triangle for organ {organ!r}; known organs: {sorted(_CHEST_TRIANGLES)}")
    return _CHEST_TRIANGLES[organ]


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"map size must be positive, got height={height}, width={width}")


def fill_triangle(height: int, width: int, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
    """Rasterise a triangle given in fractional coordinates.

    A pixel belongs to the triangle when its centre lies inside or on an edge.

    Args:
        height: rows of the output.
        width: columns of the output.
        vertices: three ``(x, y)`` fractions of width and height.

    Returns:
        bool array ``[height, width]``.
    """
    _check_size(height, width)
    (x0, y0), (x1, y1), (x2, y2) = [(float(x) * width, float(y) * height) for x, y in vertices]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5

    def edge(ax: float, ay: float, bx: float, by: float) -> np.ndarray:
        return (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)

    e0, e1, e2 = edge(x0, y0, x1, y1), edge(x1, y1, x2, y2), edge(x2, y2, x0, y0)
    return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


def triangular_maps(height: int, width: int, organs: Sequence[str] = CHEST_ORGANS) -> np.ndarray:
    """The paper's tripartite spatial heuristic for chest films.

    Args:
        height: rows of the maps.
        width: columns of the maps.
        organs: organ names, each one of :data:`CHEST_ORGANS`; the output
            follows this order.

    Returns:
        bool array ``[len(organs), height, width]``; the patient's left lung
        lies on the image's right.
    """
    _check_size(height, width)
    return np.stack([fill_triangle(height, width, triangle_vertices(o)) for o in organs]).astype(bool)


# Concentric part regions as fractions of min(height, width): (inner, outer) radii.
_PART_RINGS: dict[str, tuple[float, float]] = {
    "hub": (0.0, 0.16),
    "rim": (0.32, 0.46),
    "part": (0.0, 0.46),
    "body": (0.0, 0.46),
}


def part_heuristic_maps(height: int, width: int, regions: Sequence[str] = PART_REGIONS) -> np.ndarray:
    """The spatial heuristic for round cast parts: a central hub, an outer rim.

    Parts are photographed centred, so the hub is a disc at the image centre
    and the rim an annulus near the part's edge, both sized by the shorter
    image side.

    Args:
        height: rows of the maps.
        width: columns of the maps.
        regions: region names among ``hub``, ``rim`` and ``part`` (or
            ``body``: the whole part).

    Returns:
        bool array ``[len(regions), height, width]``.

    Raises:
        ValueError: for an unknown region name.
    """
    _check_size(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    radius = np.hypot(xs - width / 2.0, ys - height / 2.0) / min(height, width)
    out = []
    for name in regions:
        if name not in _PART_RINGS:
            raise ValueError(f"no heuristic for part region {name!r}; known regions: {sorted(_PART_RINGS)}")
        inner, outer = _PART_RINGS[name]
        out.append((radius >= inner) & (radius <= outer))
    return np.stack(out).astype(bool)


def heuristic_maps(height: int, width: int, organs: Sequence[str]) -> np.ndarray:
    """Triangles for chest organs, rings for part regions, by organ names."""
    if all(o in _CHEST_TRIANGLES for o in organs):
        return triangular_maps(height, width, organs)
    if all(o in _PART_RINGS for o in organs):
        return part_heuristic_maps(height, width, organs)
    raise ValueError(
        f"no spatial heuristic for organs {list(organs)}; chest organs {sorted(_CHEST_TRIANGLES)} "
        f"or part regions {sorted(_PART_RINGS)} are supported"
    )

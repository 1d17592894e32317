"""The ``paper`` view kind against the SPAN appendix's Table A.2, measured on the views themselves.

Each step of the view is drawn many times on an input made so that its
effect can be read back from the output (a rotated bar's angle, a constant
image's brightness, a two-level image's contrast, an impulse's sharpness),
so that the test finds each augmentation's rate and range from what the
view did, not from its settings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from spanlib.core.configs import ViewConfig, resolve
from spanlib.pretrain.augment import ViewMaker
from spanlib.pretrain.paper_views import TABLE_A2, paper_steps

DRAWS = 3000


def _rate_ok(hits: int, n: int, p: float) -> bool:
    """Within five binomial standard deviations of ``p`` (a false alarm about once in 3.5 million runs)."""
    return abs(hits / n - p) <= 5 * math.sqrt(p * (1 - p) / n)


def _drawn(step, image: torch.Tensor, n: int = DRAWS, mask: torch.Tensor | None = None) -> list:
    torch.manual_seed(0)
    out = []
    for _ in range(n):
        if mask is None:
            out.append(step(tv_tensors.Image(image)).as_subclass(torch.Tensor))
        else:
            view, moved = step(tv_tensors.Image(image), tv_tensors.Mask(mask))
            out.append((view.as_subclass(torch.Tensor), moved.as_subclass(torch.Tensor)))
    return out


def _bar_angle(mask: torch.Tensor) -> float:
    """The angle (degrees, image axes) of a thin bar's principal axis."""
    ys, xs = np.nonzero(mask.numpy() > 0.5)
    cov = np.cov(np.stack([xs - xs.mean(), ys - ys.mean()]))
    values, vectors = np.linalg.eigh(cov)
    vx, vy = vectors[:, np.argmax(values)]
    angle = math.degrees(math.atan2(-vy, vx))  # y grows downward: counter-clockwise positive
    return (angle + 90) % 180 - 90


def test_rotation_rate_and_range_and_the_map_moves_with_the_image():
    size = 64
    bar = torch.zeros(1, size, size)
    bar[0, size // 2 - 1: size // 2 + 1, 8:-8] = 1.0
    drawn = _drawn(paper_steps(size)["rotation"], bar.expand(3, -1, -1).clone(), mask=bar)
    angles = np.array([_bar_angle(m[0]) for _, m in drawn])
    assert all(torch.equal((v[0] > 0.5).float(), (m[0] > 0.5).float()) for v, m in drawn[:200])  # map follows image
    rotated = np.abs(angles) > 0.5
    row = TABLE_A2["rotation"]
    assert _rate_ok(int(rotated.sum()), DRAWS, row.probability)
    assert np.abs(angles).max() <= abs(row.high) + 1.5  # the angle read off a pixel bar, within 1.5 degrees
    assert angles.min() < -25 and angles.max() > 25  # the whole range [-30, 30] is used
    assert abs(np.median(angles[rotated])) < 5  # both ways


def _factor_read(name: str, image: torch.Tensor, out: torch.Tensor) -> float:
    if name == "brightness":  # constant grey: out = f * in
        return float(out.mean() / image.mean())
    if name == "contrast":  # two levels about their mean: the spread scales by f
        return float(out.std() / image.std())
    # sharpness: out = blur + f * (in - blur) at an impulse's centre, torchvision's 3x3 kernel
    # [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 for the blur
    centre = image.shape[-1] // 2
    peak, ground = float(image[0, centre, centre]), float(image[0, 0, 0])
    blurred = (8 * ground + 5 * peak) / 13.0
    return float((out[0, centre, centre] - blurred) / (peak - blurred))


@pytest.mark.parametrize("name", ["brightness", "contrast", "sharpness"])
def test_photometric_rate_and_strength_as_table_a2(name):
    size = 16
    if name == "brightness":
        image = torch.full((3, size, size), 0.5)
    elif name == "contrast":
        image = torch.full((3, size, size), 0.4)
        image[:, :, size // 2:] = 0.6
    else:
        image = torch.full((3, size, size), 0.25)
        image[:, size // 2, size // 2] = 0.5
    step = paper_steps(size)[name]
    factors = np.array([_factor_read(name, image, out) for out in _drawn(step, image)])
    applied = np.abs(factors - 1) > 1e-4
    row = TABLE_A2[name]
    assert _rate_ok(int(applied.sum()), DRAWS, row.probability)
    strength = np.abs(factors[applied] - 1)
    assert strength.max() <= row.high + 1e-3 and strength.min() >= row.low - 1e-3
    # uniform on [0, 0.2]: mean 0.1, and both halves of the range used
    assert abs(strength.mean() - (row.low + row.high) / 2) < 0.025
    assert (strength < 0.05).any() and (strength > 0.15).any()
    assert (factors[applied] > 1).any() and (factors[applied] < 1).any()


def test_crop_always_to_the_model_size_at_varying_places():
    size = 32
    image = torch.linspace(0, 1, 48 * 48).reshape(1, 48, 48).expand(3, -1, -1).clone()
    crops = _drawn(paper_steps(size)["crop"], image, n=200)
    assert all(c.shape == (3, size, size) for c in crops)
    corners = {round(float(c[0, 0, 0]), 4) for c in crops}
    assert len(corners) > 5  # a random place, not a centre crop


def test_paper_views_are_global_only_without_flip_or_colour_jitter():
    cfg = resolve("paper", "span_deformable")
    views = ViewMaker(cfg.views, 48, ("left_lung", "right_lung", "heart"))
    assert views.n_local == 0 and views.local_view is None
    names = [type(t).__name__ for t in views.global_views[0].transforms]
    assert "HorizontalFlipSwap" not in names and "ColorJitter" not in names and "RandomGrayscale" not in names
    # an asymmetric film is never mirrored: the left-right order of its mean columns survives every view
    image = torch.zeros(64, 64)
    image[:, :20] = 1.0
    maps = torch.zeros(3, 64, 64)
    torch.manual_seed(1)
    for _ in range(100):
        view = views(image, maps)["global"][0, 0]
        assert view[:, :8].mean() > view[:, -8:].mean()


def test_paper_view_kind_is_refused_under_another_name():
    with pytest.raises(ValueError, match="'dino', 'cxr' or 'paper'"):
        ViewMaker(ViewConfig(kind="mocov2"), 32, ())

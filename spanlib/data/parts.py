"""Cast parts: synthetic top views of round cast parts with and without defects.

Modelled on the Kaggle "casting product image data for quality inspection"
set (top views of cast pump impellers, grey, dark background), and plainly
synthetic. A part is an outer rim, a recessed web with a ring of bolt holes
and a raised hub with a bore, lit from a random direction (bevel shading and
a specular highlight), with machining marks and casting texture. A defective
part carries one or two defects *on the part*, some of them small: a blow
hole, a burr, a crack, flash at the outer edge, or missing material bitten
out of the rim. Dark specks on the background (not the part) are
distractors that look like holes.

Masks: ``rim`` (the outer annulus) and ``hub`` (the central boss with its
bore), the regions the part heuristic of :mod:`spanlib.maps.heuristic` names.
Label: ``defect`` (1 = defective).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.special import expit

from spanlib.data.sample import Sample

STREAM = 2
"""Random-stream tag of cast parts."""

PART_MASKS: tuple[str, ...] = ("rim", "hub")
PART_LABELS: tuple[str, ...] = ("defect",)
DEFECT_KINDS: tuple[str, ...] = ("hole", "burr", "crack", "flash", "missing")


@dataclass(frozen=True)
class PartConfig:
    """How cast parts are drawn.

    Attributes:
        image_size: side of the square image in pixels.
        defect_rate: share of defective parts (the Kaggle set has about 60%).
        small_defect_rate: share of defects drawn at their smallest size.
        noise: range of the sensor-noise standard deviation.
        speck_rate: probability of dark specks on the background.
        defect_scale: size of the defects relative to the Kaggle-like
            originals (drawn for a 300 px film). The book's models see a part
            at 64 px through 8 px patches, where an original blow hole is under
            a pixel; at 3x a defect spans a patch or more, as the Kaggle
            defects do at the paper's 224 px through 16 px patches.
    """

    image_size: int = 128
    defect_rate: float = 0.6
    small_defect_rate: float = 0.35
    noise: tuple[float, float] = (0.01, 0.03)
    speck_rate: float = 0.5
    defect_scale: float = 1.0


def _polar(size: int, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radius (fraction of the image side) and angle of every pixel around ``centre``."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    gx, gy = np.meshgrid(axis, axis)
    dx, dy = gx - centre[0], gy - centre[1]
    return np.hypot(dx, dy), np.arctan2(dy, dx)


def _draw_defect(
    kind: str, rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, geometry: dict[str, float], small: bool,
    defect_scale: float = 1.0,
) -> None:
    """Draw one defect on a height-change layer (128 = unchanged, darker = lower, lighter = raised)."""
    cx, cy, outer, inner, hub = (geometry[k] for k in ("cx", "cy", "outer", "inner", "hub"))
    scale = (0.5 if small else 1.0) * defect_scale
    theta = rng.uniform(0.0, 2.0 * np.pi)
    if kind == "hole":
        radius = rng.uniform(0.3 * hub, outer - 0.02)
        r = size * scale * rng.uniform(0.012, 0.028)
        px, py = (cx + radius * np.cos(theta)) * size, (cy + radius * np.sin(theta)) * size
        draw.ellipse([px - r, py - r * rng.uniform(0.7, 1.0), px + r, py + r], fill=10)
    elif kind == "burr":
        edge = outer if rng.random() < 0.6 else inner
        points = []
        for _ in range(int(rng.integers(4, 8))):
            spread = scale * rng.uniform(0.01, 0.035)
            radius = edge + rng.uniform(-0.005, 0.03 * scale)
            angle = theta + rng.uniform(-spread, spread) / max(edge, 0.05)
            points.append(((cx + radius * np.cos(angle)) * size, (cy + radius * np.sin(angle)) * size))
        draw.polygon(points, fill=235)
    elif kind == "crack":
        radius = rng.uniform(hub, outer - 0.03)
        px, py = cx + radius * np.cos(theta), cy + radius * np.sin(theta)
        heading = theta + rng.normal(0.0, 0.6)
        points = [(px * size, py * size)]
        for _ in range(int(rng.integers(4, 9))):
            heading += rng.normal(0.0, 0.5)
            step = scale * rng.uniform(0.012, 0.03)
            px, py = px + step * np.cos(heading), py + step * np.sin(heading)
            points.append((px * size, py * size))
        draw.line(points, fill=25, width=max(1, round(0.008 * size * defect_scale)))
    elif kind == "flash":
        span = scale * rng.uniform(0.25, 0.7)
        angles = np.linspace(theta, theta + span, 24)
        fin = outer + scale * rng.uniform(0.01, 0.025) * (0.6 + 0.4 * rng.random(24))
        points = [((cx + outer * 0.99 * np.cos(a)) * size, (cy + outer * 0.99 * np.sin(a)) * size) for a in angles]
        points += [((cx + f * np.cos(a)) * size, (cy + f * np.sin(a)) * size) for a, f in zip(angles[::-1], fin[::-1])]
        draw.polygon(points, fill=190)
    else:  # missing material: a bite out of the rim
        r = size * scale * rng.uniform(0.03, 0.06)
        px, py = (cx + outer * np.cos(theta)) * size, (cy + outer * np.sin(theta)) * size
        draw.ellipse([px - r, py - r, px + r, py + r], fill=0)


def make_cast_part(index: int, seed: int, config: PartConfig = PartConfig(), split: str = "train") -> Sample:
    """Draw one cast part.

    Args:
        index: position in the dataset; with ``seed`` it fixes the random stream.
        seed: dataset seed.
        config: drawing parameters.
        split: split recorded in the sample.

    Returns:
        A :class:`~spanlib.data.sample.Sample` with masks ``rim`` and ``hub``
        and the label ``defect``.
    """
    rng = np.random.default_rng([seed, STREAM, index])
    size = config.image_size
    defective = bool(rng.random() < config.defect_rate)
    centre = 0.5 + np.clip(rng.normal(0.0, 0.015, 2), -0.04, 0.04)
    outer = 0.44 * rng.uniform(0.96, 1.03)
    inner = outer * rng.uniform(0.7, 0.76)
    hub = outer * rng.uniform(0.33, 0.38)
    bore = hub * rng.uniform(0.3, 0.42)
    holes = int(rng.choice([4, 5, 6, 8]))
    phase = rng.uniform(0.0, 2.0 * np.pi)
    radius, angle = _polar(size, centre)

    # height map of the part: rim 1, web 0.75, hub 1.2, holes and outside 0
    height = np.where(radius < outer, 1.0, 0.0).astype(np.float32)
    height[(radius >= hub) & (radius < inner)] = 0.6
    height[radius < hub] = 1.2
    ring = 0.5 * (hub + inner)
    hole_r = 0.3 * (inner - hub)
    gx, gy = centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)
    for k in range(holes):
        a = phase + 2.0 * np.pi * k / holes
        height[np.hypot(gx - centre[0] - ring * np.cos(a), gy - centre[1] - ring * np.sin(a)) < hole_r] = 0.0
    height[radius < bore] = 0.0

    if defective:  # defects draw from their own stream: the rest of the image does not depend on them
        defect_rng = np.random.default_rng([seed, STREAM, index, 1])
        kinds = [str(k) for k in defect_rng.choice(DEFECT_KINDS, size=int(defect_rng.integers(1, 3)), replace=False)]
        layer = Image.new("L", (size, size), 128)
        draw = ImageDraw.Draw(layer)
        geometry = {"cx": centre[0], "cy": centre[1], "outer": outer, "inner": inner, "hub": hub}
        for kind in kinds:
            small = bool(defect_rng.random() < config.small_defect_rate)
            _draw_defect(kind, defect_rng, draw, size, geometry, small, config.defect_scale)
        change = np.asarray(layer, dtype=np.float32)
        height = np.where(change < 5, 0.0, height)  # missing material
        height = np.where((change > 150) & (height == 0), 0.9, height)  # flash and burrs stand out of the edge
        height = height + np.where((change >= 5) & (change != 128), (change - 128.0) / 255.0, 0.0) * (height > 0)

    smooth = ndimage.gaussian_filter(height, 0.6)
    light = rng.uniform(0.0, 2.0 * np.pi)
    gy_h, gx_h = np.gradient(ndimage.gaussian_filter(height, 1.2) * size / 64.0)
    bevel = gx_h * np.cos(light) + gy_h * np.sin(light)
    metal = rng.uniform(0.5, 0.65)
    part = smooth > 0.05
    grooves = 0.02 * np.sin(2.0 * np.pi * radius * size / rng.uniform(2.5, 4.0))
    casting = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 1.0)
    image = metal * (0.7 + 0.3 * smooth) + grooves * part + 0.025 * casting * part - 0.6 * bevel
    highlight = np.exp(
        -((radius * np.cos(angle) - 0.22 * np.cos(light)) ** 2 + (radius * np.sin(angle) - 0.22 * np.sin(light)) ** 2)
        / 0.02
    )
    image += rng.uniform(0.05, 0.2) * highlight * part
    background = rng.uniform(0.12, 0.3) + 0.05 * (radius - 0.5)
    image = np.where(part, image, background) * expit((smooth - 0.05) / 0.03) + background * (
        1 - expit((smooth - 0.05) / 0.03)
    )
    if rng.random() < config.speck_rate:
        for _ in range(int(rng.integers(1, 5))):
            px, py = rng.uniform(0.02, 0.98, 2)
            r_speck = rng.uniform(0.006, 0.015)
            speck = (gx - px) ** 2 + (gy - py) ** 2 < r_speck**2
            image = np.where(speck & (radius > outer + 0.03), 0.3 * image, image)
    image += rng.uniform(*config.noise) * rng.standard_normal((size, size))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    masks = {"rim": (radius >= inner) & (radius < outer), "hub": radius < hub}
    return Sample(id=f"part_{index:06d}", image=image, masks=masks, labels={"defect": float(defective)}, split=split)

"""Chest radiograph phantoms: synthetic frontal films with organ masks and six findings.

The phantoms are plainly synthetic. Each is drawn from its own random stream
(seed, index), so a dataset is reproducible sample by sample whatever the
number of worker processes.

How a film is made:

1. Labels first (:class:`FindingModel`): a latent cardiac state makes
   Cardiomegaly, Edema and Pleural Effusion co-occur, Atelectasis follows
   effusion, Consolidation is independent, No Finding means none of the five.
2. Anatomy (:func:`_anatomy`): lungs, heart, mediastinum, diaphragm domes,
   ribs, clavicles, spine and soft tissue are analytic shapes in a canonical
   frame ``x, y`` in [-1, 1] (``x`` to the image's right, ``y`` down). Each
   film moves them by a random scale, shift, small rotation and a smooth
   non-rigid displacement, evaluated directly at every output pixel.
3. Findings live only in their organ: an enlarged heart; fluid with a
   meniscus at a lung base; a focal opacity in a lung; a plate-like band
   with a raised hemidiaphragm (lost volume); bilateral perihilar haze with
   septal lines. Each has a random severity, so some are subtle.
4. Density -> film: an exponential tone curve, exposure (gain, gamma,
   offset, heel gradient), film grain.
5. Distractors a real film carries: a side marker letter, burned-in text,
   collimation edges at the borders, and (more often in films with
   findings, as in hospital films) ECG wires and tubes that cross the organs.

Radiology convention: the patient's LEFT lung is on the IMAGE's RIGHT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from spanlib.data.sample import CHEST_LABELS, CHEST_ORGANS, Sample

STREAM = 1
"""Random-stream tag of chest phantoms (parts and digits use others)."""


@dataclass(frozen=True)
class FindingModel:
    """Prevalence and co-occurrence of the six labels.

    Pairs are ``(probability without, probability with)`` the conditioning
    state: the latent cardiac state for Cardiomegaly, Edema and Pleural
    Effusion, and Pleural Effusion for Atelectasis.
    """

    cardiac: float = 0.22
    cardiomegaly: tuple[float, float] = (0.08, 0.65)
    edema: tuple[float, float] = (0.04, 0.55)
    effusion: tuple[float, float] = (0.13, 0.55)
    atelectasis: tuple[float, float] = (0.11, 0.32)
    consolidation: float = 0.13

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """Draw the six labels of one film (always six draws from ``rng``)."""
        u = rng.random(6)
        cardiac = int(u[0] < self.cardiac)
        effusion = bool(u[3] < self.effusion[cardiac])
        found = {
            "Atelectasis": bool(u[4] < self.atelectasis[int(effusion)]),
            "Cardiomegaly": bool(u[1] < self.cardiomegaly[cardiac]),
            "Consolidation": bool(u[5] < self.consolidation),
            "Edema": bool(u[2] < self.edema[cardiac]),
            "Pleural Effusion": effusion,
        }
        labels = {name: float(value) for name, value in found.items()}
        labels["No Finding"] = float(not any(found.values()))
        return {name: labels[name] for name in CHEST_LABELS}


@dataclass(frozen=True)
class ChestConfig:
    """How chest phantoms are drawn.

    Attributes:
        image_size: side of the square film in pixels.
        findings: label prevalence and co-occurrence.
        severity: range of a finding's severity (1 = obvious).
        noise: range of the film-grain standard deviation.
        device_rate: probability of wires or tubes in a film without / with findings.
        marker_rate: probability of a side marker letter.
        text_rate: probability of burned-in text.
        collimation_rate: probability of collimation edges.
    """

    image_size: int = 256
    findings: FindingModel = FindingModel()
    severity: tuple[float, float] = (0.3, 1.0)
    noise: tuple[float, float] = (0.012, 0.03)
    device_rate: tuple[float, float] = (0.2, 0.45)
    marker_rate: float = 0.9
    text_rate: float = 0.6
    collimation_rate: float = 0.4


def _step(z: np.ndarray | float) -> np.ndarray:
    """A soft 0 -> 1 step with the logistic's slope at 0, as a clipped ramp (cheaper than ``expit``)."""
    return np.clip(0.5 + 0.25 * np.asarray(z), 0.0, 1.0)


def _blur_coarse(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur computed on a 4x coarser grid (the result is smooth anyway)."""
    size = mask.shape[0]
    if size % 4 or sigma < 4.0:
        return ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    coarse = mask.astype(np.float32).reshape(size // 4, 4, size // 4, 4).mean(axis=(1, 3))
    coarse = ndimage.gaussian_filter(coarse, sigma / 4.0)
    return ndimage.zoom(coarse, 4, order=1, grid_mode=True, mode="nearest").astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1] (``X`` to the right, ``Y`` down)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    return np.meshgrid(axis, axis)


def _smooth_field(rng: np.random.Generator, size: int, amplitude: float, order: int = 3) -> np.ndarray:
    """A smooth random field: a random combination of low-frequency cosines, computed separably."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    basis = np.cos(np.pi * np.arange(1, order + 1)[None, :] * t[:, None]).astype(np.float32)  # [size, order]
    coefficients = rng.normal(0.0, amplitude, (order, order)).astype(np.float32)
    return basis @ coefficients @ basis.T


def _canonical(rng: np.random.Generator, size: int, outline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical coordinates of every pixel under a random pose and a smooth deformation.

    The pose is the patient's: size (a scale per axis), tilt (a rotation up to
    12 degrees) and position (a shift), drawn and then limited so that the
    canonical ``outline`` of the lung fields (:func:`_outline`) stays
    inside the film: the scale shrinks when the outline cannot fit, the shift
    is clipped when it would push it out. Always the same draws from ``rng``.
    """
    gx, gy = _grid(size)
    scale = np.clip(rng.normal(0.94, 0.12, 2), 0.7, 1.2)
    angle = np.deg2rad(np.clip(rng.normal(0.0, 6.0), -12.0, 12.0))
    shift = np.clip(rng.normal(0.0, 0.15, 2), -0.3, 0.3)
    warp_x, warp_y = _smooth_field(rng, size, 0.015), _smooth_field(rng, size, 0.015)
    cos, sin = np.cos(angle), np.sin(angle)
    # of the half-frame, less a grid cell and what the smooth deformation may add
    limit = 0.93 - float(scale.max() * max(np.abs(warp_x).max(), np.abs(warp_y).max()))
    placed = (outline * scale) @ np.array([[cos, sin], [-sin, cos]])  # before the shift
    low, high = placed.min(axis=0), placed.max(axis=0)
    fit = min(1.0, float(np.min(2.0 * limit / (high - low))))
    scale, low, high = scale * fit, low * fit, high * fit
    shift = np.clip(shift, -limit - low, limit - high)
    px, py = gx - shift[0], gy - shift[1]
    x = (cos * px + sin * py) / scale[0] + warp_x
    y = (-sin * px + cos * py) / scale[1] + warp_y
    return x.astype(np.float32), y.astype(np.float32)


def _anatomy(rng: np.random.Generator, labels: dict[str, float], severity: np.ndarray) -> dict[str, float]:
    """Per-film shape parameters; findings that change anatomy are applied here.

    Lungs vary in width, length and position, the domes with the depth of
    inspiration (both together) and each on its own; the heart sits on the
    diaphragm and varies in size, position and tilt. An enlarged heart grows
    by 25 to 55 percent in its long axis with severity.
    """
    n = rng.normal
    inspiration = n(0, 0.045)  # deeper breath: lower domes, longer lungs
    a = {
        "lung_cx": 0.40 + n(0, 0.035),
        "lung_cy": -0.02 + n(0, 0.04) + 0.5 * inspiration,
        "lung_ax": 0.34 + n(0, 0.04),
        "lung_ay": 0.72 + n(0, 0.05) + 0.5 * inspiration,
        "dome_r": 0.61 + n(0, 0.035) + inspiration,
        "dome_l": 0.65 + n(0, 0.035) + inspiration,
        "dome_h": 0.21 + n(0, 0.03),
        "medi": 0.085 + n(0, 0.012),
        "heart_x": 0.12 + n(0, 0.035),
        "heart_y": 0.27 + n(0, 0.03) + 0.7 * inspiration,
        "heart_a": 0.33 + n(0, 0.025),
        "heart_b": 0.25 + n(0, 0.018),
        "heart_tilt": -0.5 + n(0, 0.12),
        "heart_scale": float(np.clip(n(1.0, 0.07), 0.86, 1.16)),
        "rib_y0": -0.80 + n(0, 0.02),
        "rib_step": 0.125 + n(0, 0.004),
        "soft": 0.9 + n(0, 0.05),
        "breast": float(rng.random() < 0.4),
        "bubble": float(rng.random() < 0.6),
    }
    a["dome_h"] = max(a["dome_h"], 0.1)
    if labels["Cardiomegaly"]:
        growth = 1.25 + 0.3 * severity[1]
        a["heart_scale"] = growth
        a["heart_x"] += 0.1 * (growth - 1.0)
        a["heart_y"] += 0.05 * (growth - 1.0)
    return {key: float(value) for key, value in a.items()}  # Python floats keep arrays float32


def _lung_cavity(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Inside of a thoracic half: round above its centre (power 2), boxy below (power 4)."""
    u = ((x - cx) / ax) ** 2
    v = ((y - cy) / ay) ** 2
    return np.where(y < cy, u + v, u * u + v * v) < 1.0


def _dome(x: np.ndarray, centre: float, base: float, height: float, width: float = 0.45) -> np.ndarray:
    """Height of a hemidiaphragm: a parabola peaking at ``centre`` (smaller y is higher)."""
    return base - height * (1.0 - ((x - centre) / width) ** 2)


def _organs(x: np.ndarray, y: np.ndarray, a: dict[str, float], raise_side: dict[str, float]) -> dict[str, np.ndarray]:
    """Boolean organ regions (patient-side names) plus helper regions."""
    base_r, base_l = _dome(x, -0.33, a["dome_r"], a["dome_h"]), _dome(x, 0.33, a["dome_l"], a["dome_h"])
    dome_r = base_r - raise_side["right"]
    dome_l = base_l - raise_side["left"]
    medi = a["medi"] + 0.035 * np.clip(y + 0.7, 0.0, 1.3)
    tilt = a["heart_tilt"]
    hx, hy = x - a["heart_x"], y - a["heart_y"]
    u = np.cos(tilt) * hx + np.sin(tilt) * hy
    v = -np.sin(tilt) * hx + np.cos(tilt) * hy
    s = a["heart_scale"]
    floor = np.maximum(base_r, base_l) + 0.03
    heart = ((u / (a["heart_a"] * s)) ** 2 + (v / (a["heart_b"] * s**0.6)) ** 2 < 1.0) & (y < floor)
    knob = (x - 0.11) ** 2 + (y + 0.22) ** 2 < 0.06**2
    cavity_r = _lung_cavity(x, y, -a["lung_cx"], a["lung_cy"], a["lung_ax"], a["lung_ay"])
    cavity_l = _lung_cavity(x, y, a["lung_cx"], a["lung_cy"], a["lung_ax"] * 1.02, a["lung_ay"])
    field_r = cavity_r & (x < -medi) & (y < dome_r)
    field_l = cavity_l & (x > medi + 0.01) & (y < dome_l) & ~knob
    # below the diaphragm as it would be without lost volume: a raised dome only removes lung
    abdomen = (y > np.where(x < 0, base_r, base_l)) & (np.abs(x) < 0.85)
    return {
        "left_lung": field_l & ~heart,
        "right_lung": field_r & ~heart,
        "heart": heart,
        "abdomen": abdomen,
        "lung_fields": field_r | field_l,  # lungs including the part behind the heart
    }


def _outline(a: dict[str, float]) -> np.ndarray:
    """Canonical points ``[k, 2]`` of the lung fields, on a coarse grid (cells of 0.025).

    The fields as they are before any finding (no raised dome); the heart lies
    between them, enlarged or not. So the pose fitted to this outline is the same
    with and without a finding, and a finding changes only its organ's pixels.
    """
    gx, gy = _grid(96)
    gx, gy = 1.2 * gx, 1.2 * gy
    fields = _organs(gx, gy, a, {"left": 0.0, "right": 0.0})["lung_fields"]
    return np.stack([gx[fields], gy[fields]], axis=1)


def _body(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft-tissue thickness in [0, 1]: a chest cylinder under a neck and sloping shoulders."""
    ax = np.abs(x)
    top = np.where(ax < 0.2, -1.2, -0.86 + 0.12 * np.clip(ax - 0.2, 0.0, None))
    chest = np.sqrt(np.clip(1.0 - (x / 0.92) ** 2, 0.0, 1.0)) * _step((y - top) / 0.03)
    shoulders = np.sqrt(np.clip(1.0 - ((ax - 0.86) / 0.2) ** 2 - ((y + 0.86) / 0.28) ** 2, 0.0, 1.0))
    return np.maximum(chest, 0.8 * shoulders).astype(np.float32)


def _periodic_bands(offset: np.ndarray, step: float, count: int, width: float) -> np.ndarray:
    """Bands of half-width ``width`` where ``offset`` is a multiple of ``step`` (multiples 0..count-1)."""
    q = offset / step
    k = np.rint(q)
    return np.exp(-((((q - k) * step) / width) ** 2)) * ((k >= 0) & (k < count))


def _bones(x: np.ndarray, y: np.ndarray, a: dict[str, float], cavity_width: float) -> np.ndarray:
    """Ribs, clavicles and spine as added density."""
    s = np.abs(x) / cavity_width
    side = np.sign(x) * 0.008
    posterior = y - (a["rib_y0"] + side - 0.04 + 0.08 * s + 0.45 * (s - 0.25) ** 2)
    ribs = _periodic_bands(posterior, a["rib_step"], 10, 0.02)
    ribs *= _step((s - 0.08) / 0.015) * _step((0.97 - s) / 0.02)
    anterior = y - (a["rib_y0"] + 0.25 + 0.35 * (0.85 - s))
    front = _periodic_bands(anterior, 0.14, 6, 0.018) * _step((s - 0.35) / 0.03) * _step((0.9 - s) / 0.02)
    clav_line = -0.66 - 0.13 * (s - 0.08) + 0.04 * np.sin(np.pi * np.clip((s - 0.08) / 0.56, 0, 1))
    clavicles = np.exp(-(((y - clav_line) / 0.03) ** 2)) * _step((s - 0.06) / 0.01) * _step((0.64 - s) / 0.02)
    discs = 0.75 + 0.25 * np.cos(2.0 * np.pi * (y - a["rib_y0"]) / a["rib_step"])
    spine = _step((0.058 - np.abs(x)) / 0.008) * discs
    return (0.11 * ribs + 0.05 * front + 0.25 * clavicles + 0.22 * spine).astype(np.float32)


def _pick(rng: np.random.Generator, region: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """A random point (canonical coordinates) of a non-empty region."""
    rows, cols = np.nonzero(region)
    k = int(rng.integers(len(rows)))
    return float(x[rows[k], cols[k]]), float(y[rows[k], cols[k]])


def _findings(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    organs: dict[str, np.ndarray],
    labels: dict[str, float],
    severity: np.ndarray,
    pixel: float,
) -> np.ndarray:
    """Added density of the lung findings, confined to the lungs."""
    lungs = organs["left_lung"] | organs["right_lung"]
    added = np.zeros_like(x)
    sides = ("right_lung", "left_lung")
    choice = rng.random(8)
    if labels["Pleural Effusion"]:
        both = choice[0] < 0.35
        chosen = sides if both else (sides[int(choice[1] < 0.5)],)
        for side in chosen:
            lung = organs[side]
            rows = np.nonzero(lung.any(axis=1))[0]
            base = float(y[rows[-1], :].mean()) if len(rows) else 0.5
            depth = (0.06 + 0.2 * severity[4]) * (0.8 + 0.4 * rng.random())
            lateral = np.clip(np.abs(x) / 0.75, 0.0, 1.0)
            level = base - depth * (0.55 + 0.6 * lateral**2)
            added += 0.5 * (0.6 + 0.4 * severity[4]) * _step((y - level) / 0.02) * lung
    if labels["Consolidation"]:
        lung = organs[sides[int(choice[2] < 0.5)]]
        cx, cy = _pick(rng, lung, x, y)
        radius = 0.05 + 0.09 * severity[2]
        blob = np.zeros_like(x)
        for dx, dy, r in rng.normal(0.0, 1.0, (3, 3)) * np.array([0.5, 0.5, 0.2]) * radius + np.array([0, 0, radius]):
            blob += np.exp(-((x - cx - dx) ** 2 + (y - cy - dy) ** 2) / (2 * max(r, 0.3 * radius) ** 2))
        fluff = ndimage.gaussian_filter(rng.standard_normal(x.shape, dtype=np.float32), 0.015 / pixel)
        fluff /= fluff.std() + 1e-6
        opacity = _step((blob - 0.5 + 0.12 * fluff) / 0.1)
        added += (0.2 + 0.22 * severity[2]) * opacity * lung
    if labels["Atelectasis"]:
        lung = organs[sides[int(choice[3] < 0.5)]]
        rows = np.nonzero(lung.any(axis=1))[0]
        lower = lung.copy()
        lower[: rows[0] + int(0.55 * (rows[-1] - rows[0])), :] = False
        cx, cy = _pick(rng, lower if lower.any() else lung, x, y)
        angle = np.deg2rad(rng.normal(0.0, 12.0))
        along = np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)
        across = -np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy)
        half_length = 0.07 + 0.08 * severity[0]
        thickness = max(0.012 + 0.01 * severity[0], 0.9 * pixel)
        plate = np.exp(-((across / thickness) ** 2)) * _step((half_length - np.abs(along)) / 0.015)
        added += (0.3 + 0.25 * severity[0]) * plate * lung
    if labels["Edema"]:
        strength = 0.06 + 0.14 * severity[3]
        spread = 0.2 + 0.06 * rng.random()
        for hx in (-0.17, 0.17):
            added += strength * np.exp(-(((x - hx) / (1.3 * spread)) ** 2 + ((y - 0.05) / spread) ** 2)) * lungs
        lines = np.zeros_like(x)
        for yk in rng.uniform(0.15, 0.45, 6):
            lines += np.exp(-(((y - yk) / max(0.006, 0.7 * pixel)) ** 2))
        lateral = _step((np.abs(x) - 0.62) / 0.015)
        added += (0.1 + 0.1 * severity[3]) * np.clip(lines, 0, 1) * lateral * lungs
    return added


def _devices(rng: np.random.Generator, size: int, with_findings: bool, config: ChestConfig) -> np.ndarray:
    """Radio-opaque wires and tubes, drawn in image coordinates; float [0, 1]."""
    layer = Image.new("L", (size, size), 0)
    if rng.random() >= config.device_rate[int(with_findings)]:
        return np.zeros((size, size), np.float32)
    draw = ImageDraw.Draw(layer)
    width = max(1, round(0.008 * size))
    t = np.linspace(0.0, 1.0, 40)[:, None]
    for _ in range(int(rng.integers(1, 4))):
        p = rng.uniform([0.05, 0.15], [0.95, 0.95], (4, 2)) * size
        curve = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
        draw.line([tuple(point) for point in curve], fill=200, width=width, joint="curve")
        r = max(2, round(0.02 * size))
        cx, cy = curve[-1]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
    if rng.random() < 0.6:
        x0 = size * (0.5 + rng.normal(0.0, 0.02))
        ys = np.linspace(0.0, 0.85, 30) * size
        xs = x0 + 0.04 * size * np.sin(ys / size * np.pi * rng.uniform(1.0, 2.0)) + 0.12 * size * (ys / size) ** 3
        draw.line(list(zip(xs, ys)), fill=230, width=max(1, round(0.012 * size)), joint="curve")
    return np.asarray(layer, dtype=np.float32) / 255.0


_WORDS = ("PORTABLE", "AP", "PA", "ERECT", "SUPINE", "CHEST", "1 VIEW", "SEMI-ERECT", "INSP")


def _annotations(rng: np.random.Generator, size: int, config: ChestConfig) -> np.ndarray:
    """Burned-in marker letter and text; float [0, 1]."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    u = rng.random(6)
    if u[0] < config.marker_rate:
        font = ImageFont.load_default(size=max(6, round(0.08 * size)))
        letter, right = ("L", True) if u[1] < 0.7 else ("R", False)
        xpos = size * (0.84 + 0.06 * u[2]) if right else size * (0.04 + 0.06 * u[2])
        ypos = size * (0.03 + 0.08 * u[3])
        box = draw.textbbox((xpos, ypos), letter, font=font)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], outline=255, width=1)
        draw.text((xpos, ypos), letter, fill=255, font=font)
    if u[4] < config.text_rate:
        font = ImageFont.load_default(size=max(6, round(0.05 * size)))
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        text = f"{word} {int(rng.integers(1000, 9999))}" if u[5] < 0.5 else word
        corner = rng.uniform([0.02, 0.0], [0.5, 0.06]) * size
        ypos = corner[1] + (0.9 * size if rng.random() < 0.6 else 0.12 * size)
        draw.text((corner[0], ypos), text, fill=int(rng.integers(180, 256)), font=font)
    return np.asarray(layer, dtype=np.float32) / 255.0


def _collimation(rng: np.random.Generator, size: int, rate: float) -> np.ndarray:
    """Where the beam was collimated away (bool): straight, slightly tilted border bands."""
    gx, gy = _grid(size)
    blocked = np.zeros((size, size), bool)
    if rng.random() >= rate:
        return blocked
    for coord, sign in ((gx, 1), (gx, -1), (gy, 1), (gy, -1)):
        if rng.random() < 0.5:
            other = gy if coord is gx else gx
            edge = 1.0 - rng.uniform(0.02, 0.1) + rng.normal(0.0, 0.02) * other
            blocked |= sign * coord > edge
    return blocked


def make_chest_phantom(index: int, seed: int, config: ChestConfig = ChestConfig(), split: str = "train") -> Sample:
    """Draw one chest phantom.

    Args:
        index: position in the dataset; with ``seed`` it fixes the random stream.
        seed: dataset seed.
        config: drawing parameters.
        split: split recorded in the sample.

    Returns:
        A :class:`~spanlib.data.sample.Sample` with masks ``left_lung``,
        ``right_lung``, ``heart`` and the six :data:`CHEST_LABELS`.
    """
    rng = np.random.default_rng([seed, STREAM, index])
    size = config.image_size
    pixel = 2.0 / size
    labels = config.findings.sample(rng)
    severity = rng.uniform(*config.severity, 5)  # Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion
    a = _anatomy(rng, labels, severity)
    raise_side = {"left": 0.0, "right": 0.0}
    atel_side = "left" if rng.random() < 0.5 else "right"
    if labels["Atelectasis"]:
        raise_side[atel_side] = 0.03 + 0.06 * severity[0]
    x, y = _canonical(rng, size, _outline(a))
    organs = _organs(x, y, a, raise_side)
    if not (organs["left_lung"].any() and organs["right_lung"].any() and organs["heart"].any()):
        raise RuntimeError(f"degenerate phantom (seed {seed}, index {index}); the anatomy ranges need fixing")
    lungs = (organs["left_lung"] | organs["right_lung"]).astype(np.float32)
    blur = 0.6
    density = a["soft"] * _body(x, y)
    depth = _blur_coarse(organs["lung_fields"], 0.06 / pixel)
    air = ndimage.gaussian_filter(lungs, blur) * (0.7 + 0.3 * depth)
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 0.02 / pixel)
    texture /= texture.std() + 1e-6
    vessels = np.exp(-((texture / 0.25) ** 2))  # zero crossings of smooth noise: a network of curved lines
    hilum = np.exp(-(((np.abs(x) - 0.17) / 0.4) ** 2 + ((y - 0.05) / 0.5) ** 2))
    density -= 0.58 * air * (1.0 - 0.22 * hilum * vessels)
    heart_soft = ndimage.gaussian_filter(organs["heart"].astype(np.float32), blur)
    density += 0.06 * heart_soft + 0.08 * ndimage.gaussian_filter(organs["abdomen"].astype(np.float32), 2 * blur)
    density -= 0.15 * _step((0.03 - np.abs(x)) / 0.006) * _step((-0.25 - y) / 0.02)  # trachea
    if a["bubble"]:
        density -= 0.2 * (((x - 0.35) / 0.09) ** 2 + ((y - a["dome_l"] - 0.05) / 0.05) ** 2 < 1.0)
    if a["breast"]:
        density += 0.1 * _step((0.2 - ((np.abs(x) - 0.5) / 0.35) ** 2 - ((y - 0.55) / 0.3) ** 2) / 0.05)
    density += _bones(x, y, a, a["lung_cx"] + a["lung_ax"])
    # findings and devices draw from their own streams, so that the rest of the film
    # (anatomy, exposure, noise, annotations) does not depend on which findings it has
    density += _findings(np.random.default_rng([seed, STREAM, index, 1]), x, y, organs, labels, severity, pixel)
    with_findings = labels["No Finding"] == 0.0
    density += 0.45 * _devices(np.random.default_rng([seed, STREAM, index, 2]), size, with_findings, config)
    film = 1.0 - np.exp(-2.1 * np.clip(density, 0.0, None))
    gain, gamma, offset = rng.uniform(0.85, 1.05), rng.uniform(0.8, 1.25), rng.uniform(0.0, 0.06)
    heel = 1.0 + rng.uniform(-0.06, 0.06) * _grid(size)[int(rng.integers(2))]
    film = offset + gain * heel * film**gamma
    white = rng.standard_normal((size, size), dtype=np.float32)
    film += rng.uniform(*config.noise) * (0.6 * white + 1.2 * ndimage.gaussian_filter(white, 0.7))  # grain
    film = np.maximum(film, _annotations(rng, size, config))
    blocked = _collimation(rng, size, config.collimation_rate)
    film = np.where(blocked, 0.8 + 0.1 * (film - 0.5), film)  # collimated away: little exposure, bright
    image = np.clip(film, 0.0, 1.0).astype(np.float32)
    masks = {name: organs[name].copy() for name in CHEST_ORGANS}
    return Sample(id=f"chest_{index:06d}", image=image, masks=masks, labels=labels, split=split)

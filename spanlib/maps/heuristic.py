"""Knowledge maps: spatial heuristics, the stored format, and the loader.

Three kinds of knowledge map K guide the assigned attention heads (SPAN):

* ``triangular``: the paper's spatial heuristic, three triangles (left lung,
  right lung, heart) placed by radiology convention, and the analogous
  concentric rim/hub heuristic for cast parts (:func:`triangular_maps`,
  :func:`part_heuristic_maps`);
* ``global``: a segmentation network's predicted probabilities averaged over
  the pretraining set (:mod:`spanlib.maps.segmentation`);
* ``deformable``: one annotated exemplar registered onto every image
  (:mod:`spanlib.maps.registration`).

Radiology convention: a frontal chest film is displayed as if facing the
patient, so the patient's LEFT lung lies on the IMAGE's RIGHT (larger column
index) and the heart bulges toward the image's right as well.

On disk (written by :mod:`spanlib.maps.build`)::

    OUT/manifest.json   {"format", "kind", "organs", "size", "params", "params_hash", "data", ...}
    OUT/template.npz    one map set for every image (triangular, global):
                        "maps" float32 [n_organs, S, S], binary values
                        (global also keeps "soft", the mean probabilities)
    OUT/maps/<key>.npz  one map set per image (deformable): "maps" bool
                        [n_organs, S, S] and "info" (method, reason, quality)
    OUT/index.json      {sample_id: key} (deformable; a shard writes
                        index-<i>-of-<n>.json, the loader merges them)
    OUT/report.json     the summary of the last build (report-<i>-of-<n>.json)
    OUT/segmenter.pt    the trained segmentation network (global)

The key of a per-image map hashes the image's pixels, the exemplar and the
parameters, so a rebuilt dataset or changed settings never reuse stale maps.
:func:`load_knowledge_maps` reads either layout into a :class:`KnowledgeMaps`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spanlib.data.parts import PART_MASKS as PART_REGIONS
from spanlib.data.sample import CHEST_ORGANS

__all__ = [
    "CHEST_ORGANS",
    "MAP_KINDS",
    "PART_REGIONS",
    "KnowledgeMaps",
    "MapFileError",
    "dice",
    "dice_report",
    "dice_scores",
    "heuristic_maps",
    "load_knowledge_maps",
    "part_heuristic_maps",
    "read_maps",
    "save_maps",
    "triangular_maps",
]

MAP_KINDS: tuple[str, ...] = ("triangular", "global", "deformable")

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


# --------------------------------------------------------------------------- storage

MANIFEST = "manifest.json"
TEMPLATE = "template.npz"
MAPS_DIR = "maps"


class MapFileError(ValueError):
    """A knowledge-map file that cannot be used: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def content_hash(*arrays: np.ndarray) -> str:
    """SHA-256 (hex) of arrays' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a JSON-serialisable mapping, keys sorted."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def map_key(image_hash: str, exemplar_hash: str, params_digest: str) -> str:
    """Cache key of one image's maps: image content, exemplar and parameters."""
    return hashlib.sha256(f"{image_hash}:{exemplar_hash}:{params_digest}".encode()).hexdigest()[:32]


def write_atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8"))


def save_maps(path: Path, maps: np.ndarray, info: Mapping[str, Any] | None = None, **extra: np.ndarray) -> None:
    """Save one map set (``[n_organs, S, S]``) and a JSON ``info`` record to an ``.npz``, atomically."""
    payload = {"maps": np.asarray(maps), "info": np.array(json.dumps(dict(info or {}), default=str))}
    payload.update({k: np.asarray(v) for k, v in extra.items()})

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, **payload)

    write_atomic(path, write)


def read_maps(path: Path, n_organs: int | None = None, size: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and check one map file.

    Args:
        path: an ``.npz`` written by :func:`save_maps`.
        n_organs: expected number of maps (None: not checked).
        size: expected side of each map (None: not checked).

    Returns:
        ``maps`` as float32 ``[n_organs, S, S]`` in [0, 1] and the ``info`` record.

    Raises:
        MapFileError: missing or unreadable file, missing entries, wrong shape,
            values outside [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise MapFileError(path, "missing file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "maps" not in data.files:
                raise MapFileError(path, f"no 'maps' entry (found: {', '.join(data.files) or 'nothing'})")
            maps = np.asarray(data["maps"])
            info = json.loads(str(data["info"])) if "info" in data.files else {}
    except MapFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise MapFileError(path, f"unreadable map file ({type(error).__name__}: {error})") from error
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise MapFileError(path, f"maps must be [n_organs, S, S], got shape {maps.shape}")
    if n_organs is not None and maps.shape[0] != n_organs:
        raise MapFileError(path, f"expected {n_organs} maps, found {maps.shape[0]}")
    if size is not None and maps.shape[1] != size:
        raise MapFileError(path, f"expected maps of size {size}, found {maps.shape[1]}")
    maps = maps.astype(np.float32)
    if not np.isfinite(maps).all() or maps.min(initial=0.0) < 0.0 or maps.max(initial=0.0) > 1.0:
        raise MapFileError(path, "map values must be finite and within [0, 1]")
    return maps, info


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """Read and check ``OUT/manifest.json``.

    Raises:
        MapFileError: missing or malformed manifest.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise MapFileError(path, "missing file (not a knowledge-map directory? build one with "
                                 "`python -m spanlib templates build`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MapFileError(path, f"not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise MapFileError(path, "must hold a JSON object")
    missing = [k for k in ("kind", "organs", "size") if k not in manifest]
    if missing:
        raise MapFileError(path, f"missing entries: {', '.join(missing)}")
    if manifest["kind"] not in MAP_KINDS:
        raise MapFileError(path, f"kind must be one of {MAP_KINDS}, got {manifest['kind']!r}")
    return manifest


def index_files(out_dir: Path) -> list[Path]:
    """``index.json`` and the per-shard ``index-<i>-of-<n>.json`` files of a directory."""
    return sorted(Path(out_dir).glob("index*.json"))


def read_index(out_dir: Path) -> dict[str, str]:
    """Sample id -> map key, merged over every index file of a directory.

    Raises:
        MapFileError: an index file that is not a JSON object of strings.
    """
    merged: dict[str, str] = {}
    for path in index_files(out_dir):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MapFileError(path, f"not valid JSON ({error})") from error
        if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
            raise MapFileError(path, "must map sample ids to map keys (strings)")
        merged.update(index)
    return merged


@dataclass
class KnowledgeMaps:
    """Knowledge maps read from a directory written by ``python -m spanlib templates build``.

    Attributes:
        root: the directory.
        kind: ``triangular``, ``global`` or ``deformable``.
        organs: map names, in channel order.
        size: side of every stored map.
        manifest: the whole manifest.
        template: ``[n_organs, S, S]`` float32, one map set for every image
            (triangular, global); None for deformable.
        soft: the global average's mean probabilities (global only).
        index: sample id -> map key (deformable).
    """

    root: Path
    kind: str
    organs: tuple[str, ...]
    size: int
    manifest: dict[str, Any]
    template: np.ndarray | None = None
    soft: np.ndarray | None = None
    index: dict[str, str] = field(default_factory=dict)
    _loaded: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __contains__(self, sample_id: object) -> bool:
        return self.template is not None or sample_id in self.index

    def preload(self) -> KnowledgeMaps:
        """Read every indexed map into memory now; returns ``self``.

        A deformable set of 1,000 images at 64 px takes about 50 MB (float32).

        Raises:
            MapFileError: a missing or corrupt map file.
        """
        for sample_id in self.index:
            if sample_id not in self._loaded:
                self._loaded[sample_id] = self._read(sample_id)
        return self

    def _read(self, sample_id: str) -> np.ndarray:
        maps, _ = read_maps(self.root / MAPS_DIR / f"{self.index[sample_id]}.npz", len(self.organs), self.size)
        return maps

    def maps_for(self, sample_id: str) -> np.ndarray:
        """The maps of one image.

        Args:
            sample_id: the sample's id.

        Returns:
            float32 ``[n_organs, size, size]`` in [0, 1] (a fresh copy).

        Raises:
            KeyError: a deformable directory without maps for this sample.
            MapFileError: the sample's map file is missing or corrupt.
        """
        if self.template is not None:
            return self.template.copy()
        if sample_id in self._loaded:
            return self._loaded[sample_id].copy()
        if sample_id not in self.index:
            raise KeyError(f"{self.root}: no knowledge maps for sample {sample_id!r} "
                           f"({len(self.index)} samples indexed; build them with `python -m spanlib templates build`)")
        return self._read(sample_id)


def load_knowledge_maps(out_dir: str | Path) -> KnowledgeMaps:
    """Read a knowledge-map directory (see the module docstring for the layout).

    Args:
        out_dir: the ``--out`` directory of ``python -m spanlib templates build``.

    Returns:
        A :class:`KnowledgeMaps`; per-image maps are read lazily by
        :meth:`KnowledgeMaps.maps_for`.

    Raises:
        MapFileError: missing or malformed manifest, template or index.
    """
    root = Path(out_dir)
    manifest = read_manifest(root)
    organs, size = tuple(str(o) for o in manifest["organs"]), int(manifest["size"])
    maps = KnowledgeMaps(root=root, kind=manifest["kind"], organs=organs, size=size, manifest=manifest)
    if manifest["kind"] == "deformable":
        maps.index = read_index(root)
    else:
        maps.template, _ = read_maps(root / TEMPLATE, len(organs), size)
        with np.load(root / TEMPLATE, allow_pickle=False) as data:
            if "soft" in data.files:
                maps.soft = np.asarray(data["soft"], dtype=np.float32)
    return maps


# --------------------------------------------------------------------------- Dice


class _MaskedSample(Protocol):
    id: str
    image: np.ndarray
    masks: dict[str, np.ndarray]


def resize_nearest(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[..., h, w]`` to ``[..., height, width]`` by nearest neighbour (pixel centres)."""
    h, w = maps.shape[-2:]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return maps[..., rows[:, None], cols[None, :]]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * float((prediction & truth).sum()) / total


def dice_scores(knowledge_maps: KnowledgeMaps, dataset: Iterable[_MaskedSample], skip_missing: bool = False
                ) -> dict[str, list[float]]:
    """Dice of every organ map against the ground truth, per sample.

    Maps are thresholded at 0.5 and resized to the image by nearest neighbour.
    Organs a sample has no mask for are left out for that sample.

    Args:
        knowledge_maps: from :func:`load_knowledge_maps`.
        dataset: samples with ``id``, ``image`` and ``masks``.
        skip_missing: leave out samples without maps instead of raising.

    Returns:
        organ -> list of Dice values.
    """
    scores: dict[str, list[float]] = {organ: [] for organ in knowledge_maps.organs}
    for sample in dataset:
        if skip_missing and sample.id not in knowledge_maps:
            continue
        height, width = sample.image.shape[:2]
        maps = resize_nearest(knowledge_maps.maps_for(sample.id) >= 0.5, height, width)
        for channel, organ in enumerate(knowledge_maps.organs):
            if organ in sample.masks:
                scores[organ].append(dice(maps[channel], sample.masks[organ]))
    return scores


def dice_report(knowledge_maps: KnowledgeMaps, dataset: Iterable[_MaskedSample], skip_missing: bool = False
                ) -> dict[str, float]:
    """Mean Dice per organ of knowledge maps against a dataset's ground-truth masks.

    Args:
        knowledge_maps: from :func:`load_knowledge_maps`.
        dataset: samples with ``id``, ``image`` and ``masks`` (e.g. a
            ``spanlib.data.FolderDataset``).
        skip_missing: leave out samples without maps instead of raising.

    Returns:
        organ -> mean Dice (NaN for an organ no sample has a mask for).
    """
    scores = dice_scores(knowledge_maps, dataset, skip_missing)
    return {organ: (float(np.mean(values)) if values else math.nan) for organ, values in scores.items()}

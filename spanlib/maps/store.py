"""The on-disk format of knowledge maps, and its loader.

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
Files are written atomically (:func:`spanlib.core.checkpoint.write_atomic`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.core.checkpoint import write_atomic
from spanlib.core.mapspec import MAP_KINDS

__all__ = [
    "MANIFEST",
    "MAPS_DIR",
    "TEMPLATE",
    "KnowledgeMaps",
    "MapFileError",
    "content_hash",
    "heuristic_knowledge_maps",
    "index_files",
    "load_knowledge_maps",
    "map_key",
    "params_hash",
    "read_index",
    "read_manifest",
    "read_maps",
    "resize_nearest",
    "save_maps",
]

MANIFEST = "manifest.json"
TEMPLATE = "template.npz"
MAPS_DIR = "maps"


class MapFileError(ValueError):
    """A knowledge-map file that cannot be used: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def resize_nearest(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[..., h, w]`` to ``[..., height, width]`` by nearest neighbour (pixel centres).

    The one resampling of knowledge maps: the loader (what training sees),
    their Dice (:mod:`spanlib.maps.quality`) and the builder all use it.
    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * h / height)``;
    for a whole upsampling factor (64 -> 128 or 256, every preset) that is
    ``floor(i * h / height)``, torch's ``nearest``; an unchanged size is the
    array itself.
    """
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return maps[..., rows[:, None], cols[None, :]]


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

    def maps_at(self, sample_id: str, height: int, width: int) -> np.ndarray:
        """The maps of one image at the image's size (:func:`resize_nearest`): what training and Dice both use.

        Returns:
            float32 ``[n_organs, height, width]`` in [0, 1].
        """
        return np.ascontiguousarray(resize_nearest(self.maps_for(sample_id), height, width), dtype=np.float32)


def heuristic_knowledge_maps(organs: tuple[str, ...], height: int, width: int) -> KnowledgeMaps:
    """The triangular kind drawn in memory at ``height x width``, for a spec with no folder (a bare ``pretrain``).

    The same maps the builder writes for images of that size; the book's runs
    always read the built folder (:func:`spanlib.core.mapspec.maps_folder`).
    """
    from spanlib.maps.heuristic import heuristic_maps

    template = heuristic_maps(height, width, organs).astype(np.float32)
    return KnowledgeMaps(root=Path(), kind="triangular", organs=tuple(organs), size=max(height, width),
                         manifest={"kind": "triangular", "organs": list(organs), "in_memory": True}, template=template)


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

"""Arrays for the BYOL chapter: one split of a folder dataset at one size, with its SLIC priors, cached.

Training reads the same few hundred small images every epoch, so a split is
read once (:class:`spanlib.data.FolderDataset`, resized), stacked into
arrays and kept in an ``.npz`` beside the runs; SLIC priors are cached the
same way, keyed by their settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spanlib.byol.masks import slic_priors

__all__ = ["ByolData", "load_split", "load_priors"]


@dataclass(frozen=True)
class ByolData:
    """One split as arrays.

    Attributes:
        ids: sample ids ``[N]``.
        images: float32 ``[N, 1, S, S]`` in [0, 1].
        masks: bool ``[N, M, S, S]`` ground-truth masks (organs), in ``mask_names`` order.
        labels: float ``[N, L]`` (0, 1, nan = unknown), in ``label_names`` order.
        mask_names: names of the mask channels.
        label_names: names of the label columns.
        key: identifies the data (folder, split, size, count) in run caches.
    """

    ids: tuple[str, ...]
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    mask_names: tuple[str, ...]
    label_names: tuple[str, ...]
    key: str

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int | None) -> ByolData:
        """The first ``n`` samples (all for ``None``)."""
        if n is None or n >= len(self):
            return self
        return ByolData(self.ids[:n], self.images[:n], self.masks[:n], self.labels[:n], self.mask_names,
                        self.label_names, f"{self.key}[:{n}]")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_split(root: str | Path, split: str, size: int, cache_dir: str | Path | None = None,
               reader: str = "folder") -> ByolData:
    """A split of a dataset, resized to ``size`` (masks nearest), as arrays.

    Args:
        root: dataset folder (e.g. ``spanlib.book.runs.data_dir(preset, "chest")``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: side in pixels.
        cache_dir: where to keep the arrays (``None``: no cache).
        reader: how to read ``root`` (any reader of :mod:`spanlib.data`; default the folder format).

    Raises:
        ValueError: the split is empty.
    """
    from spanlib.data import open_dataset
    from spanlib.eval.sets import split_of

    root = Path(root).resolve()
    meta_path = root / "meta.json"
    stamp = meta_path.read_text() if meta_path.is_file() else ""
    key = f"{root}|{split}|{size}|{_digest(stamp)}" + ("" if reader == "folder" else f"|{reader}")
    cache = Path(cache_dir) / f"data-{split}-{size}-{_digest(key)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            return ByolData(tuple(info["ids"]), z["images"], z["masks"], z["labels"], tuple(info["mask_names"]),
                            tuple(info["label_names"]), info["key"])
    dataset = split_of(open_dataset(reader, root, size=size), split)
    if len(dataset) == 0:
        raise ValueError(f"{root}: split {split!r} is empty")
    samples = [dataset[i] for i in range(len(dataset))]
    mask_names = tuple(dataset.mask_names)
    label_names = tuple(dataset.label_names)
    images = np.stack([s.image if s.image.ndim == 2 else s.image.mean(-1) for s in samples])[:, None].astype(np.float32)
    masks = np.stack([np.stack([s.masks[m] for m in mask_names]) if mask_names else np.zeros((0, size, size), bool)
                      for s in samples])
    labels = np.array([[s.labels[n] for n in label_names] for s in samples], dtype=np.float64).reshape(len(samples), -1)
    key = f"{key}|{len(samples)}"
    data = ByolData(tuple(s.id for s in samples), images, masks, labels, mask_names, label_names, key)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        info = json.dumps({"ids": list(data.ids), "mask_names": list(mask_names), "label_names": list(label_names),
                           "key": key})
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, masks=masks, labels=labels, info=np.array(info))
        tmp.replace(cache)
    return data


def load_priors(data: ByolData, n_segments: int, compactness: float, cache_dir: str | Path | None = None) -> np.ndarray:
    """SLIC priors ``[N, S, S]`` (int32, ``0 .. n-1`` per image) of a split, cached by their settings."""
    key = f"{data.key}|slic|{n_segments}|{compactness}"
    cache = Path(cache_dir) / f"slic-{n_segments}-{_digest(key)}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    priors = slic_priors(data.images[:, 0], n_segments, compactness)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, priors)
        tmp.replace(cache)
    return priors

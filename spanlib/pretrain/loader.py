"""Pretraining data: samples + knowledge maps -> views, in a reproducible order.

Every sample's views are drawn from a generator seeded by ``(seed, epoch,
index)`` and the order of an epoch by ``(seed, epoch)``, so a run resumed in
the middle of an epoch sees exactly the batches an uninterrupted run would,
whatever the number of loader workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from spanlib.core.mapspec import ORACLE, MapSpec
from spanlib.maps.store import KnowledgeMaps, heuristic_knowledge_maps, load_knowledge_maps
from spanlib.pretrain.augment import ViewMaker

MapSource = Callable[[object], np.ndarray]


def knowledge_map_source(spec: MapSpec | str | Path | None, organs: Sequence[str]) -> MapSource | None:
    """Where a sample's knowledge maps come from.

    Args:
        spec: a :class:`~spanlib.core.mapspec.MapSpec` (a string or a folder
            is read by :meth:`~spanlib.core.mapspec.MapSpec.from_value`), or
            ``None`` (no maps). A built kind with a ``location`` is read from
            that folder through :mod:`spanlib.maps.store`; ``masks`` gives the
            sample's own ground-truth masks (an oracle, for tests and upper
            bounds); ``triangular`` with no folder (a bare ``pretrain`` outside
            the book) is drawn in memory by the same store at each image's size.
        organs: the map channels, in the order of the assigned heads.

    Returns:
        A function ``sample -> float32 [len(organs), H, W]`` at the image's size
        (:meth:`~spanlib.maps.store.KnowledgeMaps.maps_at`).

    Raises:
        FileNotFoundError: a folder that does not exist.
        ValueError: a built kind other than triangular with no folder, or a
            folder without maps for every organ.
    """
    organs = tuple(organs)
    if not organs or spec is None:
        return None
    spec = MapSpec.from_value(spec)
    if spec.kind == ORACLE:

        def from_masks(s) -> np.ndarray:
            missing = [o for o in organs if o not in s.masks]
            if missing:
                raise KeyError(f"sample {s.id}: no ground-truth mask for {missing}")
            return np.stack([s.masks[o] for o in organs]).astype(np.float32)

        return from_masks
    if spec.location is None:
        if spec.kind != "triangular":
            raise ValueError(f"knowledge maps of kind {spec.kind!r} name no folder: resolve them with "
                             "spanlib.core.mapspec.resolved (the book's runs do) or give knowledge_maps.location")
        drawn: dict[tuple[int, int], KnowledgeMaps] = {}

        def heuristic(s) -> np.ndarray:
            height, width = s.image.shape[:2]
            if (height, width) not in drawn:
                drawn[height, width] = heuristic_knowledge_maps(organs, height, width)
            return drawn[height, width].maps_at(s.id, height, width)

        return heuristic
    path = Path(spec.location)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: knowledge-map directory not found (build it with `python -m spanlib templates build`)")
    store = load_knowledge_maps(path)
    if store.kind != spec.kind:
        raise ValueError(f"{path}: holds {store.kind} maps, the run asks for {spec.kind}")
    index = [store.organs.index(o) if o in store.organs else -1 for o in organs]
    if -1 in index:
        raise ValueError(f"{path}: maps for {list(store.organs)}, the run assigns heads to {list(organs)}")

    def from_store(s) -> np.ndarray:
        return store.maps_at(s.id, *s.image.shape[:2])[index]

    return from_store


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and platforms."""
    digest = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


IN_MEMORY_LIMIT = 4096
"""Sets up to this many samples are read once and kept in memory; larger ones are read lazily."""


def _as_uint8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))


class ViewDataset(Dataset):
    """Views of samples; indexed by ``(epoch, index)`` pairs.

    A small set (up to :data:`IN_MEMORY_LIMIT` samples) is read once and kept
    in memory as ``uint8``; a large one (CheXpert's 190,000 films) is read
    lazily, one sample when a batch asks for it, so memory stays flat as the
    set grows and each DDP rank reads only the samples of its shard. Both
    ways give the same views for the same seed (images and maps pass through
    the same ``uint8`` rounding).

    A film that does not load in a set read into memory (a corrupt file, a
    mask of the wrong size) is left out and named in :attr:`skipped`, with
    what the reader left out while indexing, by the rules of
    :func:`spanlib.data.scan.scan`; a lazily read set raises on it, naming the file.

    Args:
        samples: any sequence of :class:`spanlib.data.Sample` (a lazily reading
            dataset such as :class:`spanlib.data.FolderDataset` for large sets).
        views: the view maker.
        maps: knowledge-map source, or ``None``.
        seed: the run's seed.
        in_memory: keep every sample in memory (default: when the set is small).
    """

    def __init__(
        self, samples: Sequence, views: ViewMaker, maps: MapSource | None, seed: int, in_memory: bool | None = None
    ):
        self.views = views
        self.seed = seed
        self.samples = samples
        self.map_source = maps
        self.in_memory = len(samples) <= IN_MEMORY_LIMIT if in_memory is None else bool(in_memory)
        self.ids: list[str] = []
        self.images: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []
        self.skipped: list = list(getattr(samples, "index_problems", []))
        if self.in_memory:
            for s in self._readable(samples):
                image, maps_ = self._encode(s)
                self.ids.append(s.id)
                self.images.append(image)
                self.maps.append(maps_)
        else:  # a reader's index knows the ids without opening an image
            self.ids = list(samples.ids) if hasattr(samples, "ids") else [s.id for s in samples]
        if not self.ids:
            raise ValueError("no samples to pretrain on")

    def _readable(self, samples: Sequence) -> Iterator:
        """The samples that load; a bad file (as a scan names it) is recorded in :attr:`skipped` and left out."""
        try_load = getattr(samples, "try_load", None)
        for index in range(len(samples)):
            if try_load is None:
                yield samples[index]
                continue
            sample, problems = try_load(index)
            if sample is None:
                self.skipped += problems
            else:
                yield sample

    def _encode(self, s) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001 - a Sample
        m = self.map_source(s) if self.map_source is not None else np.zeros((0, *s.image.shape[:2]), np.float32)
        if m.shape[-2:] != s.image.shape[:2]:
            raise ValueError(f"sample {s.id}: knowledge maps {m.shape[-2:]} differ from image {s.image.shape[:2]}")
        return _as_uint8(s.image), _as_uint8(m)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if self.in_memory:
            image8, maps8 = self.images[index], self.maps[index]
        else:
            image8, maps8 = self._encode(self.samples[index])
        image = image8.float() / 255
        if image.ndim == 3:
            image = image.permute(2, 0, 1)
        maps = maps8.float() / 255
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # small tensors: a second thread only adds overhead
            try:
                out = self.views(image, maps)
            finally:
                torch.set_num_threads(threads)
        out["index"] = torch.tensor(index)
        return out


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Seeded per-epoch permutation, split over ranks, batched, resumable.

    Each rank takes every ``world``-th index of the permutation, so ranks see
    disjoint samples; incomplete last batches are dropped (as DINO does).

    Args:
        n: dataset size.
        batch_size: per rank.
        seed: the run's seed.
        rank: this process's rank.
        world: number of processes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} on each of {world} processes")

    def batches_per_epoch(self) -> int:
        return (self.n // self.world) // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.n, generator=g)[self.rank :: self.world].tolist()
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, i) for i in chunk]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-sample views: ``global -> [2, B, C, S, S]`` (view-major)."""
    out = {key: torch.stack([it[key] for it in items], dim=1) for key in items[0] if key != "index"}
    out["index"] = torch.stack([it["index"] for it in items])
    return out

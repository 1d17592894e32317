"""Frozen features and CLS attention of a set of films, on the run's device, streamed to a disk cache.

:func:`extract` runs the backbone over the evaluation views in batches: on
CUDA where present (bfloat16 autocast, the next batch read by loader workers
while the GPU computes), else on the CPU in float32, exactly as before.
:func:`cached_extract` writes what it extracts to ``run/eval/cache-<key>/``
chunk by chunk (``features.npy`` and ``attention.npy`` filled in place, a
``progress.json`` of the chunks done), so that CheXpert's 190,000 films never
sit in memory at once, a killed extraction resumes at its last chunk, and
the result is read back memory-mapped: a linear probe then holds only the
features it uses (190,000 x 384 float32: 0.3 GB).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spanlib.core.checkpoint import write_json
from spanlib.core.configs import Config
from spanlib.core.device import autocast, resolve_device
from spanlib.data.transforms import EvaluationView
from spanlib.model.export import load_backbone
from spanlib.model.vit import AttentionProbe, patch_grid

CHUNK = 4096
"""Films per chunk of the disk cache (a chunk's features and attention are the most held in memory)."""

Sink = Callable[[int, list[str], torch.Tensor, torch.Tensor], None]
"""Receives ``(first index, ids, features [b, D], attention [b, heads, gh, gw])`` of each batch, on the CPU."""


def dataset_key(dataset: Sequence, step: int, n_last_blocks: int, img_size: int | None = None) -> str:
    """What names a cache entry: the dataset's root and ids, the checkpoint's step, the blocks and the input size."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(getattr(dataset, "root", "")).encode())
    h.update("|".join(s for s in getattr(dataset, "ids", [])).encode())
    h.update(f"{len(dataset)}-{step}-{n_last_blocks}".encode())
    if img_size is not None:
        h.update(f"-size{img_size}".encode())
    return h.hexdigest()


class _Views(Dataset):
    """The evaluation view of films ``start`` to ``stop`` of a set (for loader workers)."""

    def __init__(self, samples: Sequence, view: EvaluationView, start: int, stop: int):
        self.samples, self.view, self.start, self.stop = samples, view, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        sample = self.samples[self.start + i]
        return sample.id, self.view.of_array(sample.image)


def _batches(samples: Sequence, view: EvaluationView, start: int, stop: int, batch_size: int, workers: int
             ) -> Iterator[tuple[list[str], torch.Tensor]]:
    """``(ids, images)`` batches of films ``start`` to ``stop``; read in this process when ``workers`` is 0."""
    if workers == 0:
        for first in range(start, stop, batch_size):
            chunk = [samples[i] for i in range(first, min(first + batch_size, stop))]
            yield [s.id for s in chunk], view.stack(chunk)
        return
    loader = DataLoader(_Views(samples, view, start, stop), batch_size=batch_size, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), collate_fn=_collate)
    yield from loader


def _collate(items: list[tuple[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    return [i for i, _ in items], torch.stack([x for _, x in items])


@torch.no_grad()
def extract(model: torch.nn.Module, cfg: Config, samples: Sequence, batch_size: int = 64, n_last_blocks: int = 1,
            img_size: int | None = None, device: str | torch.device | None = "auto", start: int = 0,
            stop: int | None = None, sink: Sink | None = None, workers: int | None = None) -> dict[str, Any] | None:
    """Frozen features and CLS attention of samples ``start`` to ``stop`` (evaluation view).

    Args:
        model: the backbone (moved to ``device``).
        cfg: the run's configuration (image size, normalisation).
        samples: a sequence of :class:`spanlib.data.Sample`.
        batch_size: images per forward pass.
        n_last_blocks: concatenate the normed CLS token of this many last
            blocks (DINO's linear evaluation uses 4 for ViT-S).
        img_size: input side (default: the run's); the ViT takes other sizes
            (the paper's appendix scores attention at 480 px).
        device: ``auto`` (CUDA where present, with bfloat16 autocast), or a device.
        start, stop: the films to extract (default: all).
        sink: receives each batch instead of the result being gathered.
        workers: loader processes reading films (default: 4 on CUDA, none on the CPU).

    Returns:
        ``{"ids", "features" [N, D * n], "attention" [N, heads, gh, gw]}`` (float32, CPU), or None with a ``sink``.
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    amp = torch.bfloat16 if device.type == "cuda" else None
    workers = (4 if device.type == "cuda" else 0) if workers is None else workers
    view = EvaluationView(cfg.views, img_size or cfg.model.img_size, cfg.model.in_chans)
    captured: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in model.blocks[-n_last_blocks:]]
    ids, feats, attns = [], [], []
    first = start
    try:
        for batch_ids, x in _batches(samples, view, start, len(samples) if stop is None else stop, batch_size,
                                     workers):
            x = x.to(device, non_blocking=True)
            captured.clear()
            with autocast(device.type, amp), AttentionProbe(model) as probe:
                model(x)
                attention = probe.attention(patch_grid(model, *x.shape[-2:]))
                features = torch.cat([model.norm(o)[:, 0] for o in captured], dim=-1)
            attention, features = attention.float().cpu(), features.float().cpu()
            if sink is not None:
                sink(first, batch_ids, features, attention)
            else:
                ids.extend(batch_ids)
                feats.append(features)
                attns.append(attention)
            first += len(batch_ids)
    finally:
        for h in hooks:
            h.remove()
    if sink is not None:
        return None
    return {"ids": ids, "features": torch.cat(feats), "attention": torch.cat(attns)}


class DiskCache:
    """One extraction's folder: ``features.npy`` and ``attention.npy`` filled chunk by chunk, ``ids.json``,
    ``progress.json`` (chunks done). Complete once every chunk is done; read back memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def done_chunks(self) -> set[int]:
        try:
            return set(json.loads((self.folder / "progress.json").read_text())["done"])
        except (OSError, ValueError, KeyError):
            return set()

    def fits(self, n: int, chunks: int) -> bool:
        """Whether the folder holds a (partial) extraction of ``n`` films in ``chunks`` chunks to resume."""
        try:
            progress = json.loads((self.folder / "progress.json").read_text())
            rows = np.load(self.folder / "features.npy", mmap_mode="r").shape[0]
        except (OSError, ValueError):
            return False
        return progress.get("chunks") == chunks and rows == n

    def complete(self) -> bool:
        try:
            progress = json.loads((self.folder / "progress.json").read_text())
        except (OSError, ValueError):
            return False
        return len(progress["done"]) == progress["chunks"]

    def allocate(self, n: int, dim: int, attention_shape: tuple[int, ...], ids: list[str], chunks: int) -> None:
        """Create the arrays (on the first chunk of a new extraction)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(self.folder / "features.npy", "w+", np.float32, (n, dim)).flush()
        np.lib.format.open_memmap(self.folder / "attention.npy", "w+", np.float32, (n, *attention_shape)).flush()
        write_json(self.folder / "ids.json", ids, indent=0)
        write_json(self.folder / "progress.json", {"chunks": chunks, "done": []})

    def write(self, start: int, features: torch.Tensor, attention: torch.Tensor) -> None:
        for name, values in (("features", features), ("attention", attention)):
            array = np.load(self.folder / f"{name}.npy", mmap_mode="r+")
            array[start:start + len(values)] = values.numpy()
            array.flush()
            del array

    def mark_done(self, chunk: int, chunks: int) -> None:
        write_json(self.folder / "progress.json", {"chunks": chunks, "done": sorted(self.done_chunks() | {chunk})})

    def read(self) -> dict[str, Any]:
        """The cached result, memory-mapped (copy-on-write: pages are read from disk when used)."""
        return {"ids": json.loads((self.folder / "ids.json").read_text()),
                "features": torch.from_numpy(np.load(self.folder / "features.npy", mmap_mode="c")),
                "attention": torch.from_numpy(np.load(self.folder / "attention.npy", mmap_mode="c"))}


def cached_extract(run: str | Path, samples: Sequence, n_last_blocks: int = 1, img_size: int | None = None,
                   backbone: tuple[Config, torch.nn.Module, dict[str, Any]] | None = None, chunk: int = CHUNK,
                   device: str | torch.device | None = None, batch_size: int = 64) -> dict[str, Any]:
    """:func:`extract` for a run, streamed chunk by chunk into ``run/eval/cache-<key>/`` and read back from there.

    A killed extraction resumes at its first unfinished chunk; a cache of
    another shape (a corrupt or foreign folder) is built again.

    Args:
        backbone: the run's :func:`~spanlib.model.export.load_backbone`, when
            the caller has it already (else it is loaded here).
        chunk: films per chunk.
        device, batch_size: as :func:`extract` takes them (device None: the run's own ``run.device``,
            ``auto`` unless the run named one).
    """
    cfg, model, info = backbone or load_backbone(run)
    device = cfg.run.device if device is None else device
    size = None if img_size in (None, cfg.model.img_size) else int(img_size)
    cache = DiskCache(Path(run) / "eval" / f"cache-{dataset_key(samples, info['step'], n_last_blocks, size)}")
    if cache.complete():
        return cache.read()
    n = len(samples)
    chunks = max(1, -(-n // chunk))
    done = cache.done_chunks() if cache.fits(n, chunks) else set()
    for c in range(chunks):
        if c in done:
            continue
        part = extract(model, cfg, samples, batch_size, n_last_blocks, size, device, c * chunk, min(n, (c + 1) * chunk))
        if not done:  # the first chunk of a new extraction: the arrays take its shapes
            if cache.folder.exists():
                shutil.rmtree(cache.folder)
            ids = [str(i) for i in getattr(samples, "ids", None) or [samples[i].id for i in range(n)]]
            cache.allocate(n, part["features"].shape[1], tuple(part["attention"].shape[1:]), ids, chunks)
        cache.write(c * chunk, part["features"], part["attention"])
        cache.mark_done(c, chunks)
        done.add(c)
    return cache.read()

"""The worker pool of the deformable map builder.

Work is split into batches run by one single-threaded worker process per
core (:func:`run_tasks`); each worker registers the exemplar onto its batch
(:mod:`spanlib.maps.registration` or :mod:`spanlib.maps.registration_sitk`)
and writes one ``maps/<key>.npz`` per image; an entry already built with the
same key is only checked, and a corrupt one is rebuilt.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from spanlib.maps.store import MAPS_DIR, MapFileError, content_hash, map_key, read_maps, save_maps


@dataclass(frozen=True)
class Job:
    """What a worker needs: the dataset, the exemplar, and the settings."""

    data: str
    out: str
    organs: tuple[str, ...]
    size: int
    method: str
    exemplar_image: np.ndarray
    exemplar_masks: np.ndarray
    exemplar_hash: str
    fallback_maps: np.ndarray
    params_digest: str
    config: Any
    reader: str = "folder"
    reader_options: dict[str, Any] = field(default_factory=dict)


def grey(image: np.ndarray) -> np.ndarray:
    """A grey float32 image: colour channels averaged."""
    image = np.asarray(image, dtype=np.float32)
    return image.mean(axis=-1) if image.ndim == 3 else image


def run_tasks(job: Job, tasks: list[list[tuple[int, str]]], workers: int, bar: Any) -> list[dict[str, Any]]:
    """Run every task (a batch of ``(index, sample id)``) and return their records, in task order.

    In this process when ``workers`` is 1 or there is one task; otherwise in a
    pool of ``workers`` single-threaded processes. ``bar`` (a tqdm bar) is
    advanced by the samples of each finished task.
    """
    records: list[dict[str, Any]] = []
    if workers == 1 or len(tasks) <= 1:
        _init_worker(job, limit_threads=False)
        try:
            for task in tasks:
                records += _run_task(task)
                bar.update(len(task))
        finally:
            _WORKER.clear()
    else:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["spanlib.maps.registration", "spanlib.data"])
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_init_worker,
                                 initargs=(job,)) as pool:
            for done in pool.map(_run_task, tasks):
                records += done
                bar.update(len(done))
    return records


_WORKER: dict[str, Any] = {}


def _init_worker(job: Job, limit_threads: bool = True) -> None:
    """Per-process state; a pool worker runs single-threaded (one worker per core)."""
    from spanlib.data import open_dataset

    if limit_threads:
        import SimpleITK as sitk
        import torch

        torch.set_num_threads(1)
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    _WORKER.clear()
    _WORKER.update(job=job, dataset=open_dataset(job.reader, job.data, **job.reader_options))


def _run_task(task: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Build the maps of one batch of samples; cached ones are only checked."""
    from spanlib.maps.registration import register_batch
    from spanlib.maps.registration_sitk import register_pair_sitk

    job: Job = _WORKER["job"]
    dataset = _WORKER["dataset"]
    maps_dir = Path(job.out) / MAPS_DIR
    records: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], np.ndarray]] = []
    for index, sample_id in task:
        try:
            sample = dataset[index]
            if sample.id != sample_id:
                raise ValueError(f"dataset order changed: expected {sample_id!r} at {index}, found {sample.id!r}")
            image = grey(sample.image)
        except Exception as error:  # noqa: BLE001 - an unreadable sample is recorded, the batch goes on
            records.append({"id": sample_id, "key": None, "status": "error", "method": None,
                            "reason": f"{type(error).__name__}: {error}", "quality": {}})
            continue
        key = map_key(content_hash(image), job.exemplar_hash, job.params_digest)
        path = maps_dir / f"{key}.npz"
        if path.is_file():
            try:
                _, info = read_maps(path, len(job.organs), job.size)
                records.append({"id": sample_id, "key": key, "status": "cached", "method": info.get("method"),
                                "reason": info.get("reason", ""), "quality": info.get("quality", {})})
                continue
            except MapFileError as error:
                rebuilt = f"rebuilt corrupt entry ({error.problem})"
        else:
            rebuilt = ""
        pending.append(({"id": sample_id, "key": key, "status": "built", "rebuilt": rebuilt}, image))
    if pending:
        images = [image for _, image in pending]
        if job.method == "torch":
            results = register_batch(images, job.exemplar_image, job.exemplar_masks, job.fallback_maps, job.config)
        else:
            results = [register_pair_sitk(im, job.exemplar_image, job.exemplar_masks, job.fallback_maps, job.config)
                       for im in images]
        for (record, _), result in zip(pending, results):
            record.update(method=result.method, reason=result.reason, quality=result.quality)
            info = {"id": record["id"], "method": result.method, "reason": result.reason, "quality": result.quality}
            save_maps(maps_dir / f"{record['key']}.npz", result.maps.astype(bool), info)
            if not record["rebuilt"]:
                record.pop("rebuilt")
            records.append(record)
    return records


# --------------------------------------------------------------------------- shards


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` -> ``(0, 1)``.

    Raises:
        ValueError: malformed text.
    """
    if text is None:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from error
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def shard_ids(ids: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """Every n-th of the sorted ids, starting at i: shards partition the ids."""
    index, count = shard
    return sorted(ids)[index::count]

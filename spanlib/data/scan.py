"""Checking a whole dataset and reporting every bad file at once.

Loading a sample stops at its first bad file; a scan instead checks every
file of every sample (missing file, unreadable or truncated image, mask size
different from its image, empty mask) and returns the full list, so a broken
copy of a dataset is fixed in one pass rather than one error at a time.
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
        Every problem found, in sample order (empty when all is well).
    """
    problems: list[Problem] = []
    for index in tqdm(range(len(dataset)), desc="scan", unit="sample", disable=not progress):
        problems += dataset.check(index)
    return problems


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

"""Which images an evaluation trains on, selects on and tests on, never choosing on the test split.

A set is named by ``SPLIT_OR_DIR``: a split of the evaluated dataset
(``train``, ``val``, ``test``), another dataset folder read with the same
reader, or, for readers that index a CSV (CheXpert), a CSV file name in the
same folder (``valid.csv``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from spanlib.data import SPLITS, open_dataset


class SelectionError(ValueError):
    """An evaluation would have to choose something on its test split: it refuses instead."""


def split_of(dataset: Any, split: str) -> Any:
    """The records of one split of any :mod:`spanlib.data` reader, same reader."""
    sub = copy.copy(dataset)
    sub.records = [r for r in dataset.records if r.split == split]
    sub.ids = [r.id for r in sub.records]
    return sub


def named_set(spec: str, whole: Any, reader: str, data: Path, options: dict[str, Any]) -> tuple[Any, str]:
    """The set named by ``spec`` (a split, a folder or a CSV name) and how it was found, in words."""
    if spec in SPLITS:
        return split_of(whole, spec), f"split {spec!r} of {data}"
    if spec.lower().endswith(".csv") and not Path(spec).is_dir():
        return open_dataset(reader, data, **{**options, "csv": spec}), f"{spec} in {data}"
    folder = Path(spec)
    if not folder.is_dir():
        raise SelectionError(f"{spec}: neither a split ({', '.join(SPLITS)}), a dataset folder nor a CSV name")
    return open_dataset(reader, folder, **options), f"{folder}"


def same_images(a: Any, b: Any) -> bool:
    """Whether two sets share an image file."""
    return bool({str(r.image) for r in a.records} & {str(r.image) for r in b.records})


def test_set(whole: Any, data: Path, test_on: str | None, reader: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The test set: ``test_on`` when named, else the ``test`` split, else (no split at all) every image."""
    if test_on:
        return named_set(test_on, whole, reader, data, options)
    test = split_of(whole, "test")
    if len(test):
        return test, f"split 'test' of {data}"
    if reader == "chexpert" and (Path(data) / "valid.csv").is_file():
        return named_set("valid.csv", whole, reader, data, options)
    if len({r.split for r in whole.records}) == 1:
        return whole, f"every image of {data} (it has no test split)"
    raise SelectionError(f"{data}: no 'test' split; name the test set with --test-on SPLIT_OR_DIR")


def training_set(whole: Any, data: Path, train_on: str | None, reader: str, options: dict[str, Any], test: Any,
                 test_how: str) -> tuple[Any, str]:
    """The set a probe is trained on: ``train_on`` when named, else the ``train`` split; never one sharing test images.

    Raises:
        SelectionError: the training set shares images with the test set.
    """
    if train_on:
        train, how = named_set(train_on, whole, reader, data, options)
    else:
        train, how = split_of(whole, "train"), f"split 'train' of {data}"
    if same_images(train, test):
        raise SelectionError(f"{how}: the probe's training set shares images with the test set ({test_how})")
    return train, how


def selection_set(whole: Any, test: Any, data: Path, select_on: str | None, reader: str,
                  options: dict[str, Any]) -> tuple[Any, str]:
    """The set a baseline's head is chosen on: ``select_on``, else the ``val`` split; never the test set.

    Raises:
        SelectionError: no validation split and none named, or a named set that shares images with the test set.
    """
    if select_on:
        chosen, how = named_set(select_on, whole, reader, data, options)
    else:
        chosen, how = split_of(whole, "val"), f"split 'val' of {data}"
        if not len(chosen):
            raise SelectionError(
                f"{data}: no validation split to choose the baseline's head on; name one with "
                "--select-on SPLIT_OR_DIR (e.g. another annotated set), never the test split"
            )
    if not len(chosen):
        raise SelectionError(f"{how}: the selection set is empty")
    if same_images(chosen, test):
        raise SelectionError(f"{how}: the selection set shares images with the test set; choose another")
    return chosen, how

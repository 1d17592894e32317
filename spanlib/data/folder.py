"""The folder format: how generated data is stored and how a user's own data can be arranged.

Layout::

    root/meta.json              kind, mask_names, label_names, source, synthetic,
                                description (+ generator, seed, preset when generated)
    root/samples.csv            id, split, then one column per label (1, 0 or empty = unknown)
    root/images/{id}.png        8-bit or 16-bit grey PNG (8-bit RGB also accepted)
    root/masks/{name}/{id}.png  0/255 PNG, same size as the image, one folder per mask name

:class:`FolderDataset` reads it lazily; :func:`write_folder_dataset` writes
it, byte-for-byte reproducibly (``meta.json`` is written last and marks a
complete dataset).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.data.base import Record, RecordDataset
from spanlib.data.imageio import read_image, write_png
from spanlib.data.sample import SPLITS, DataError, Problem, Sample

FORMAT = "spanlib-folder/1"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_meta(root: Path) -> dict[str, Any]:
    """Read and check ``root/meta.json``.

    Raises:
        DataError: missing or malformed file, or missing keys.
    """
    path = root / "meta.json"
    if not path.is_file():
        raise DataError(path, "missing file (not a dataset in the folder format?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise DataError(path, "must hold a JSON object")
    missing = [key for key in ("mask_names", "label_names") if not isinstance(meta.get(key), list)]
    if missing:
        raise DataError(path, f"missing list entries: {', '.join(missing)}")
    return meta


def parse_label(text: str) -> float:
    """A label cell: empty -> nan, otherwise a number that must be 0 or 1."""
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    value = float(text)
    if value not in (0.0, 1.0):
        raise ValueError(f"label must be 0, 1 or empty, got {text!r}")
    return value


def label_cell(value: float) -> str:
    """How a label is written to ``samples.csv``: ``1``, ``0`` or empty."""
    return "" if math.isnan(value) else str(int(value))


def read_csv_rows(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV file, checking that the required columns exist.

    Raises:
        DataError: missing file, unreadable file, or missing columns.
    """
    if not path.is_file():
        raise DataError(path, "missing file")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [name for name in required if name not in columns]
            if missing:
                raise DataError(path, f"CSV lacks expected columns: {', '.join(missing)} (found: {', '.join(columns)})")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(path, f"unreadable CSV ({error})") from error


class FolderDataset(RecordDataset):
    """A dataset in the folder format, read lazily.

    Args:
        root: the dataset folder.
        split: keep only the rows of this split (``None`` keeps all).
        size: resize every sample to this size (int = square); masks use
            nearest neighbour.

    A bad row of ``samples.csv`` (an unsafe or repeated id, an unknown split,
    a bad label) is named in ``index_problems`` and skipped; the rest loads.

    Raises:
        DataError: missing or malformed ``meta.json`` or ``samples.csv``, or no good row.
    """

    reader_name = "folder"

    def __init__(self, root: str | Path, split: str | None = None, size: int | tuple[int, int] | None = None) -> None:
        root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        meta = read_meta(root)
        mask_names = tuple(str(name) for name in meta["mask_names"])
        label_names = tuple(str(name) for name in meta["label_names"])
        csv_path = root / "samples.csv"
        rows = read_csv_rows(csv_path, ("id", "split", *label_names))
        records: list[Record] = []
        bad: list[str] = []
        seen: set[str] = set()
        for line, row in enumerate(rows, start=2):
            sample_id, row_split = row["id"].strip(), row["split"].strip()
            if not _SAFE_ID.match(sample_id) or sample_id in seen:
                bad.append(f"line {line}: bad or duplicate id {sample_id!r}")
                continue
            seen.add(sample_id)
            if row_split not in SPLITS:
                bad.append(f"line {line}: split {row_split!r} not in {SPLITS}")
                continue
            try:
                labels = {name: parse_label(row[name] or "") for name in label_names}
            except ValueError as error:
                bad.append(f"line {line}: {error}")
                continue
            if split is not None and row_split != split:
                continue
            records.append(
                Record(
                    id=sample_id,
                    image=root / "images" / f"{sample_id}.png",
                    masks={name: root / "masks" / name / f"{sample_id}.png" for name in mask_names},
                    labels=labels,
                    split=row_split,
                )
            )
        if not records and bad:
            shown = "; ".join(bad[:20]) + (f"; ... ({len(bad)} bad rows)" if len(bad) > 20 else "")
            raise DataError(csv_path, f"no good row: {shown}")
        super().__init__(root, records, mask_names, label_names, meta, size)
        self.index_problems = [Problem(str(csv_path), f"{problem} (row skipped)") for problem in bad]
        self.split = split

    def read_image_file(self, path: Path) -> np.ndarray:
        """Read a grey (or colour) PNG."""
        return read_image(path, grey=False)

    def subset(self, split: str | None) -> FolderDataset:
        """The same dataset restricted to one split (``None``: all rows; films capped at the same side)."""
        sub = FolderDataset(self.root, split=split, size=self.size)
        sub.max_side = self.max_side
        return sub


def check_sample_id(sample_id: str) -> None:
    """Raise :class:`DataError` unless the id is a safe file stem."""
    if not _SAFE_ID.match(sample_id):
        raise DataError(f"sample {sample_id!r}", "id must start with a letter or digit and hold only A-Z a-z 0-9 _ . -")


def write_sample_files(root: Path, sample: Sample, mask_names: tuple[str, ...], bit_depth: int = 8) -> None:
    """Write one sample's image and masks into the folder layout.

    Raises:
        DataError: a broken sample, an unsafe id, a missing or empty mask.
    """
    check_sample_id(sample.id)
    sample.validate()
    if set(sample.masks) != set(mask_names):
        raise DataError(
            f"sample {sample.id!r}", f"has masks {sorted(sample.masks)}, the dataset has {list(mask_names)}"
        )
    for name in mask_names:
        if not sample.masks[name].any():
            raise DataError(f"sample {sample.id!r}", f"mask {name!r} is empty")
    write_png(root / "images" / f"{sample.id}.png", sample.image, bit_depth=bit_depth)
    for name in mask_names:
        write_png(root / "masks" / name / f"{sample.id}.png", sample.masks[name])


def sample_row(sample: Sample, label_names: tuple[str, ...]) -> list[str]:
    """The ``samples.csv`` row of a sample."""
    return [sample.id, sample.split, *(label_cell(sample.labels.get(name, math.nan)) for name in label_names)]


def write_index(root: Path, rows: list[list[str]], meta: Mapping[str, Any]) -> Path:
    """Write ``samples.csv`` and then ``meta.json`` (the completion marker).

    Args:
        root: the dataset folder.
        rows: ``[id, split, *labels]`` per sample, in order.
        meta: must hold ``mask_names`` and ``label_names``.

    Returns:
        ``root``.
    """
    label_names = list(meta["label_names"])
    with (root / "samples.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "split", *label_names])
        writer.writerows(rows)
    counts = {split: sum(1 for row in rows if row[1] == split) for split in SPLITS}
    full = {"kind": "folder", "source": "", "synthetic": False, "description": "", **dict(meta)}
    full.update(format=FORMAT, counts=counts, mask_names=list(meta["mask_names"]), label_names=label_names)
    text = json.dumps(full, indent=2, sort_keys=True, allow_nan=False) + "\n"
    (root / "meta.json").write_text(text, encoding="utf-8")
    return root


def write_folder_dataset(
    root: str | Path, samples: Iterable[Sample], meta: Mapping[str, Any], bit_depth: int = 8
) -> Path:
    """Write samples in the folder format.

    Mask and label names come from ``meta`` when it lists them, otherwise
    from the samples (in order of first appearance). A sample lacking a label
    gets an empty (unknown) cell; every sample must carry every mask.

    Args:
        root: destination folder (created).
        samples: the samples, written in order.
        meta: ``kind``, ``source``, ``synthetic``, ``description`` and any
            other JSON-serialisable entries to record in ``meta.json``.
        bit_depth: 8 or 16 bits per grey pixel.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: a broken sample (bad id, shape, values, mask set, empty mask).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mask_names = tuple(meta.get("mask_names", ()))
    label_names = tuple(meta.get("label_names", ()))
    infer_masks, infer_labels = "mask_names" not in meta, "label_names" not in meta
    written: list[Sample] = []
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise DataError(root, f"duplicate sample id {sample.id!r}")
        seen.add(sample.id)
        if infer_masks and not written:
            mask_names = tuple(sample.masks)
        if infer_labels:
            label_names += tuple(name for name in sample.labels if name not in label_names)
        write_sample_files(root, sample, mask_names, bit_depth)
        # keep only what the index needs, not the pixels
        written.append(Sample(id=sample.id, image=sample.image[:0], labels=dict(sample.labels), split=sample.split))
    rows = [sample_row(sample, label_names) for sample in written]
    full = {**dict(meta), "mask_names": list(mask_names), "label_names": list(label_names)}
    return write_index(root, rows, full)

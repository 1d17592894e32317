"""The generic reader (``--reader images``): any folder of films, with masks and labels if there are any.

Layout::

    root/images/<id>.<ext>            PNG, JPEG, TIFF (8 or 16 bit), or DICOM (.dcm); any size
    root/masks/<organ>/<id>.<ext>     optional: one folder per organ or part, same file stem as the image
    root/labels.csv                   optional: an ``id`` column, then one column per finding (1, 0, -1 or empty)
    root/splits.csv                   optional: ``id, split`` with split in train / val / test

Without ``splits.csv`` every image gets a seeded split (by default 80 / 10 /
10 percent, from a hash of the id and the seed, so adding images never moves
the old ones); :meth:`ImagesDataset.write_splits` writes it down beside the
results that used it. A finding marked ``-1`` (uncertain, as CheXpert writes
it) or left empty is unknown (nan).

Images without a mask for every organ folder are left out when masks are
asked for (``require_masks=True``, the default when ``masks/`` exists) and
listed in :attr:`ImagesDataset.skipped`; pretraining on unlabelled films
passes ``require_masks=False``.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.data.base import Record, RecordDataset
from spanlib.data.folder import read_csv_rows
from spanlib.data.imageio import read_image
from spanlib.data.sample import SPLITS, DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
"""File types the generic reader indexes (case-insensitive)."""


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """``stem -> file`` of the image files in a folder; two files with one stem are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in found:
            raise DataError(path, f"two files share the id {path.stem!r} ({found[path.stem].name} and {path.name})")
        found[path.stem] = path
    return found


def seeded_split(sample_id: str, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split of an id without ``splits.csv``: a hash of (seed, id) placed on the train/val/test fractions."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def _finding(text: str, path: Path, line: int, column: str) -> float:
    text = (text or "").strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"line {line}, column {column!r}: {text!r} is not 1, 0, -1 or empty") from None
    if value == -1.0:
        return math.nan
    if value not in (0.0, 1.0):
        raise DataError(path, f"line {line}, column {column!r}: {text!r} is not 1, 0, -1 or empty")
    return value


def read_labels(path: Path, ids: set[str]) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    """Read ``labels.csv``: its finding columns, and ``id -> {finding: value}``.

    Raises:
        DataError: no ``id`` column, a bad value, a duplicate id, or an id with no image.
    """
    rows = read_csv_rows(path, ("id",))
    with path.open(newline="", encoding="utf-8") as handle:
        columns = next(csv.reader(handle), [])
    names = tuple(c for c in columns if c != "id" and c.strip())
    labels: dict[str, dict[str, float]] = {}
    unknown = []
    for line, row in enumerate(rows, start=2):
        sample_id = (row["id"] or "").strip()
        if sample_id in labels:
            raise DataError(path, f"line {line}: id {sample_id!r} appears twice")
        if sample_id not in ids:
            unknown.append(sample_id)
            continue
        labels[sample_id] = {name: _finding(row[name], path, line, name) for name in names}
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(path, f"ids with no file in images/: {shown}")
    return names, labels


def read_splits(path: Path, ids: set[str]) -> dict[str, str]:
    """Read ``splits.csv`` (``id, split``); every image must have a row.

    Raises:
        DataError: missing columns, an unknown split, an id twice, or an image with no row.
    """
    rows = read_csv_rows(path, ("id", "split"))
    splits: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        sample_id, split = (row["id"] or "").strip(), (row["split"] or "").strip()
        if split not in SPLITS:
            raise DataError(path, f"line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if sample_id in splits:
            raise DataError(path, f"line {line}: id {sample_id!r} appears twice")
        splits[sample_id] = split
    missing = sorted(ids - set(splits))
    if missing:
        raise DataError(path, f"{len(missing)} image(s) have no split, e.g. {missing[0]!r}")
    return splits


def read_dicom(path: Path) -> np.ndarray:
    """A DICOM film as float32 in [0, 1]: rescaled, MONOCHROME1 inverted, scaled by its bits stored.

    Raises:
        DataError: pydicom missing, an unreadable file, or no pixel data.
    """
    try:
        import pydicom
    except ImportError as error:  # a dependency of spanlib; say what to install if it is gone
        raise DataError(path, "reading DICOM needs pydicom (pip install pydicom)") from error
    if not path.is_file():
        raise DataError(path, "missing file")
    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array.astype(np.float64)
    except Exception as error:  # pydicom raises many types for broken files
        raise DataError(path, f"unreadable DICOM ({type(error).__name__}: {error})") from error
    if raw.ndim != 2:
        raise DataError(path, f"expected one grey frame, found pixel data of shape {raw.shape}")
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    lo, hi = intercept, intercept + slope * (2**bits - 1)
    values = (raw * slope + intercept - min(lo, hi)) / (abs(hi - lo) or 1.0)
    values = np.clip(values, 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        values = 1.0 - values
    return values.astype(np.float32)


class ImagesDataset(RecordDataset):
    """Any folder of films: ``images/``, optional ``masks/<organ>/``, ``labels.csv``, ``splits.csv``.

    Args:
        root: the folder.
        split: keep only this split (``None`` keeps all).
        require_masks: keep only images with a mask in every organ folder
            (default: whenever ``masks/`` exists); ``False`` reads no masks.
        seed: seed of the split when there is no ``splits.csv``.
        split_fractions: train / val / test fractions of that split.
        size: resize image and masks to this size.

    Raises:
        DataError: no ``images/`` folder or no image in it, a bad CSV, two
            files with one id.
    """

    reader_name = "images"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        require_masks: bool | None = None,
        seed: int = 0,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        size: int | tuple[int, int] | None = None,
    ) -> None:
        root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if not (root / "images").is_dir():
            raise DataError(root / "images", "missing folder (the images reader wants root/images/<id>.<ext>)")
        images = _files_by_stem(root / "images")
        if not images:
            raise DataError(root / "images", f"no image files ({', '.join(IMAGE_SUFFIXES)})")
        mask_dir = root / "masks"
        organs = tuple(sorted(p.name for p in mask_dir.iterdir() if p.is_dir())) if mask_dir.is_dir() else ()
        if require_masks is None:
            require_masks = bool(organs)
        masks = {organ: _files_by_stem(mask_dir / organ) for organ in organs} if require_masks else {}
        ids = set(images)
        label_names, labels = read_labels(root / "labels.csv", ids) if (root / "labels.csv").is_file() else ((), {})
        self.seeded_split = not (root / "splits.csv").is_file()
        self.splits_from = f"seeded (seed {seed}, {split_fractions})" if self.seeded_split else "splits.csv"
        splits = (
            {i: seeded_split(i, seed, split_fractions) for i in images}
            if self.seeded_split
            else read_splits(root / "splits.csv", ids)
        )
        self.skipped: dict[str, str] = {}
        records = []
        for sample_id, path in images.items():
            if require_masks:
                lacking = [organ for organ in organs if sample_id not in masks[organ]]
                if lacking:
                    self.skipped[sample_id] = f"no mask for {', '.join(lacking)}"
                    continue
            if split is not None and splits[sample_id] != split:
                continue
            records.append(
                Record(
                    id=sample_id,
                    image=path,
                    masks={organ: masks[organ][sample_id] for organ in masks},
                    labels=labels.get(sample_id, {}),
                    split=splits[sample_id],
                )
            )
        if not records:
            why = f" ({len(self.skipped)} image(s) lack a mask)" if self.skipped else ""
            raise DataError(root, f"no image left{' in split ' + repr(split) if split else ''}{why}")
        meta = {"kind": "folder", "source": f"images reader at {root.name}", "splits": self.splits_from}
        super().__init__(root, records, tuple(masks), label_names, meta, size)
        self.split = split
        self._options: dict[str, Any] = {
            "require_masks": require_masks, "seed": seed, "split_fractions": split_fractions, "size": size,
        }

    def read_image_file(self, path: Path) -> np.ndarray:
        """PNG / JPEG / TIFF through Pillow (16-bit kept), DICOM through pydicom."""
        if path.suffix.lower() == ".dcm":
            return read_dicom(path)
        return read_image(path, grey=False)

    def subset(self, split: str | None) -> ImagesDataset:
        """The same folder restricted to one split."""
        return ImagesDataset(self.root, split=split, **self._options)

    def write_splits(self, path: str | Path) -> Path:
        """Write the split of every image read (``id, split``) to a CSV, e.g. beside a result."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["id", "split"])
            writer.writerows([r.id, r.split] for r in self.records)
        return path

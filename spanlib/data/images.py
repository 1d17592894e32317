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
passes ``require_masks=False``. Those images, masks without an image and bad
rows of ``labels.csv`` / ``splits.csv`` are named in
:attr:`~spanlib.data.base.RecordDataset.index_problems` (the scan lists
them) and left out; the rest loads.
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
from spanlib.data.sample import SPLITS, DataError, Problem

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


def read_labels(path: Path, ids: set[str], problems: list[Problem] | None = None
                ) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    """Read ``labels.csv``: its finding columns, and ``id -> {finding: value}``.

    A bad row (a value other than 1, 0, -1 or empty, an id twice, an id with
    no image) is named in ``problems`` and skipped: its film keeps unknown
    labels, the other rows load.

    Raises:
        DataError: no ``id`` column, or (without ``problems``) a bad row.
    """
    rows = read_csv_rows(path, ("id",))
    with path.open(newline="", encoding="utf-8") as handle:
        columns = next(csv.reader(handle), [])
    names = tuple(c for c in columns if c != "id" and c.strip())
    labels: dict[str, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        sample_id = (row["id"] or "").strip()
        try:
            if sample_id in labels:
                raise DataError(path, f"line {line}: id {sample_id!r} appears twice (the first row is kept)")
            if sample_id not in ids:
                raise DataError(path, f"line {line}: id {sample_id!r} has no file in images/ (row skipped)")
            labels[sample_id] = {name: _finding(row[name], path, line, name) for name in names}
        except DataError as error:
            if problems is None:
                raise
            problems.append(Problem.from_error(error, sample_id or None))
    return names, labels


def read_splits(path: Path, ids: set[str], problems: list[Problem] | None = None) -> dict[str, str]:
    """Read ``splits.csv`` (``id, split``); an image with no valid row is left out.

    A bad row (an unknown split, an id twice) and an image with no row are
    named in ``problems``; the rest loads.

    Raises:
        DataError: missing columns, or (without ``problems``) any of the above.
    """
    rows = read_csv_rows(path, ("id", "split"))
    splits: dict[str, str] = {}
    found: list[DataError] = []
    for line, row in enumerate(rows, start=2):
        sample_id, split = (row["id"] or "").strip(), (row["split"] or "").strip()
        if split not in SPLITS:
            found.append(DataError(path, f"line {line}: split {split!r} of {sample_id!r} is not one of "
                                         f"{', '.join(SPLITS)} (row skipped)"))
        elif sample_id in splits:
            found.append(DataError(path, f"line {line}: id {sample_id!r} appears twice (the first row is kept)"))
        else:
            splits[sample_id] = split
    found += [DataError(path, f"image {i!r} has no split (left out)") for i in sorted(ids - set(splits))]
    if found and problems is None:
        raise found[0]
    if problems is not None:
        problems.extend(Problem.from_error(error) for error in found)
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


def _orphan_masks(masks: dict[str, dict[str, Path]], images: dict[str, Path]) -> list[Problem]:
    """Every mask file whose id has no image in ``images/``."""
    return [Problem(str(path), f"mask with no image (no images/{stem}.*)", stem)
            for organ in sorted(masks) for stem, path in masks[organ].items() if stem not in images]


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
        problems: list[Problem] = []
        label_names, labels = (read_labels(root / "labels.csv", ids, problems) if (root / "labels.csv").is_file()
                               else ((), {}))
        self.seeded_split = not (root / "splits.csv").is_file()
        self.splits_from = f"seeded (seed {seed}, {split_fractions})" if self.seeded_split else "splits.csv"
        splits = (
            {i: seeded_split(i, seed, split_fractions) for i in images}
            if self.seeded_split
            else read_splits(root / "splits.csv", ids, problems)
        )
        self.skipped: dict[str, str] = {}
        records = []
        for sample_id, path in images.items():
            if sample_id not in splits:
                self.skipped[sample_id] = "no split in splits.csv"
                continue
            if require_masks:
                lacking = [organ for organ in organs if sample_id not in masks[organ]]
                if lacking:
                    self.skipped[sample_id] = f"no mask for {', '.join(lacking)}"
                    problems.append(Problem(str(path), f"no mask for {', '.join(lacking)} in "
                                            f"{', '.join(f'masks/{o}/' for o in lacking)} (image left out)", sample_id))
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
        problems += _orphan_masks(masks, images)
        if not records:
            why = f" ({len(self.skipped)} image(s) left out: {next(iter(self.skipped.values()))}...)" if self.skipped else ""
            raise DataError(root, f"no image left{' in split ' + repr(split) if split else ''}{why}")
        meta = {"kind": "folder", "source": f"images reader at {root.name}", "splits": self.splits_from}
        super().__init__(root, records, tuple(masks), label_names, meta, size)
        self.index_problems = problems
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
        """The same folder restricted to one split (films capped at the same side)."""
        sub = ImagesDataset(self.root, split=split, **self._options)
        sub.max_side = self.max_side
        return sub

    def write_splits(self, path: str | Path) -> Path:
        """Write the split of every image read (``id, split``) to a CSV, e.g. beside a result."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["id", "split"])
            writer.writerows([r.id, r.split] for r in self.records)
        return path

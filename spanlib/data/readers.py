"""Readers for the real datasets, all yielding :class:`~spanlib.data.sample.Sample`.

None of these sets can be downloaded here; point a reader at a local copy
(layouts in ``data/README.md``). Each reader indexes file names once, opens
images only when a sample is asked for, and raises
:class:`~spanlib.data.sample.DataError` naming the file for bad input.
Every reader takes ``size=`` (int or ``(height, width)``) to resize image and
masks (masks by nearest neighbour).

=============  =====================================================  ==========================
reader name    dataset                                                masks
=============  =====================================================  ==========================
``chexpert``   CheXpert (CSV + JPEGs), frontal films, six labels      none
``jsrt``       JSRT ``.IMG`` films + SCR masks (GIF)                  left_lung, right_lung, heart
``montgomery`` Montgomery County (CXR_png + ManualMask)               left_lung, right_lung
``shenzhen``   Shenzhen (CXR_png + ``*_mask.png`` lung masks)         lungs
``casting``    Kaggle casting product (def_front / ok_front)          none
``folder``     the spanlib folder format                              as in meta.json
``images``     any folder: images/, masks/<organ>/, labels.csv        one per masks/ folder
=============  =====================================================  ==========================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.data.base import Record, RecordDataset
from spanlib.data.folder import FolderDataset, read_csv_rows
from spanlib.data.images import ImagesDataset
from spanlib.data.imageio import block_mean, read_image, read_raw_image
from spanlib.data.sample import CHEST_LABELS, CHEST_ORGANS, DataError, Problem

UNCERTAIN_POLICIES: tuple[str, ...] = ("ones", "zeros", "ignore")


def _existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "missing folder")
    return root


def _nonempty(root: Path, records: list[Record], what: str) -> list[Record]:
    if not records:
        raise DataError(root, f"no {what} found")
    return records


class ChexpertDataset(RecordDataset):
    """CheXpert: frontal films and the six labels of the linear probe.

    The CSV (``train.csv`` / ``valid.csv``) has the columns ``Path, Sex, Age,
    Frontal/Lateral, AP/PA`` and then the 14 observations with values 1
    (positive), 0 (negative), -1 (uncertain) or blank (not mentioned). Only
    frontal rows and the six :data:`CHEST_LABELS` are kept.

    Args:
        root: the dataset folder (e.g. ``CheXpert-v1.0-small``) holding the CSV;
            ``Path`` entries that start with this folder's name are resolved
            from its parent, others from ``root``.
        csv: CSV file name inside ``root``.
        uncertain: ``"ones"`` (U-Ones), ``"zeros"`` (U-Zeros) or ``"ignore"``
            (nan: left out of the loss and the AUC).
        blank: value of a blank cell: ``"zeros"`` (the usual reading, not
            mentioned = negative) or ``"ignore"`` (nan).
        split: split recorded in the samples (default from the CSV name:
            ``train`` -> train, ``valid`` -> val, ``test`` -> test).
        size: resize to this size.

    A row with a bad cell is named in ``index_problems`` and skipped; the
    rest loads (one bad row of 224,000 does not lose the set).

    Raises:
        DataError: missing CSV, missing columns, or no good row.
    """

    reader_name = "chexpert"
    required_columns: tuple[str, ...] = ("Path", "Frontal/Lateral", *CHEST_LABELS)

    def __init__(
        self,
        root: str | Path,
        csv: str = "train.csv",
        uncertain: str = "ones",
        blank: str = "zeros",
        split: str | None = None,
        size: int | tuple[int, int] | None = None,
    ) -> None:
        if uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
        if blank not in ("zeros", "ignore"):
            raise ValueError(f"blank must be 'zeros' or 'ignore', got {blank!r}")
        root = _existing_dir(root)
        csv_path = root / csv
        stem = Path(csv).stem.lower()
        split = split or {"valid": "val", "val": "val", "test": "test"}.get(stem, "train")
        rows = read_csv_rows(csv_path, self.required_columns)
        values = {"1": 1.0, "0": 0.0, "-1": {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]}
        blank_value = 0.0 if blank == "zeros" else np.nan
        records, bad = [], []
        for line, row in enumerate(rows, start=2):
            if (row["Frontal/Lateral"] or "").strip() != "Frontal":
                continue
            relative = Path((row["Path"] or "").strip())
            if not relative.parts:
                bad.append(f"line {line}: empty Path")
                continue
            labels, wrong = _chexpert_labels(row, values, blank_value)
            if wrong:
                bad.append(f"line {line}: {'; '.join(wrong)} (expected 1, 0, -1 or blank; row skipped)")
                continue
            base = root.parent if relative.parts[0] == root.name else root
            parts = relative.with_suffix("").parts[1 if relative.parts[0] == root.name else 0 :]
            records.append(Record(id="_".join(parts), image=base / relative, labels=labels, split=split))
        if bad and not records:
            raise DataError(csv_path, "no good row: " + "; ".join(bad[:20])
                            + (f"; ... ({len(bad)} bad rows)" if len(bad) > 20 else ""))
        meta = {
            "kind": "chest",
            "source": "CheXpert (Stanford AIMI)",
            "csv": csv,
            "uncertain": uncertain,
            "blank": blank,
        }
        super().__init__(root, _nonempty(csv_path, records, "frontal rows"), (), CHEST_LABELS, meta, size)
        self.index_problems = [Problem(str(csv_path), problem) for problem in bad]


def _chexpert_labels(row: dict[str, str], values: dict[str, float], blank_value: float
                     ) -> tuple[dict[str, float], list[str]]:
    """The six labels of one CheXpert row, and its bad cells (``Name = 'cell'``)."""
    labels, wrong = {}, []
    for name in CHEST_LABELS:
        cell = (row[name] or "").strip()
        key = cell[:-2] if cell.endswith(".0") else cell
        if cell == "":
            labels[name] = blank_value
        elif key in values:
            labels[name] = values[key]
        else:
            wrong.append(f"{name} = {cell!r}")
    return labels, wrong


_JSRT_ID = re.compile(r"^JPC[LN]N\d{3}$", re.IGNORECASE)
_SCR_FOLDERS = {"left lung": "left_lung", "right lung": "right_lung", "heart": "heart"}


class JsrtDataset(RecordDataset):
    """JSRT films with SCR lung and heart masks.

    JSRT films are headerless 2048 x 2048 12-bit big-endian ``.IMG`` files
    (``JPCLN###`` with a nodule, ``JPCNN###`` without; PNG copies are read
    too). SCR masks are 1024 x 1024 GIFs in folders ``left lung``,
    ``right lung`` and ``heart`` (e.g. ``scratch/fold1/masks/left lung/JPCLN001.gif``).
    SCR names the lungs after the patient, as spanlib does: ``left lung`` is
    the patient's left, on the image's right. Films are averaged down to their
    masks' size (2x2 blocks) before anything else.

    Args:
        root: folder searched (recursively) for the films.
        masks_root: folder searched for the SCR masks (default ``root``).
        organs: which SCR masks to load.
        raw_shape: pixel grid of the ``.IMG`` files.
        size: resize to this size.

    Labels: ``nodule``. Split: SCR ``fold1`` -> train, ``fold2`` -> test.
    """

    reader_name = "jsrt"

    def __init__(
        self,
        root: str | Path,
        masks_root: str | Path | None = None,
        organs: tuple[str, ...] = CHEST_ORGANS,
        raw_shape: tuple[int, int] = (2048, 2048),
        size: int | tuple[int, int] | None = None,
    ) -> None:
        root = _existing_dir(root)
        masks_root = _existing_dir(masks_root) if masks_root is not None else root
        self.raw_shape = (int(raw_shape[0]), int(raw_shape[1]))
        films: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            if _JSRT_ID.match(path.stem) and path.suffix.lower() in (".img", ".png"):
                key = path.stem.upper()
                if key not in films or path.suffix.lower() == ".img":
                    films[key] = path
        masks: dict[tuple[str, str], Path] = {}
        folds: dict[str, str] = {}
        for path in sorted(masks_root.rglob("*.gif")):
            organ = _SCR_FOLDERS.get(path.parent.name.lower())
            if organ is not None and _JSRT_ID.match(path.stem):
                masks[(organ, path.stem.upper())] = path
                fold = next((part for part in path.parts if part.lower() in ("fold1", "fold2")), "")
                folds[path.stem.upper()] = fold.lower()
        folder_of = {organ: name for name, organ in _SCR_FOLDERS.items()}
        records = []
        for key, film in films.items():
            known = [path for (organ, k), path in masks.items() if k == key]
            home = known[0].parent.parent if known else masks_root
            record_masks = {organ: masks.get((organ, key), home / folder_of[organ] / f"{key}.gif") for organ in organs}
            split = "train" if folds.get(key) == "fold1" else "test"
            labels = {"nodule": 1.0 if key.startswith("JPCLN") else 0.0}
            records.append(Record(id=key, image=film, masks=record_masks, labels=labels, split=split))
        meta = {"kind": "chest", "source": "JSRT (Japanese Society of Radiological Technology) + SCR masks"}
        records = _nonempty(root, records, "JSRT films (JPCLN###/JPCNN### .IMG or .png)")
        super().__init__(root, records, tuple(organs), ("nodule",), meta, size)

    def read_image_file(self, path: Path) -> np.ndarray:
        """Raw ``.IMG`` films by their fixed layout, other files by Pillow."""
        if path.suffix.lower() == ".img":
            return read_raw_image(path, self.raw_shape)
        return read_image(path)

    def align(self, record: Record, image: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Average the film down to its masks' size when that is an integer factor smaller."""
        if not masks:
            return image
        height, width = next(iter(masks.values())).shape
        factor = image.shape[0] // height
        if factor > 1 and image.shape == (height * factor, width * factor):
            return block_mean(image, factor)
        return image


def _by_image_side(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient left, patient right): the lung lying on the image's right is the patient's left."""
    columns = np.arange(left.shape[1])
    left_x = (left.sum(axis=0) * columns).sum() / max(left.sum(), 1)
    right_x = (right.sum(axis=0) * columns).sum() / max(right.sum(), 1)
    return (left, right) if left_x >= right_x else (right, left)


def _tb_label(stem: str) -> dict[str, float]:
    """NLM file names end in ``_1`` for tuberculosis, ``_0`` for normal."""
    return {"Tuberculosis": 1.0 if stem.endswith("_1") else 0.0 if stem.endswith("_0") else np.nan}


class MontgomeryDataset(RecordDataset):
    """Montgomery County chest films with manual lung masks (NLM).

    Layout: ``[MontgomerySet/]CXR_png/MCUCXR_####_#.png`` and
    ``ManualMask/leftMask/`` and ``ManualMask/rightMask/`` with the same
    file names. The masks are assigned to ``left_lung`` / ``right_lung`` by
    where they lie (the one on the image's right is the patient's left), so
    the result follows the patient convention whichever way the folders are
    named. Label ``Tuberculosis`` from the file name's last digit; split ``test``.

    Args:
        root: the ``MontgomerySet`` folder or its parent.
        size: resize to this size.
    """

    reader_name = "montgomery"

    def __init__(self, root: str | Path, size: int | tuple[int, int] | None = None) -> None:
        root = _existing_dir(root)
        base = root / "MontgomerySet" if (root / "MontgomerySet" / "CXR_png").is_dir() else root
        records = [
            Record(
                id=path.stem,
                image=path,
                masks={
                    "left_lung": base / "ManualMask" / "leftMask" / path.name,
                    "right_lung": base / "ManualMask" / "rightMask" / path.name,
                },
                labels=_tb_label(path.stem),
                split="test",
            )
            for path in sorted((base / "CXR_png").glob("*.png"))
        ]
        meta = {"kind": "chest", "source": "Montgomery County chest X-ray set (U.S. National Library of Medicine)"}
        records = _nonempty(base / "CXR_png", records, "films (*.png)")
        super().__init__(root, records, ("left_lung", "right_lung"), ("Tuberculosis",), meta, size)

    def orient(self, record: Record, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Name the two lungs by the image side they lie on."""
        left, right = _by_image_side(masks["left_lung"], masks["right_lung"])
        return {"left_lung": left, "right_lung": right}


class ShenzhenDataset(RecordDataset):
    """Shenzhen chest films with lung masks (NLM films; masks as ``*_mask.png``).

    Layout: ``CXR_png/CHNCXR_####_#.png`` somewhere under ``root`` and one
    mask per film named ``CHNCXR_####_#_mask.png`` (both lungs in one mask)
    anywhere under ``root`` (e.g. ``mask/``). About 566 of the 662 films have
    a mask; by default only those are read. Label ``Tuberculosis``; split ``test``.

    Args:
        root: folder holding films and masks.
        require_masks: skip films without a mask (else they come without masks).
        size: resize to this size.
    """

    reader_name = "shenzhen"

    def __init__(self, root: str | Path, require_masks: bool = True, size: int | tuple[int, int] | None = None) -> None:
        root = _existing_dir(root)
        masks = {path.stem[: -len("_mask")]: path for path in sorted(root.rglob("*_mask.png"))}
        films = [path for path in sorted(root.rglob("CHNCXR_*.png")) if not path.stem.endswith("_mask")]
        if require_masks and films and not masks:
            raise DataError(root, "no lung masks (*_mask.png) found; pass require_masks=False to read films only")
        records = [
            Record(
                id=path.stem,
                image=path,
                masks={"lungs": masks[path.stem]} if path.stem in masks else {},
                labels=_tb_label(path.stem),
                split="test",
            )
            for path in films
            if path.stem in masks or not require_masks
        ]
        meta = {"kind": "chest", "source": "Shenzhen chest X-ray set (U.S. National Library of Medicine)"}
        records = _nonempty(root, records, "films (CHNCXR_*.png)")
        super().__init__(root, records, ("lungs",) if require_masks else (), ("Tuberculosis",), meta, size)


class CastingDataset(RecordDataset):
    """Kaggle "casting product image data for quality inspection".

    Layouts: ``casting_data/{train,test}/{def_front,ok_front}/*.jpeg`` (the
    split is the folder), or one folder with ``def_front/`` and ``ok_front/``
    (e.g. ``casting_512x512``), split here into ``test_count`` test images and
    the rest train by a seeded shuffle. Label ``defect``; no masks.

    Args:
        root: ``casting_data``, its parent, or a folder with the class folders.
        test_count: test images for the single-folder layout.
        seed: seed of that shuffle.
        size: resize to this size.
    """

    reader_name = "casting"
    suffixes = (".jpeg", ".jpg", ".png")

    def __init__(
        self, root: str | Path, test_count: int = 200, seed: int = 0, size: int | tuple[int, int] | None = None
    ) -> None:
        root = _existing_dir(root)
        base = root / "casting_data" if (root / "casting_data").is_dir() else root
        records: list[Record] = []
        split_dirs = [name for name in ("train", "test") if (base / name).is_dir()]
        for split in split_dirs or [""]:
            for folder, label in (("def_front", 1.0), ("ok_front", 0.0)):
                for path in sorted((base / split / folder).glob("*")):
                    if path.suffix.lower() in self.suffixes:
                        sample_id = f"{split}_{path.stem}" if split else path.stem
                        records.append(Record(sample_id, path, {}, {"defect": label}, split or "train"))
        records = _nonempty(base, records, "images in def_front/ or ok_front/")
        if not split_dirs:
            order = np.random.default_rng(seed).permutation(len(records))
            test = set(order[: min(test_count, len(records))].tolist())
            records = [
                Record(r.id, r.image, r.masks, r.labels, "test" if i in test else "train")
                for i, r in enumerate(records)
            ]
        meta = {"kind": "parts", "source": 'Kaggle "casting product image data for quality inspection"'}
        super().__init__(root, records, (), ("defect",), meta, size)


READERS: dict[str, type[RecordDataset]] = {
    "folder": FolderDataset,
    "images": ImagesDataset,
    "chexpert": ChexpertDataset,
    "jsrt": JsrtDataset,
    "montgomery": MontgomeryDataset,
    "shenzhen": ShenzhenDataset,
    "casting": CastingDataset,
}
"""Reader name -> class; every class takes ``root`` first and ``size=``."""


def open_dataset(name: str, root: str | Path, **options: Any) -> RecordDataset:
    """Open a dataset by reader name.

    Args:
        name: one of :data:`READERS`.
        root: the dataset folder.
        **options: the reader's keyword arguments (``size``, ``split``,
            ``csv``, ``uncertain``, ...), and ``max_side``: films larger than
            this on their longer side are shrunk to it when read, aspect kept
            (:attr:`~spanlib.data.base.RecordDataset.max_side`).

    Raises:
        ValueError: unknown reader name.
        DataError: the dataset cannot be indexed (missing folder, CSV, columns).
    """
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; known: {', '.join(READERS)}")
    max_side = options.pop("max_side", None)
    dataset = READERS[name](root, **options)
    dataset.max_side = max_side
    return dataset

"""Data: the embedded default data (generated) and readers for the real datasets.

Everything yields :class:`Sample` (image, named masks, named labels, split).

* Generated, plainly synthetic, deterministic by seed:
  :func:`make_default_data` writes chest radiograph phantoms, cast parts and
  cluttered digits in the folder format (``python -m spanlib data make``).
* Folder format (generated data and a user's own): :class:`FolderDataset`,
  :func:`write_folder_dataset`.
* Real datasets: CheXpert, JSRT + SCR, Montgomery, Shenzhen, casting
  (:func:`open_dataset` by name, or the classes in :mod:`spanlib.data.readers`).
* Bad input raises :class:`DataError` naming the file; :func:`scan` lists
  every bad file of a dataset (``python -m spanlib data scan``).
"""

from spanlib.data.base import Record, RecordDataset
from spanlib.data.digits import DIGIT_LABELS, DigitsConfig, load_digit_source, make_cluttered_digit
from spanlib.data.folder import FolderDataset, write_folder_dataset
from spanlib.data.generate import data_preset, generate_dataset, make_default_data
from spanlib.data.parts import PART_LABELS, PART_MASKS, PartConfig, make_cast_part
from spanlib.data.phantoms import ChestConfig, FindingModel, make_chest_phantom
from spanlib.data.readers import (
    READERS,
    CastingDataset,
    ChexpertDataset,
    JsrtDataset,
    MontgomeryDataset,
    ShenzhenDataset,
    open_dataset,
)
from spanlib.data.sample import CHEST_LABELS, CHEST_ORGANS, SPLITS, DataError, Problem, Sample
from spanlib.data.scan import scan, scan_dataset

__all__ = [
    "CHEST_LABELS",
    "CHEST_ORGANS",
    "DIGIT_LABELS",
    "PART_LABELS",
    "PART_MASKS",
    "READERS",
    "SPLITS",
    "CastingDataset",
    "ChestConfig",
    "ChexpertDataset",
    "DataError",
    "DigitsConfig",
    "FindingModel",
    "FolderDataset",
    "JsrtDataset",
    "MontgomeryDataset",
    "PartConfig",
    "Problem",
    "Record",
    "RecordDataset",
    "Sample",
    "ShenzhenDataset",
    "data_preset",
    "generate_dataset",
    "load_digit_source",
    "make_cast_part",
    "make_chest_phantom",
    "make_cluttered_digit",
    "make_default_data",
    "open_dataset",
    "scan",
    "scan_dataset",
    "write_folder_dataset",
]

"""The sample format every dataset in :mod:`spanlib.data` yields.

One :class:`Sample` is an image, its named binary masks and its named labels.
Generated phantoms, the folder format on disk and the real-dataset readers all
produce the same type, so the rest of the library never asks where an image
came from.

Radiology convention: a frontal chest film is displayed as if facing the
patient, so the patient's LEFT lung lies on the IMAGE's RIGHT (larger column
index). Mask names always follow the patient (``left_lung`` is the patient's
left lung).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHEST_ORGANS: tuple[str, ...] = ("left_lung", "right_lung", "heart")
"""Chest masks, named after the patient's side (left lung = image's right)."""

CHEST_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
    "No Finding",
)
"""The six CheXpert observations of the linear probe, in the paper's order."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Allowed values of :attr:`Sample.split`."""


class DataError(ValueError):
    """Bad input data: the message names the file and the problem.

    Attributes:
        path: the offending file (or folder) as a string.
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Problem:
    """One bad file found by a scan (see :func:`spanlib.data.scan`).

    Attributes:
        path: the offending file.
        problem: what is wrong with it.
        sample_id: the sample the file belongs to, when known.
    """

    path: str
    problem: str
    sample_id: str | None = None

    @classmethod
    def from_error(cls, error: DataError, sample_id: str | None = None) -> Problem:
        """The problem a :class:`DataError` describes."""
        return cls(path=error.path, problem=error.problem, sample_id=sample_id)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class Sample:
    """An image with its masks and labels.

    Attributes:
        id: unique name of the sample inside its dataset (a safe file stem).
        image: float32 ``[H, W]`` grey (or ``[H, W, 3]``) with values in [0, 1].
        masks: name -> bool ``[H, W]``, same height and width as the image;
            may be empty.
        labels: name -> 1.0 (present), 0.0 (absent) or nan (unknown, ignored).
        split: ``"train"``, ``"val"`` or ``"test"``.
    """

    id: str
    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)
    split: str = "train"

    def validate(self) -> None:
        """Check the invariants of the format.

        Raises:
            DataError: naming the sample and the broken invariant.
        """
        where = f"sample {self.id!r}"
        image = self.image
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise DataError(where, f"image must be [H, W] or [H, W, 3], got shape {image.shape}")
        if image.dtype != np.float32:
            raise DataError(where, f"image must be float32, got {image.dtype}")
        if image.size and (not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0):
            raise DataError(where, "image values must be finite and within [0, 1]")
        for name, mask in self.masks.items():
            if mask.dtype != np.bool_:
                raise DataError(where, f"mask {name!r} must be bool, got {mask.dtype}")
            if mask.shape != image.shape[:2]:
                raise DataError(where, f"mask {name!r} has size {mask.shape}, image has {image.shape[:2]}")
        for name, value in self.labels.items():
            if not (math.isnan(value) or value in (0.0, 1.0)):
                raise DataError(where, f"label {name!r} must be 0, 1 or nan, got {value!r}")
        if self.split not in SPLITS:
            raise DataError(where, f"split must be one of {SPLITS}, got {self.split!r}")

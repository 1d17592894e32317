"""The lazy dataset every reader builds on: an index of files, loaded on demand.

A reader (the folder format, CheXpert, JSRT, ...) only has to say where the
files of each sample are: it builds a list of :class:`Record` once, cheaply,
without opening any image. :class:`RecordDataset` then loads a record into a
:class:`~spanlib.data.sample.Sample` when asked, validating as it goes, and
can also *check* a record file by file, so a scan reports every bad file of a
sample instead of stopping at the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from spanlib.data.imageio import Size, capped_size, parse_size, read_image, read_mask, resize_image, resize_mask
from spanlib.data.sample import DataError, Problem, Sample

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """Where one sample's files are.

    Attributes:
        id: the sample id.
        image: path of the image file.
        masks: mask name -> path of its file.
        labels: label name -> 0.0, 1.0 or nan.
        split: ``"train"``, ``"val"`` or ``"test"``.
    """

    id: str
    image: Path
    masks: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)
    split: str = "train"


def _attempt(action: Callable[[], T], problems: list[Problem] | None, sample_id: str) -> T | None:
    """Run one loading step; collect its DataError when ``problems`` is a list."""
    try:
        return action()
    except DataError as error:
        if problems is None:
            raise
        problems.append(Problem.from_error(error, sample_id))
        return None


class RecordDataset(Sequence[Sample]):
    """A torch-free, lazily loading sequence of samples.

    Subclasses fill :attr:`records` (and the name tuples) in ``__init__`` and
    may override :meth:`read_image_file` (other file formats) or
    :meth:`align` (make image and masks agree, e.g. downsample a film to its
    masks' size).

    Attributes:
        root: the dataset folder.
        records: one :class:`Record` per sample, in order.
        ids: the sample ids, in order.
        mask_names: names of the masks every sample carries.
        label_names: names of the labels every sample carries.
        meta: a description of the dataset (for the folder format, the
            content of ``meta.json``).
        size: ``(height, width)`` every sample is resized to, or ``None``.
        max_side: when ``size`` is None, a film whose longer side is larger
            is shrunk to it, aspect kept (masks by nearest neighbour): what a
            verb needs of a folder of films of any size, without holding
            2048-pixel films in memory (None: every film at its own size).
        index_problems: what the reader found wrong while indexing (a bad CSV
            row, an image lacking a mask, a mask without an image): those
            rows or files are left out, and :func:`spanlib.data.scan.scan`
            lists them with the bad files.
    """

    reader_name: str = "records"

    def __init__(
        self,
        root: str | Path,
        records: list[Record],
        mask_names: tuple[str, ...],
        label_names: tuple[str, ...],
        meta: dict[str, Any],
        size: int | tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.records = records
        self.ids = [record.id for record in records]
        self.mask_names = tuple(mask_names)
        self.label_names = tuple(label_names)
        self.meta = meta
        self.size: Size | None = parse_size(size)
        self.max_side: int | None = None
        self.index_problems: list[Problem] = []

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self._load(self.records[index], problems=None)
        assert sample is not None  # without a problem list every failure raises
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, masks={self.mask_names})"

    def check(self, index: int) -> list[Problem]:
        """Load one sample file by file and list everything wrong with it.

        Args:
            index: position of the sample.

        Returns:
            The problems found (empty when the sample loads cleanly).
        """
        problems: list[Problem] = []
        self._load(self.records[index], problems=problems)
        return problems

    def try_load(self, index: int) -> tuple[Sample | None, list[Problem]]:
        """Load one sample, or list what is wrong with it, without raising (for batch jobs).

        Returns:
            ``(sample, [])`` when it loads, ``(None, problems)`` otherwise.
        """
        problems: list[Problem] = []
        sample = self._load(self.records[index], problems=problems)
        return (sample, []) if sample is not None and not problems else (None, problems)

    def read_image_file(self, path: Path) -> np.ndarray:
        """Read one image file (grey by default); override for other formats."""
        return read_image(path)

    def align(self, record: Record, image: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Make the image agree with its masks before the size check.

        The default changes nothing; JSRT overrides it to bring its 2048-pixel
        films down to the 1024-pixel SCR masks.

        Returns:
            The image to use.
        """
        return image

    def orient(self, record: Record, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rename or reorder the loaded masks (e.g. lungs by image side)."""
        return masks

    def _load(self, record: Record, problems: list[Problem] | None) -> Sample | None:
        image = _attempt(lambda: self.read_image_file(record.image), problems, record.id)
        masks: dict[str, np.ndarray] = {}
        for name, path in record.masks.items():
            mask = _attempt(lambda path=path: read_mask(path), problems, record.id)
            if mask is not None:
                masks[name] = mask
        if image is None or len(masks) != len(record.masks):
            return None
        image = self.align(record, image, masks)
        for name, mask in masks.items():
            if mask.shape != image.shape[:2]:
                error = DataError(
                    record.masks[name],
                    f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                    f"{record.image.name} ({image.shape[1]}x{image.shape[0]}, width x height)",
                )
                if problems is None:
                    raise error
                problems.append(Problem.from_error(error, record.id))
        if problems:
            return None
        masks = self.orient(record, masks)
        target = self.size if self.size is not None else capped_size(image.shape, self.max_side)
        if target != image.shape[:2]:
            image = resize_image(image, target)
            masks = {name: resize_mask(mask, target) for name, mask in masks.items()}
        labels = {name: float(record.labels.get(name, math.nan)) for name in self.label_names}
        return Sample(id=record.id, image=image, masks=masks, labels=labels, split=record.split)

    def label_matrix(self) -> np.ndarray:
        """All labels as a float array ``[len(self), len(label_names)]`` (nan = unknown).

        Read from the index, without opening an image.
        """
        return np.array(
            [[record.labels.get(name, math.nan) for name in self.label_names] for record in self.records],
            dtype=np.float64,
        ).reshape(len(self.records), len(self.label_names))

    def splits(self) -> list[str]:
        """The split of every sample, read from the index."""
        return [record.split for record in self.records]

"""How well knowledge maps overlap ground-truth masks: Dice per organ."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from spanlib.maps.store import KnowledgeMaps, resize_nearest

__all__ = ["dice", "dice_report", "dice_scores", "resize_nearest"]


class _MaskedSample(Protocol):
    id: str
    image: np.ndarray
    masks: dict[str, np.ndarray]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * float((prediction & truth).sum()) / total


def dice_scores(knowledge_maps: KnowledgeMaps, dataset: Iterable[_MaskedSample], skip_missing: bool = False
                ) -> dict[str, list[float]]:
    """Dice of every organ map against the ground truth, per sample.

    Maps are taken at the image's size as training takes them
    (:meth:`~spanlib.maps.store.KnowledgeMaps.maps_at`) and thresholded at 0.5.
    Organs a sample has no mask for are left out for that sample.

    Args:
        knowledge_maps: from :func:`load_knowledge_maps`.
        dataset: samples with ``id``, ``image`` and ``masks``.
        skip_missing: leave out samples without maps instead of raising.

    Returns:
        organ -> list of Dice values.
    """
    scores: dict[str, list[float]] = {organ: [] for organ in knowledge_maps.organs}
    for sample in dataset:
        if skip_missing and sample.id not in knowledge_maps:
            continue
        height, width = sample.image.shape[:2]
        maps = knowledge_maps.maps_at(sample.id, height, width) >= 0.5
        for channel, organ in enumerate(knowledge_maps.organs):
            if organ in sample.masks:
                scores[organ].append(dice(maps[channel], sample.masks[organ]))
    return scores


def dice_report(knowledge_maps: KnowledgeMaps, dataset: Iterable[_MaskedSample], skip_missing: bool = False
                ) -> dict[str, float]:
    """Mean Dice per organ of knowledge maps against a dataset's ground-truth masks.

    Args:
        knowledge_maps: from :func:`load_knowledge_maps`.
        dataset: samples with ``id``, ``image`` and ``masks`` (e.g. a
            ``spanlib.data.FolderDataset``).
        skip_missing: leave out samples without maps instead of raising.

    Returns:
        organ -> mean Dice (NaN for an organ no sample has a mask for).
    """
    scores = dice_scores(knowledge_maps, dataset, skip_missing)
    return {organ: (float(np.mean(values)) if values else math.nan) for organ, values in scores.items()}

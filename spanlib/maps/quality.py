"""How well knowledge maps overlap ground-truth masks: Dice per organ."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from spanlib.maps.store import KnowledgeMaps, resize_nearest

__all__ = ["build_dice", "dice", "dice_line", "dice_report", "dice_scores", "resize_nearest"]


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


def build_dice(knowledge_maps: KnowledgeMaps, dataset: Any) -> dict[str, Any]:
    """Dice per organ of built maps against a dataset's own masks: what ``templates build`` reports.

    Every film of ``dataset`` with a map and its masks is scored at its own
    size (:func:`dice_scores`); a film that does not load is left out and
    counted, as the build itself records it.

    Args:
        knowledge_maps: the built maps.
        dataset: a :mod:`spanlib.data` reader (``try_load`` names a bad film instead of raising).

    Returns:
        ``{"dice": {organ: mean Dice in [0, 1]}, "dice_films": films scored,
        "dice_unreadable": films left out}``; ``{}`` when the set has no mask
        of the maps' organs.
    """
    organs = [o for o in knowledge_maps.organs if o in getattr(dataset, "mask_names", ())]
    if not organs:
        return {}
    scores: dict[str, list[float]] = {organ: [] for organ in organs}
    scored = unreadable = 0
    for index in range(len(dataset)):
        if dataset.ids[index] not in knowledge_maps:
            continue
        sample, _ = dataset.try_load(index)
        if sample is None:
            unreadable += 1
            continue
        for organ, values in dice_scores(knowledge_maps, [sample]).items():
            scores.setdefault(organ, []).extend(values)
        scored += 1
    dice_means = {organ: round(float(np.mean(v)), 4) for organ, v in scores.items() if organ in organs and v}
    return {"dice": dice_means, "dice_films": scored, "dice_unreadable": unreadable}


def dice_line(report: dict[str, Any]) -> str:
    """One line saying what a build's report says of its maps' Dice and fallbacks (empty without Dice)."""
    if not report.get("dice"):
        return ""
    scores = ", ".join(f"{organ} {100 * value:.1f}" for organ, value in report["dice"].items())
    line = f"Dice of the built maps against the set's own masks ({report['dice_films']} films, percent): {scores}"
    if "fell_back" in report:
        line += f"; {report['fell_back']} of {report['count']} films fell back ({report.get('fallback_template')})"
    return line

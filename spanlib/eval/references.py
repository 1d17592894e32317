"""What an attention mAP is read against: the scores of trivial and perfect maps on the same films and grid.

An attention map of a ViT is a ``gh x gw`` grid of patch scores, scored by
pixel AP against a full-resolution mask (:mod:`spanlib.eval.ap`). A number
such as "45 mAP" means little alone; the book prints it beside three
references computed here on the same test films, at the same grid, with the
same AP:

* ``oracle``: each film's own mask pooled to the grid (the share of the
  organ's pixels under each patch). Ranking patches by that share is about
  the best a head can do at this grid, so it is the ceiling.
* ``mean_mask``: one fixed map for every film, the training films' masks
  pooled to the grid and averaged: what a head scores that has learned only
  where the organ lies *on average*.
* ``maps``: each kind of knowledge map of every test film, pooled to the grid
  the same way: what a head scores that copies the map it was trained toward.

Pooling follows nearest-neighbour upsampling (the way an attention grid is
scored): a pixel belongs to the cell whose value
``F.interpolate(mode="nearest")`` copies to it
(:func:`spanlib.eval.ap.nearest_source_index`), so a pooled binary mask is
exactly ``pos / (pos + neg)`` of :func:`spanlib.eval.ap.patch_counts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from spanlib.eval.ap import attention_average_precision, nearest_source_index

__all__ = ["attention_references", "dataset_references", "grid_pool", "mean_grid", "score_as_attention"]


def _as_batch(maps: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    if isinstance(maps, (list, tuple)):
        maps = np.stack([np.asarray(m, dtype=np.float32) for m in maps]) if len(maps) else np.zeros((0, 1, 1))
    maps = torch.as_tensor(maps)
    if maps.dim() != 3:
        raise ValueError(f"expected maps [B, H, W], got shape {tuple(maps.shape)}")
    return maps.float()


def grid_pool(maps: torch.Tensor | np.ndarray | Sequence[np.ndarray], grid: int | tuple[int, int]) -> torch.Tensor:
    """Each map averaged over the pixels of each grid cell, as nearest upsampling assigns pixels to cells.

    Args:
        maps: ``[B, H, W]`` float or bool maps (masks, knowledge maps).
        grid: ``g`` or ``(gh, gw)``.

    Returns:
        Float32 ``[B, gh, gw]``: the mean of each cell's pixels (0 for a cell
        that owns no pixel, when ``H < gh``).
    """
    maps = _as_batch(maps)
    grid_h, grid_w = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    _, height, width = maps.shape
    rows = torch.nn.functional.one_hot(nearest_source_index(grid_h, height), grid_h).float()  # [H, gh]
    cols = torch.nn.functional.one_hot(nearest_source_index(grid_w, width), grid_w).float()  # [W, gw]
    sums = torch.einsum("bhw,hg,wk->bgk", maps.double(), rows.double(), cols.double())
    pixels = torch.outer(rows.sum(0), cols.sum(0)).double()
    return torch.where(pixels > 0, sums / pixels.clamp(min=1), 0.0).float()


def mean_grid(maps: Sequence[np.ndarray] | torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """The mean of maps pooled to the grid, ``[gh, gw]``; maps of different sizes are pooled one by one."""
    pooled = [grid_pool(_as_batch([m]) if not isinstance(m, torch.Tensor) else m[None], grid)[0] for m in maps]
    if not pooled:
        raise ValueError("no maps to average")
    return torch.stack(pooled).mean(0)


def score_as_attention(scores: torch.Tensor, masks: Sequence[np.ndarray] | torch.Tensor) -> float:
    """Mean pixel AP (percent) of grid scores ``[N, gh, gw]`` against masks, films without the organ skipped.

    The same AP and the same mean as an attention head gets in
    :func:`spanlib.eval.evaluate.attention_scores`. Masks may differ in size
    from film to film (each is scored at its own resolution).

    Returns:
        The mean over films with the organ, in percent; ``nan`` when no film has it.
    """
    scores = torch.as_tensor(scores).float()
    if isinstance(masks, torch.Tensor):
        masks = list(masks)
    if len(masks) != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score maps for {len(masks)} masks")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, mask in enumerate(masks):
        by_shape.setdefault(tuple(np.shape(mask)), []).append(i)
    values = torch.full((len(masks),), float("nan"), dtype=torch.float64)
    for indices in by_shape.values():
        batch = torch.stack([torch.as_tensor(np.asarray(masks[i])).bool() for i in indices])
        values[indices] = attention_average_precision(scores[indices], batch)
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) * 100 if len(kept) else float("nan")


def attention_references(
    test_masks: Mapping[str, Sequence[np.ndarray]],
    train_masks: Mapping[str, Sequence[np.ndarray]],
    grid: int | tuple[int, int],
    maps: Mapping[str, Mapping[str, Sequence[np.ndarray]]] | None = None,
) -> dict[str, object]:
    """The references of an attention table, in percent, on the test films at one grid.

    Args:
        test_masks: organ -> the test films' masks (bool ``[H, W]`` each).
        train_masks: organ -> the training films' masks, for the mean mask.
        grid: the attention grid, ``g`` or ``(gh, gw)``.
        maps: kind -> organ -> each test film's knowledge map (same order as
            ``test_masks``), or None.

    Returns:
        ``{"oracle": {organ: v}, "mean_mask": {organ: v}, "maps": {kind: {organ: v}}}``.
    """
    out: dict[str, object] = {"oracle": {}, "mean_mask": {}, "maps": {}}
    for organ, masks in test_masks.items():
        masks = list(masks)
        out["oracle"][organ] = score_as_attention(
            torch.cat([grid_pool([m], grid) for m in masks]) if masks else torch.zeros(0, 1, 1), masks)
        if organ in train_masks and len(train_masks[organ]):
            prior = mean_grid(list(train_masks[organ]), grid)
            out["mean_mask"][organ] = score_as_attention(prior.expand(len(masks), *prior.shape), masks)
    for kind, per_organ in (maps or {}).items():
        out["maps"][kind] = {}
        for organ, kind_maps in per_organ.items():
            kind_maps = list(kind_maps)
            if organ not in test_masks or len(kind_maps) != len(test_masks[organ]):
                raise ValueError(f"{kind} maps of {organ}: {len(kind_maps)} maps for "
                                 f"{len(test_masks.get(organ, []))} test films")
            pooled = torch.cat([grid_pool([m], grid) for m in kind_maps])
            out["maps"][kind][organ] = score_as_attention(pooled, list(test_masks[organ]))
    return out


def dataset_references(test: Sequence, train: Sequence, grid: int | tuple[int, int],
                       maps: Mapping[str, object] | None = None) -> dict[str, object]:
    """:func:`attention_references` of a test and a training set read with :mod:`spanlib.data` readers.

    Args:
        test: the test samples (each with ``id`` and ``masks``).
        train: the training samples, for the mean mask.
        grid: the attention grid.
        maps: kind -> the :class:`~spanlib.maps.store.KnowledgeMaps` of that kind
            (each test film's maps are read by id; organs the store lacks are skipped).
    """
    organs = list(getattr(test, "mask_names", None) or (test[0].masks if len(test) else {}))
    test_samples = [test[i] for i in range(len(test))]
    # a film without an organ's mask keeps its place (an empty mask, skipped as the attention scores skip it)
    test_masks = {o: [s.masks[o] if o in s.masks else np.zeros(np.shape(s.image)[:2], dtype=bool)
                      for s in test_samples] for o in organs}
    train_masks = {o: [s.masks[o] for s in (train[i] for i in range(len(train))) if o in s.masks] for o in organs}
    per_kind = {}
    for kind, store in (maps or {}).items():
        films = [store.maps_for(s.id) for s in test_samples]
        per_kind[kind] = {o: [m[store.organs.index(o)] for m in films] for o in organs if o in store.organs}
    return attention_references(test_masks, train_masks, grid, per_kind)

"""Attention metrics besides AP: pointing game, mass threshold, IoU.

Every function takes a batch of maps (torch tensors, first dimension = batch)
and returns one value per map. Pixel average precision lives in
:mod:`spanlib.eval.ap`.
"""

from __future__ import annotations

import math

import torch

from spanlib.eval.ap import upsample_nearest

__all__ = ["iou", "mass_threshold", "pointing_game"]

# ----------------------------------------------------------------------------
# pointing game, mass threshold, IoU


def pointing_game(attention: torch.Tensor, masks: torch.Tensor, ties: str = "first") -> torch.Tensor:
    """Whether the attention peak falls inside the mask, per map.

    The attention is upsampled (nearest) to the mask size first, so the peak
    is a pixel. When several pixels share the maximum:

    * ``"first"``: the first maximal pixel in row-major order counts (what
      ``argmax`` returns); the default.
    * ``"any"``: a hit if any maximal pixel is inside the mask.
    * ``"all"``: a hit only if every maximal pixel is inside the mask.

    Args:
        attention: Scores ``[B, h, w]``.
        masks: Bool or 0/1 masks ``[B, H, W]``.
        ties: ``"first"``, ``"any"`` or ``"all"``.

    Returns:
        Bool tensor ``[B]``.
    """
    if attention.dim() != 3 or masks.dim() != 3 or attention.shape[0] != masks.shape[0]:
        raise ValueError(
            f"expected attention [B, h, w] and masks [B, H, W], got {tuple(attention.shape)} and {tuple(masks.shape)}"
        )
    up = upsample_nearest(attention.detach(), masks.shape[-2:]).flatten(1)
    inside = masks.flatten(1).to(up.device) != 0
    if ties == "first":
        return torch.gather(inside, 1, up.argmax(dim=1, keepdim=True))[:, 0]
    peak = up == up.amax(dim=1, keepdim=True)
    if ties == "any":
        return (peak & inside).any(dim=1)
    if ties == "all":
        return ~(peak & ~inside).any(dim=1)
    raise ValueError(f"ties must be 'first', 'any' or 'all', got {ties!r}")


def mass_threshold(attention: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """Keep the highest-attention positions that together hold ``keep`` of the mass.

    DINO's ``visualize_attention.py`` rule: sort the normalised attention,
    keep a position when the mass strictly above it is below ``keep``. That
    is the smallest set of top positions whose mass reaches ``keep``. Ties
    are broken in row-major order (a stable sort), so the result is
    deterministic; DINO's unstable sort may break them differently. A map
    with zero total mass keeps nothing.

    Args:
        attention: Non-negative scores ``[B, ...]``.
        keep: Fraction of the mass to keep, in ``(0, 1]``.

    Returns:
        Bool tensor of the attention's shape.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if attention.dim() < 2:
        raise ValueError(f"expected a batch [B, ...], got shape {tuple(attention.shape)}")
    flat = attention.detach().flatten(1).double()
    values, order = torch.sort(flat, dim=1, descending=True, stable=True)
    running = torch.cumsum(values, dim=1)
    total = running[:, -1:]
    mass_above = torch.zeros_like(running)
    mass_above[:, 1:] = running[:, :-1] / total
    kept_sorted = (mass_above < keep) & (total > 0)
    kept = torch.zeros_like(kept_sorted).scatter_(1, order, kept_sorted)
    return kept.view(attention.shape)


def iou(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boolean maps, per map.

    Args:
        pred: Bool or 0/1 maps ``[B, ...]``.
        mask: Bool or 0/1 maps of the same shape.

    Returns:
        Float64 tensor ``[B]``; ``nan`` where both maps are empty.
    """
    if pred.shape != mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and mask {tuple(mask.shape)} differ in shape")
    if pred.dim() < 2:
        raise ValueError(f"expected a batch [B, ...], got shape {tuple(pred.shape)}")
    p = pred.flatten(1) != 0
    m = mask.flatten(1).to(p.device) != 0
    inter = (p & m).sum(dim=1).double()
    union = (p | m).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), math.nan)

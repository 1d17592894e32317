"""Scoring attention against the digit: pixel AP, pointing game, and digit versus clutter ink."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spanlib.attention_study.config import StudyConfig
from spanlib.attention_study.views import INK_THRESHOLD
from spanlib.eval.ap import attention_average_precision, average_precision_patches, patch_counts
from spanlib.eval.metrics import pointing_game
from spanlib.model.vit import cls_attention

METRICS: tuple[str, ...] = ("ap", "pointing", "clutter_ap", "digit_mass", "clutter_mass")
"""Per-head scores: pixel AP vs the digit, pointing game, AP of digit vs clutter ink, and the
shares of the attention mass on digit and on clutter pixels."""


@dataclass(frozen=True)
class EvalSet:
    """Canvases to score, stacked.

    Attributes:
        ids: sample ids.
        images: float32 ``[N, H, W]``.
        digit: bool ``[N, H, W]``, the digit mask.
        clutter: bool ``[N, H, W]``, ink outside the digit mask.
    """

    ids: tuple[str, ...]
    images: np.ndarray
    digit: np.ndarray
    clutter: np.ndarray

    def head(self, n: int) -> EvalSet:
        """The first ``n`` canvases."""
        return EvalSet(self.ids[:n], self.images[:n], self.digit[:n], self.clutter[:n])


def load_eval_set(samples: Sequence[Any], limit: int | None = None) -> EvalSet:
    """Stack the first ``limit`` samples: image, ``digit`` mask, clutter = ink outside the digit.

    Ink is every pixel above :data:`~spanlib.attention_study.views.INK_THRESHOLD`
    (the textured backgrounds stay below it).

    Raises:
        ValueError: no samples, a sample without a ``digit`` mask, or images of different sizes.
    """
    chosen = [samples[i] for i in range(min(len(samples), limit or len(samples)))]
    if not chosen:
        raise ValueError("no samples to evaluate")
    for s in chosen:
        if "digit" not in s.masks:
            raise ValueError(f"sample {s.id}: no 'digit' mask (masks: {sorted(s.masks)})")
    shapes = {s.image.shape[:2] for s in chosen}
    if len(shapes) != 1:
        raise ValueError(f"evaluation images differ in size: {sorted(shapes)}")
    images = np.stack([s.image if s.image.ndim == 2 else s.image.mean(-1) for s in chosen]).astype(np.float32)
    digit = np.stack([np.asarray(s.masks["digit"], bool) for s in chosen])
    return EvalSet(tuple(s.id for s in chosen), images, digit, (images > INK_THRESHOLD) & ~digit)


@torch.no_grad()
def attention_maps(backbone: nn.Module, cfg: StudyConfig, images: np.ndarray, batch_size: int = 100) -> torch.Tensor:
    """Last block's CLS attention per head, for whole canvases resized to the model's input.

    Args:
        backbone: the ViT (put in eval mode by the caller), on any device.
        cfg: input size and normalisation.
        images: float ``[N, H, W]`` in [0, 1].
        batch_size: canvases per forward pass.

    Returns:
        ``[N, heads, grid, grid]`` on the CPU.
    """
    device = next(backbone.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))[:, None]
        x = F.interpolate(x, size=(cfg.model.img_size, cfg.model.img_size), mode="bilinear", antialias=True, align_corners=False)
        out.append(cls_attention(backbone, ((x - cfg.mean) / cfg.std).to(device)).cpu())
    return torch.cat(out)


def digit_vs_clutter_ap(attention: torch.Tensor, eval_set: EvalSet) -> torch.Tensor:
    """AP of the attention at ranking digit pixels above clutter ink, background left out.

    A map that lights up every bright stroke alike scores about the digit's
    share of the ink; one that prefers the digit to the clutter scores more.
    Computed exactly from patch scores and per-patch pixel counts
    (:func:`spanlib.eval.ap.average_precision_patches`) with digit pixels
    positive, clutter-ink pixels negative and every other pixel ignored.

    Args:
        attention: ``[N, gh, gw]`` (one head).
        eval_set: the canvases and their masks.

    Returns:
        Float64 ``[N]``; ``nan`` where a canvas has no digit pixel.
    """
    grid = (int(attention.shape[-2]), int(attention.shape[-1]))
    pos, _ = patch_counts(torch.from_numpy(eval_set.digit), grid)
    neg, _ = patch_counts(torch.from_numpy(eval_set.clutter), grid)
    return average_precision_patches(attention, pos, neg)


def mass_share(attention: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """Share of the patch attention that falls on a mask's pixels, per map and head.

    A patch's attention is spread evenly over the pixels nearest upsampling
    gives it (:func:`spanlib.eval.ap.patch_counts`), so the share is
    ``sum_p a_p * m_p / sum_p a_p`` with ``m_p`` the fraction of patch
    ``p``'s pixels inside the mask. A flat map scores the mask's share of
    the canvas.

    Args:
        attention: ``[N, heads, gh, gw]``, non-negative.
        masks: bool ``[N, H, W]``.

    Returns:
        Float64 ``[N, heads]`` in [0, 1].
    """
    grid = (int(attention.shape[-2]), int(attention.shape[-1]))
    pos, neg = patch_counts(torch.from_numpy(masks), grid)
    inside = (pos.double() / (pos + neg).clamp(min=1).double())[:, None]
    weights = attention.detach().double()
    return (weights * inside).sum((-2, -1)) / weights.sum((-2, -1))


def score_attention(attention: torch.Tensor, eval_set: EvalSet) -> dict[str, np.ndarray]:
    """Every head's attention against the digit, per canvas.

    Args:
        attention: ``[N, heads, gh, gw]``.
        eval_set: the canvases and their masks.

    Returns:
        The :data:`METRICS`, each float ``[N, heads]``: ``ap``, pixel AP of
        the map against the digit mask over all pixels; ``pointing``, 1 when
        the map's peak pixel is on the digit, else 0; ``clutter_ap``, AP of
        digit against clutter ink only (:func:`digit_vs_clutter_ap`);
        ``digit_mass`` and ``clutter_mass``, the shares of the attention on
        digit and on clutter-ink pixels (:func:`mass_share`).

    Raises:
        ValueError: attention that does not match the canvases.
    """
    if attention.dim() != 4 or attention.shape[0] != len(eval_set.ids):
        raise ValueError(f"expected attention [{len(eval_set.ids)}, heads, gh, gw], got {tuple(attention.shape)}")
    digit = torch.from_numpy(eval_set.digit)
    heads = range(attention.shape[1])
    return {
        "ap": torch.stack([attention_average_precision(attention[:, h], digit) for h in heads], 1).numpy(),
        "pointing": torch.stack([pointing_game(attention[:, h], digit) for h in heads], 1).double().numpy(),
        "clutter_ap": torch.stack([digit_vs_clutter_ap(attention[:, h], eval_set) for h in heads], 1).numpy(),
        "digit_mass": mass_share(attention, eval_set.digit).numpy(),
        "clutter_mass": mass_share(attention, eval_set.clutter).numpy(),
    }


def uniform_reference(eval_set: EvalSet) -> dict[str, float]:
    """What a flat attention map scores (chance level), means over canvases, in percent.

    A flat map's AP is the share of positive pixels: the digit's share of
    the canvas (``ap``), of the ink (``clutter_ap``). A flat map has no peak;
    a peak at a random pixel would hit the digit as often as the digit's
    share of the canvas (``pointing``). Its attention mass on the digit and
    on the clutter is their share of the canvas.
    """
    n = len(eval_set.ids)
    d = eval_set.digit.reshape(n, -1).sum(1).astype(float)
    c = eval_set.clutter.reshape(n, -1).sum(1).astype(float)
    share = d / eval_set.digit[0].size
    return {"ap": float(share.mean() * 100), "pointing": float(share.mean() * 100),
            "clutter_ap": float(np.mean(d / np.maximum(d + c, 1)) * 100),
            "digit_mass": float(share.mean() * 100), "clutter_mass": float(np.mean(c / eval_set.digit[0].size) * 100)}


def head_summary(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean over canvases per head, in percent (``nan`` canvases left out)."""
    return {k: np.nanmean(v, axis=0) * 100 for k, v in scores.items()}


def attention_monitor(eval_set: EvalSet, cfg: StudyConfig) -> Any:
    """A training monitor: per-head means of :data:`METRICS` on ``eval_set``.

    Logs ``<metric>_best`` (the head with the highest AP at that step) and
    ``<metric>_mean`` (mean over heads).
    """

    def monitor(backbone: nn.Module) -> dict[str, float]:
        means = head_summary(score_attention(attention_maps(backbone, cfg, eval_set.images), eval_set))
        best = int(np.nanargmax(means["ap"]))
        out = {}
        for metric, values in means.items():
            out[f"{metric}_best"] = float(values[best])
            out[f"{metric}_mean"] = float(np.nanmean(values))
        return out

    return monitor

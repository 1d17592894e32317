"""Attention figures: one map over its image, head grids, regimens side by side.

Attention maps are drawn as the model sees them: a ``[gh, gw]`` patch grid
upsampled to the image by nearest neighbour (:func:`spanlib.eval.ap.upsample_nearest`),
either as a heat map stretched from each map's minimum to its maximum (a
head's attention often varies over a narrow range, so colours compare
places within a panel, not across panels), or, with a ``threshold``, as the
smallest set of patches holding that share of the attention mass (DINO's visualiser,
:func:`spanlib.eval.metrics.mass_threshold`). Every function returns a
:class:`spanlib.figures.style.BookFigure` drawn with :data:`spanlib.figures.style.STYLE`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from spanlib.eval.ap import attention_average_precision, upsample_nearest
from spanlib.eval.metrics import mass_threshold
from spanlib.figures.style import (
    HEAT_CMAP,
    KEPT_COLOUR,
    KNOWLEDGE_MAP_COLOUR,
    STYLE,
    BookFigure,
    _as_numpy,
    _image_size,
    _mask_colour,
    _mask_colours,
    _outline,
    _resize_nearest,
    _root_figure,
)

def upsampled_attention(attention: Any, size: tuple[int, int]) -> np.ndarray:
    """One head's patch attention ``[gh, gw]`` upsampled by nearest neighbour to ``size``."""
    attention = torch.as_tensor(_as_numpy(attention), dtype=torch.float32)
    if attention.dim() != 2:
        raise ValueError(f"expected one attention map [gh, gw], got shape {tuple(attention.shape)}")
    return upsample_nearest(attention[None], size)[0].numpy()


def kept_region(attention: Any, threshold: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """Patches holding ``threshold`` of the attention mass (DINO's rule), as a bool map.

    Args:
        attention: one head's attention ``[gh, gw]``.
        threshold: share of the mass to keep, in ``(0, 1]``.
        size: upsample the kept patches to this ``(H, W)`` by nearest
            neighbour; ``None`` keeps the patch grid.

    Returns:
        Bool ``[gh, gw]`` (or ``[H, W]``).
    """
    attention = torch.as_tensor(_as_numpy(attention), dtype=torch.float32)
    if attention.dim() != 2:
        raise ValueError(f"expected one attention map [gh, gw], got shape {tuple(attention.shape)}")
    kept = mass_threshold(attention[None], threshold)
    if size is not None:
        return upsample_nearest(kept.float(), size)[0].numpy() > 0.5
    return kept[0].numpy()


def _check_threshold(threshold: float | None) -> float | None:
    """``None`` (heat map) for ``None`` or 0, else the threshold in (0, 1]."""
    if threshold is None or threshold == 0:
        return None
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (0 or None: heat map), got {threshold}")
    return float(threshold)


def _draw_overlay(
    ax: Axes,
    image: np.ndarray,
    attention: np.ndarray,
    masks: Mapping[str, Any] | None,
    knowledge_map: Any | None,
    threshold: float | None,
    alpha: float,
    mask_colours: Mapping[str, str],
    seen: dict[str, str],
) -> bool:
    """Draw one overlay panel; returns whether a knowledge-map outline was drawn."""
    size = _image_size(image)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    if threshold is None:
        heat = upsampled_attention(attention, size)
        low, top = float(heat.min()), float(heat.max())
        if top <= low:  # a flat map: no contrast to stretch
            low, top = 0.0, max(top, 1e-12)
        ax.imshow(heat, cmap=HEAT_CMAP, vmin=low, vmax=top, alpha=alpha, interpolation="nearest", gid="attention")
    else:
        kept = kept_region(attention, threshold, size)
        shade = np.ma.masked_array(np.ones(size, np.float32), mask=~kept)
        ax.imshow(shade, cmap=ListedColormap([KEPT_COLOUR]), vmin=0.0, vmax=1.0, alpha=alpha, interpolation="nearest",
                  gid="attention")
        _outline(ax, kept, KEPT_COLOUR, linewidth=1.0)
    for name, mask in (masks or {}).items():
        region = _resize_nearest(_as_numpy(mask).astype(np.float32), size)
        _outline(ax, region, _mask_colour(name, mask_colours, seen))
    drawn_map = False
    if knowledge_map is not None:
        region = _resize_nearest(_as_numpy(knowledge_map).astype(np.float32), size)
        drawn_map = _outline(ax, region, KNOWLEDGE_MAP_COLOUR, linestyle="dashed", linewidth=1.4)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return drawn_map


def _legend(figure: Figure, seen: Mapping[str, str], knowledge_map: bool, threshold: float | None) -> None:
    handles = [Line2D([], [], color=colour, label=name) for name, colour in seen.items()]
    if knowledge_map:
        handles.append(Line2D([], [], color=KNOWLEDGE_MAP_COLOUR, linestyle="dashed", label="knowledge map"))
    if threshold is not None:
        handles.append(Line2D([], [], color=KEPT_COLOUR, linewidth=6, alpha=0.6, label=f"{threshold:.0%} of attention"))
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))


def attention_overlay(
    image: Any,
    attention: Any,
    masks: Mapping[str, Any] | None = None,
    knowledge_map: Any | None = None,
    threshold: float | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    alpha: float = 0.55,
    mask_colours: Mapping[str, str] | None = None,
    panel_size: float = 3.2,
) -> Figure:
    """One attention map over its image, with ground-truth and knowledge-map outlines.

    Args:
        image: ``[H, W]`` grey or ``[H, W, 3]`` colour, values in [0, 1].
        attention: one head's CLS attention over patches, ``[gh, gw]``.
        masks: organ -> bool ``[H, W]`` ground truth, outlined in solid lines.
        knowledge_map: bool or float ``[H, W]`` map, outlined dashed (level 0.5).
        threshold: ``None`` or 0 draws the attention as a heat map; a value in
            (0, 1] shades only the patches holding that share of the
            attention mass (DINO-style).
        ax: draw into these axes; a new figure is made when ``None``.
        title: the panel's title.
        alpha: opacity of the attention layer.
        mask_colours: organ -> colour (defaults:
            :data:`spanlib.figures.style.DEFAULT_MASK_COLOURS`).
        panel_size: side of the panel in inches (new figures only).

    Returns:
        The figure holding the panel (``ax``'s figure when ``ax`` is given).

    Raises:
        ValueError: the attention is not 2-D, the image not an image, or the
            threshold outside [0, 1].
    """
    image = _as_numpy(image)
    attention = _as_numpy(attention)
    if attention.ndim != 2:
        raise ValueError(f"expected one attention map [gh, gw], got shape {attention.shape}")
    threshold = _check_threshold(threshold)
    colours = _mask_colours(mask_colours)
    seen: dict[str, str] = {}
    with matplotlib.rc_context(STYLE):
        if ax is None:
            figure = BookFigure(figsize=(panel_size, panel_size + 0.5), layout="constrained")
            target = figure.add_subplot()
            own = True
        else:
            figure, target, own = _root_figure(ax), ax, False
        drawn_map = _draw_overlay(target, image, attention, masks, knowledge_map, threshold, alpha, colours, seen)
        if title:
            target.set_title(title)
        if own:
            _legend(figure, seen, drawn_map, threshold)
    return figure


def head_label(head: int, head_names: Mapping[int, str] | None = None) -> str:
    """``head 3`` or, for a named (assigned) head, ``head 0: left_lung``."""
    name = (head_names or {}).get(head)
    return f"head {head}: {name}" if name else f"head {head}"


def masks_for_head(masks: Mapping[str, Any] | None, head: int, head_names: Mapping[int, str] | None = None
                   ) -> Mapping[str, Any] | None:
    """The outlines drawn with one head: its organ's mask alone for a head named after an organ, else all masks."""
    organ = (head_names or {}).get(head)
    if masks is not None and organ in masks:
        return {organ: masks[organ]}
    return masks


def attention_grid(
    images: Sequence[Any],
    attention: Any,
    masks: Sequence[Mapping[str, Any] | None] | None = None,
    head_names: Mapping[int, str] | None = None,
    heads: Sequence[int] | None = None,
    knowledge_maps: Sequence[Mapping[int, Any] | None] | None = None,
    threshold: float | None = None,
    row_labels: Sequence[str] | None = None,
    alpha: float = 0.55,
    mask_colours: Mapping[str, str] | None = None,
    panel_size: float = 1.9,
    title: str | None = None,
) -> Figure:
    """Which head looks where: rows are images, columns are heads.

    A head named after an organ in ``head_names`` (an assigned head, such as
    ``{0: "left_lung"}``) is outlined with that organ's mask only; other
    heads are outlined with all masks of the image.

    Args:
        images: ``N`` images ``[H, W]`` (or ``[H, W, 3]``) in [0, 1].
        attention: ``[N, heads, gh, gw]`` CLS attention.
        masks: per image, organ -> bool ``[H, W]`` (or ``None``).
        head_names: head -> label for the column titles (e.g. the organ a
            SPAN head is assigned to).
        heads: the heads to show, in order (default: all).
        knowledge_maps: per image, head -> map ``[H, W]`` outlined dashed.
        threshold: ``None``/0 for heat maps, else the attention mass kept.
        row_labels: a label per image (default: none).
        alpha: opacity of the attention layer.
        mask_colours: organ -> colour.
        panel_size: side of one panel in inches.
        title: figure title.

    Returns:
        A figure with ``N * len(heads)`` axes.

    Raises:
        ValueError: shapes that do not agree.
    """
    attention = _as_numpy(attention)
    if attention.ndim != 4:
        raise ValueError(f"expected attention [N, heads, gh, gw], got shape {attention.shape}")
    n = len(images)
    if n == 0 or attention.shape[0] != n:
        raise ValueError(f"{n} images but attention for {attention.shape[0]}")
    heads = list(range(attention.shape[1])) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < attention.shape[1]]
    if not heads or bad:
        raise ValueError(f"heads {bad or heads} not in 0..{attention.shape[1] - 1}")
    for name, seq in (("masks", masks), ("knowledge_maps", knowledge_maps), ("row_labels", row_labels)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name}: {len(seq)} entries for {n} images")
    threshold = _check_threshold(threshold)
    colours = _mask_colours(mask_colours)
    seen: dict[str, str] = {}
    drawn_map = False
    with matplotlib.rc_context(STYLE):
        figure = BookFigure(figsize=(panel_size * len(heads), panel_size * n + 0.6 + (0.3 if title else 0.0)),
                        layout="constrained")
        axes = figure.subplots(n, len(heads), squeeze=False)
        for row in range(n):
            row_masks = dict((masks[row] if masks is not None else None) or {})
            row_maps = (knowledge_maps[row] if knowledge_maps is not None else None) or {}
            for col, head in enumerate(heads):
                shown = masks_for_head(row_masks, head, head_names)
                drawn_map |= _draw_overlay(axes[row, col], _as_numpy(images[row]), attention[row, head], shown,
                                           row_maps.get(head), threshold, alpha, colours, seen)
                if row == 0:
                    axes[row, col].set_title(head_label(head, head_names))
            if row_labels is not None:
                axes[row, 0].set_ylabel(row_labels[row])
        _legend(figure, seen, drawn_map, threshold)
        if title:
            figure.suptitle(title)
    return figure


def best_head(attention: Any, mask: Any) -> int:
    """The head whose attention has the highest pixel AP against ``mask`` on this image.

    Args:
        attention: ``[heads, gh, gw]``.
        mask: bool ``[H, W]``.

    Returns:
        The head index (0 when the mask is empty).
    """
    attention = torch.as_tensor(_as_numpy(attention), dtype=torch.float32)
    mask = torch.as_tensor(_as_numpy(mask)).bool()
    ap = attention_average_precision(attention, mask[None].expand(attention.shape[0], -1, -1))
    ap = torch.nan_to_num(ap, nan=-math.inf)
    return int(ap.argmax())


def regimen_comparison(
    image: Any,
    attentions: Mapping[str, Any],
    masks: Mapping[str, Any],
    assigned_heads: Mapping[str, Mapping[str, int]] | None = None,
    organs: Sequence[str] | None = None,
    knowledge_maps: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    alpha: float = 0.55,
    mask_colours: Mapping[str, str] | None = None,
    panel_size: float = 2.2,
    title: str | None = None,
) -> Figure:
    """One image under several training regimens (the paper's Figure 5 style).

    Rows are organs, columns are regimens. Each panel shows the organ's
    assigned head of that regimen, or, for a regimen without one (DINO), the
    head with the best pixel AP for the organ on this image (labelled
    "best"; this flatters the baseline, as in the paper).

    Args:
        image: ``[H, W]`` in [0, 1].
        attentions: regimen -> ``[heads, gh, gw]`` attention on this image.
        masks: organ -> bool ``[H, W]`` ground truth.
        assigned_heads: regimen -> (organ -> head) for regimens with assigned heads.
        organs: the rows (default: every organ of ``masks``).
        knowledge_maps: organ -> map ``[H, W]``, outlined dashed in the
            panels of regimens that assign a head to the organ.
        threshold: ``None``/0 for heat maps, else the attention mass kept.
        alpha: opacity of the attention layer.
        mask_colours: organ -> colour.
        panel_size: side of one panel in inches.
        title: figure title.

    Returns:
        A figure with ``len(organs) * len(attentions)`` axes.

    Raises:
        ValueError: no regimen, an organ without a mask, or an assigned head
            the attention does not have.
    """
    if not attentions:
        raise ValueError("regimen_comparison needs at least one regimen")
    organs = list(masks) if organs is None else list(organs)
    missing = [o for o in organs if o not in masks]
    if not organs or missing:
        raise ValueError(f"no ground-truth mask for organs {missing or organs}")
    assigned_heads = assigned_heads or {}
    threshold = _check_threshold(threshold)
    colours = _mask_colours(mask_colours)
    seen: dict[str, str] = {}
    drawn_map = False
    image = _as_numpy(image)
    with matplotlib.rc_context(STYLE):
        figure = BookFigure(figsize=(panel_size * len(attentions), panel_size * len(organs) + 0.6 + (0.3 if title else 0.0)),
                        layout="constrained")
        axes = figure.subplots(len(organs), len(attentions), squeeze=False)
        for col, (regimen, attention) in enumerate(attentions.items()):
            attention = _as_numpy(attention)
            if attention.ndim != 3:
                raise ValueError(f"{regimen}: expected attention [heads, gh, gw], got shape {attention.shape}")
            for row, organ in enumerate(organs):
                assigned = assigned_heads.get(regimen, {}).get(organ)
                if assigned is not None and not 0 <= assigned < attention.shape[0]:
                    raise ValueError(f"{regimen}: head {assigned} of {organ} not in 0..{attention.shape[0] - 1}")
                head = assigned if assigned is not None else best_head(attention, masks[organ])
                kmap = (knowledge_maps or {}).get(organ) if assigned is not None else None
                ax = axes[row, col]
                drawn_map |= _draw_overlay(ax, image, attention[head], {organ: masks[organ]}, kmap, threshold, alpha,
                                           colours, seen)
                ax.set_title(f"{regimen}\nhead {head} ({'assigned' if assigned is not None else 'best'})"
                             if row == 0 else f"head {head} ({'assigned' if assigned is not None else 'best'})")
                if col == 0:
                    ax.set_ylabel(organ)
        _legend(figure, seen, drawn_map, threshold)
        if title:
            figure.suptitle(title)
    return figure

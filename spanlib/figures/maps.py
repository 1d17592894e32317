"""Knowledge-map figures: one film and its maps of each kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from spanlib.figures.style import (
    STYLE,
    BookFigure,
    _as_numpy,
    _image_size,
    _mask_colour,
    _mask_colours,
    _outline,
    _resize_nearest,
)


def knowledge_map_panels(
    image: Any,
    maps_by_kind: Mapping[str, Any],
    organs: Sequence[str],
    masks: Mapping[str, Any] | None = None,
    mask_colours: Mapping[str, str] | None = None,
    panel_size: float = 2.8,
) -> Figure:
    """One film and its knowledge maps of each kind (the paper's Figure 3).

    The first panel shows the ground-truth outlines; each further panel one
    kind of map (filled, one colour per organ) with the ground truth dashed.

    Args:
        image: ``[H, W]`` grey image.
        maps_by_kind: kind name -> ``[len(organs), h, w]`` maps in [0, 1].
        organs: the organ of each map channel.
        masks: organ -> bool ``[H, W]`` ground truth.
        mask_colours: organ -> colour overrides.
        panel_size: inches per panel.

    Returns:
        A :class:`BookFigure`.
    """
    image = _as_numpy(image)
    size = _image_size(image)
    colours = _mask_colours(mask_colours)
    seen: dict[str, str] = {}
    with matplotlib.rc_context(STYLE):
        figure = BookFigure(figsize=(panel_size * (1 + len(maps_by_kind)), panel_size + 0.3), layout="constrained")
        axes = figure.subplots(1, 1 + len(maps_by_kind), squeeze=False)[0]
        axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[0].set_title("film and ground truth")
        for organ, mask in (masks or {}).items():
            _outline(axes[0], _resize_nearest(_as_numpy(mask).astype(np.float32), size), _mask_colour(organ, colours, seen))
        for ax, (kind, maps) in zip(axes[1:], maps_by_kind.items()):
            maps = _as_numpy(maps)
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            for channel, organ in enumerate(organs):
                region = _resize_nearest(maps[channel].astype(np.float32), size) >= 0.5
                colour = _mask_colour(organ, colours, seen)
                overlay = np.zeros((*size, 4), dtype=np.float32)
                overlay[region] = (*to_rgb(colour), 0.35)
                ax.imshow(overlay)
                _outline(ax, region.astype(np.float32), colour, linewidth=1.0)
                if masks and organ in masks:
                    _outline(ax, _resize_nearest(_as_numpy(masks[organ]).astype(np.float32), size), colour, "dashed", 0.8)
            ax.set_title(kind)
        for ax in axes:
            ax.set_axis_off()
        handles = [Line2D([], [], color=c, label=o) for o, c in seen.items()]
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return figure

"""The one style of the book's figures, and what every figure module shares.

Every figure function returns a :class:`BookFigure`, a
:class:`matplotlib.figure.Figure` built without pyplot, so nothing is left
open in a global figure registry. Without pyplot no inline backend is active
in the kernel and IPython would print a plain ``Figure`` as text; a
``BookFigure`` renders itself as PNG (:meth:`BookFigure._repr_png_`), so a
cell that returns one shows the image in JupyterLab, papermill output and the
built book alike. One style, :data:`STYLE`, is applied
with :func:`matplotlib.rc_context` inside each function; the caller's
``rcParams`` are never changed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.color": "0.88",
    "grid.linewidth": 0.8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.4,
    "image.interpolation": "nearest",
    "image.cmap": "gray",
}
"""The one style of the book's figures (a matplotlib rc dict)."""

HEAT_CMAP = "inferno"
"""Colour map of attention heat maps."""

KEPT_COLOUR = "#ffd400"
"""Fill colour of the attention region kept by a mass threshold."""

KNOWLEDGE_MAP_COLOUR = "#39ff14"
"""Outline colour of a knowledge map (drawn dashed)."""

DEFAULT_MASK_COLOURS: dict[str, str] = {
    "left_lung": "tab:orange",
    "right_lung": "tab:cyan",
    "heart": "tab:red",
    "lungs": "tab:orange",
    "rim": "tab:orange",
    "hub": "tab:cyan",
    "digit": "tab:red",
}
"""Outline colour of each known mask (chest organs, part regions, digit strokes)."""

_CYCLE = ("tab:orange", "tab:cyan", "tab:red", "tab:green", "tab:purple", "tab:olive")


def figure_png(figure: Figure) -> bytes:
    """A figure as PNG bytes, saved with :data:`STYLE` (dpi, tight bounding box)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="png")
    return buffer.getvalue()


class BookFigure(Figure):
    """A matplotlib figure that displays itself as PNG in any Jupyter kernel.

    Identical to :class:`matplotlib.figure.Figure`; only adds the rich
    display method IPython looks for, so no ``%matplotlib inline`` and no
    pyplot import is needed for a returned figure to appear.
    """

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def _mask_colours(overrides: Mapping[str, str] | None) -> dict[str, str]:
    return {**DEFAULT_MASK_COLOURS, **(overrides or {})}


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _image_size(image: np.ndarray) -> tuple[int, int]:
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
    return int(image.shape[0]), int(image.shape[1])


def _resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resampled by nearest neighbour to ``size`` (unchanged when it fits)."""
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {array.shape}")
    if array.shape == tuple(size):
        return array
    out = F.interpolate(torch.from_numpy(array.astype(np.float32))[None, None], size=size, mode="nearest")[0, 0]
    return out.numpy()


def _root_figure(ax: Axes) -> Figure:
    figure = ax.figure
    while not isinstance(figure, Figure):
        figure = figure.figure
    return figure


def _mask_colour(name: str, colours: Mapping[str, str], seen: dict[str, str]) -> str:
    colour = colours.get(name) or seen.get(name) or _CYCLE[len(seen) % len(_CYCLE)]
    seen.setdefault(name, colour)
    return colour


def _outline(ax: Axes, region: np.ndarray, colour: str, linestyle: str = "solid", linewidth: float = 1.2) -> bool:
    """Draw the 0.5 level of a map; ``False`` when the map is empty or full."""
    region = region.astype(np.float32)
    if region.max() <= 0.5 or region.min() >= 0.5:
        return False
    ax.contour(region, levels=[0.5], colors=[colour], linestyles=[linestyle], linewidths=linewidth)
    return True

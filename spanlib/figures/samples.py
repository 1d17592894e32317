"""A figure of dataset samples: images with mask outlines and their positive labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from matplotlib.lines import Line2D

from spanlib.data.sample import Sample
from spanlib.figures.style import DEFAULT_MASK_COLOURS, BookFigure, _mask_colour


def _positive_labels(sample: Sample) -> str:
    names = [name for name, value in sample.labels.items() if value == 1.0]
    return ", ".join(names) if names else "(no positive label)"


def sample_grid(
    samples: Sequence[Sample],
    ncols: int = 4,
    mask_colours: Mapping[str, str] | None = None,
    show_labels: bool = True,
    panel_size: float = 2.4,
    title: str | None = None,
) -> Figure:
    """Show samples in a grid, each with its mask outlines and positive labels.

    Args:
        samples: the samples to show, in order.
        ncols: panels per row.
        mask_colours: mask name -> matplotlib colour (defaults for the
            chest, part and digit masks; others cycle through a palette).
        show_labels: write each sample's positive labels above it.
        panel_size: side of one panel in inches.
        title: figure title.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` (not shown, no pyplot state).

    Raises:
        ValueError: no samples, or ``ncols < 1``.
    """
    if not samples:
        raise ValueError("sample_grid needs at least one sample")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    colours = {**DEFAULT_MASK_COLOURS, **(mask_colours or {})}
    ncols = min(ncols, len(samples))
    nrows = math.ceil(len(samples) / ncols)
    figure = BookFigure(figsize=(panel_size * ncols, panel_size * nrows + (0.4 if title else 0.0)), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    seen: dict[str, str] = {}
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, sample in zip(axes.ravel(), samples):
        image = sample.image
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        for name, mask in sample.masks.items():
            colour = _mask_colour(name, colours, seen)
            if mask.any() and not mask.all():
                ax.contour(np.asarray(mask, dtype=np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
        if show_labels:
            ax.set_title(f"{sample.id}\n{_positive_labels(sample)}", fontsize=7)
    if seen:
        handles = [Line2D([], [], color=colour, label=name) for name, colour in seen.items()]
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    return figure

"""Figures of the BYOL chapter: SLIC priors against refined object masks, and the ablation over K.

Both return a :class:`spanlib.figures.style.BookFigure` drawn with :data:`spanlib.figures.style.STYLE`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from spanlib.figures.style import DEFAULT_MASK_COLOURS, STYLE, BookFigure

__all__ = ["ablation_figure", "mask_panels"]


def _segments(ax: matplotlib.axes.Axes, image: np.ndarray, labels: np.ndarray) -> None:
    """Segments as flat colours blended over the image, with thin white borders.

    Drawn at 256 pixels or more (nearest-neighbour upsampling by an integer
    factor), so that borders stay one display pixel wide on small images.
    """
    factor = max(1, -(-256 // image.shape[0]))
    image = np.kron(image, np.ones((factor, factor)))
    labels = np.kron(labels, np.ones((factor, factor), dtype=labels.dtype))
    colours = label2rgb(labels, image=image, alpha=0.4, bg_label=-1, kind="overlay", image_alpha=1.0)
    colours[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 1.0)
    ax.imshow(colours.clip(0, 1), extent=(-0.5, image.shape[1] / factor - 0.5, image.shape[0] / factor - 0.5, -0.5))


def mask_panels(
    images: np.ndarray,
    priors: np.ndarray,
    refined: Mapping[str, np.ndarray],
    masks: np.ndarray | None = None,
    mask_names: Sequence[str] = (),
    panel_size: float = 1.9,
) -> BookFigure:
    """Per image (rows): the image, its SLIC priors, then each set of refined object masks (columns).

    Args:
        images: grey images ``[N, S, S]`` in [0, 1].
        priors: SLIC label maps ``[N, S, S]``.
        refined: column title -> refined label maps ``[N, S, S]``.
        masks: ground-truth masks ``[N, M, S, S]`` outlined on the image column.
        mask_names: names of the ``M`` masks (for colours and the legend).
        panel_size: side of one panel in inches.
    """
    n = len(images)
    columns = ["image", "SLIC priors"] + list(refined)
    colours = [DEFAULT_MASK_COLOURS.get(name, f"C{i}") for i, name in enumerate(mask_names)]
    with matplotlib.rc_context(STYLE):
        figure = BookFigure(figsize=(panel_size * len(columns), panel_size * n + 0.4), layout="constrained")
        axes = figure.subplots(n, len(columns), squeeze=False)
        for i in range(n):
            image = images[i]
            axes[i, 0].imshow(image, vmin=0, vmax=1)
            if masks is not None:
                for j, colour in enumerate(colours):
                    if masks[i, j].any() and not masks[i, j].all():
                        axes[i, 0].contour(masks[i, j].astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
            _segments(axes[i, 1], image, priors[i])
            axes[i, 1].set_xlabel(f"{len(np.unique(priors[i]))} superpixels", fontsize=7)
            for c, labels in enumerate(refined.values(), start=2):
                _segments(axes[i, c], image, labels[i])
                axes[i, c].set_xlabel(f"{len(np.unique(labels[i]))} objects", fontsize=7)
        for c, title in enumerate(columns):
            axes[0, c].set_title(title)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        if mask_names:
            handles = [Line2D([], [], color=colour, label=name.replace("_", " "))
                       for name, colour in zip(mask_names, colours)]
            figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return figure


def ablation_figure(
    ks: Sequence[int],
    by_k: Mapping[str, Sequence[float]],
    references: Mapping[str, Mapping[str, float]],
    panel_size: tuple[float, float] = (3.2, 2.5),
) -> BookFigure:
    """One panel per metric: object-level BYOL against K, references as horizontal lines.

    Args:
        ks: the values of K (x axis, log scale).
        by_k: metric name -> its value for each K.
        references: reference name (e.g. ``"plain BYOL"``) -> metric name -> value.
        panel_size: ``(width, height)`` of one panel in inches.
    """
    metrics = list(by_k)
    styles = ["--", ":", "-."]
    with matplotlib.rc_context({**STYLE, "axes.grid": True}):
        figure = BookFigure(figsize=(panel_size[0] * len(metrics), panel_size[1] + 0.5), layout="constrained")
        axes = figure.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            ax.plot(list(ks), list(by_k[metric]), marker="o", color="C0", label="object-level BYOL")
            for r, (name, values) in enumerate(references.items()):
                if metric in values:
                    ax.axhline(values[metric], color=f"C{r + 1}", linestyle=styles[r % len(styles)], label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(ks), labels=[str(k) for k in ks])
            ax.minorticks_off()
            ax.set_xlabel("K (object clusters)")
            ax.set_ylabel(metric)
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    return figure

"""Figures of the attention study: the views, the maps per head, per-head scores, scores over training."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from torchvision import tv_tensors

from spanlib.attention_study.study import StudyResults
from spanlib.attention_study.views import as_image, augmentation
from spanlib.figures.attention import attention_grid
from spanlib.figures.style import STYLE, BookFigure

METRIC_LABELS: dict[str, str] = {
    "ap": "pixel AP vs digit (%)",
    "pointing": "pointing game (%)",
    "clutter_ap": "AP digit vs clutter ink (%)",
    "digit_mass": "attention on the digit (%)",
    "clutter_mass": "attention on clutter ink (%)",
}
"""Axis labels of the per-head metrics."""

DIGIT_COLOUR = "#00e5ff"


def common_grid(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Attention maps of different grids on one grid, by exact integer nearest upsampling (every patch keeps its value)."""
    side = math.lcm(*(int(m.shape[-1]) for m in maps))
    return [m.repeat_interleave(side // m.shape[-1], -1).repeat_interleave(side // m.shape[-2], -2) for m in maps]


def comparison_figure(results: StudyResults, names: Sequence[str], image: int = 0, title: str | None = None) -> BookFigure:
    """Every head (columns) of several variants (rows) on one test canvas, with the digit outlined.

    Raises:
        ValueError: variants with different numbers of heads.
    """
    maps = common_grid([results.variants[n].attention[image] for n in names])
    heads = {int(m.shape[0]) for m in maps}
    if len(heads) != 1:
        raise ValueError(f"variants {list(names)} differ in their number of heads: {sorted(heads)}")
    labels = [results.variants[n].label.replace(", ", ",\n") for n in names]
    masks = [{"digit": results.shown.digit[image]}] * len(names)
    return attention_grid([results.shown.images[image]] * len(names), torch.stack(maps), masks=masks,
                          row_labels=labels, title=title, panel_size=1.5, mask_colours={"digit": DIGIT_COLOUR})


def views_figure(results: StudyResults, n_digits: int = 3, seed: int = 0) -> BookFigure:
    """What the two branches see, for a few training digits.

    Columns: same views (branch a, branch b: crops of one canvas), then
    digit-only shared (branch a, branch b: crops of two canvases sharing
    only the digit). The digit is outlined.
    """
    renderer = results.renderer
    cfg = results.study.base
    rng = np.random.default_rng([seed, 0xF16])
    with torch.random.fork_rng(devices=[]), matplotlib.rc_context(STYLE):
        torch.manual_seed(seed)
        transform = augmentation(cfg)
        figure = BookFigure(figsize=(6.4, 1.6 * n_digits + 0.4), layout="constrained")
        axes = figure.subplots(n_digits, 4, squeeze=False)
        for row in range(n_digits):
            digit = int(renderer.pool[rng.integers(len(renderer.pool))])
            for mode, first in (("same", 0), ("digit_only", 2)):
                for k, canvas in enumerate(renderer.pair(digit, mode, rng)):
                    view, mask = transform(as_image(canvas.image), tv_tensors.Mask(torch.from_numpy(canvas.digit)[None]))
                    ax = axes[row, first + k]
                    ax.imshow(view[0].numpy() * cfg.std + cfg.mean, cmap="gray", vmin=0, vmax=1)
                    if mask.any() and not mask.all():
                        ax.contour(mask[0].numpy().astype(float), levels=[0.5], colors=[DIGIT_COLOUR], linewidths=0.8)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if row == 0:
                        ax.set_title(f"{'same' if mode == 'same' else 'digit only'}: branch {'ab'[k]}")
    return figure


def head_bar_figure(results: StudyResults, names: Sequence[str], metric: str = "ap") -> BookFigure:
    """Per-head test means of ``metric`` for several variants (heads ranked within each), with the flat-map level."""
    with matplotlib.rc_context(STYLE):
        figure = BookFigure(figsize=(6.4, 3.2), layout="constrained")
        ax = figure.add_subplot()
        width = 0.8 / max(len(names), 1)
        n_heads = 0
        for k, name in enumerate(names):
            r = results.variants[name]
            values = np.sort(r.head_means(metric))[::-1]
            n_heads = max(n_heads, len(values))
            ax.bar(np.arange(len(values)) + k * width, values, width, label=r.label)
        reference = results.reference.get(metric)
        if reference is not None:
            ax.axhline(reference, color="0.3", linestyle="dashed", linewidth=1.0, label="flat map (chance)")
        ax.set_xticks(np.arange(n_heads) + width * (len(names) - 1) / 2, labels=[f"{i + 1}." for i in range(n_heads)])
        ax.set_xlabel("heads, ranked within each variant")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        figure.legend(loc="outside lower center", ncols=3, fontsize=7)
    return figure


def training_figure(results: StudyResults, names: Sequence[str], metrics: Sequence[str] = ("ap", "clutter_ap")) -> BookFigure:
    """Validation scores of the best head (at each step) while training, one panel per metric.

    Raises:
        ValueError: a variant trained without monitoring.
    """
    with matplotlib.rc_context(STYLE):
        figure = BookFigure(figsize=(3.2 * len(metrics), 3.2), layout="constrained")
        axes = figure.subplots(1, len(metrics), squeeze=False)[0]
        for name in names:
            r = results.variants[name]
            records = [rec for rec in r.log if f"{metrics[0]}_best" in rec]
            if not records:
                raise ValueError(f"{name}: no monitored scores in its log (trained with monitor_every = 0?)")
            steps = [rec["step"] for rec in records]
            for ax, metric in zip(axes, metrics):
                ax.plot(steps, [rec[f"{metric}_best"] for rec in records], marker="o", markersize=3, label=r.label)
        for ax, metric in zip(axes, metrics):
            reference = results.reference.get(metric)
            if reference is not None:
                ax.axhline(reference, color="0.3", linestyle="dashed", linewidth=1.0, label="flat map (chance)")
            ax.set_xlabel("training step")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric) + ", best head")
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
    return figure

"""Training curves: logged diagnostics over optimizer steps, one panel per quantity."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from spanlib.figures.style import STYLE, BookFigure

TRAINING_METRICS: tuple[str, ...] = ("loss", "dino_loss", "span_loss", "inside_share", "teacher_entropy", "embed_std")
"""Log keys :func:`training_curves` plots by default, one panel each."""


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_step_record(record: Mapping[str, Any], key: str) -> bool:
    """A training-step record holding ``key`` (an ``event`` record is not; NaN means absent)."""
    event = record.get("event")
    if isinstance(event, str) and event:
        return False
    return _is_finite_number(record.get("step")) and _is_finite_number(record.get(key))


def training_curves(
    logs: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str] = TRAINING_METRICS,
    ncols: int = 3,
    panel_size: tuple[float, float] = (3.0, 2.2),
    title: str | None = None,
) -> Figure:
    """Training diagnostics over optimizer steps, one panel per logged quantity.

    Records without a ``step`` or with an ``event`` (checkpoints,
    divergence notes) are skipped, and a missing or NaN value is no point, so
    records from ``DataFrame.to_dict("records")`` work as well as the raw
    log; a run that does not log a quantity (a DINO run has no
    ``inside_share``) is simply absent from that panel.

    Args:
        logs: run name -> records of its ``log.jsonl``
            (:func:`spanlib.core.checkpoint.read_log`).
        metrics: the log keys to plot, one panel each.
        ncols: panels per row.
        panel_size: ``(width, height)`` of one panel in inches.
        title: figure title.

    Returns:
        A figure with ``len(metrics)`` axes.

    Raises:
        ValueError: no runs, no metrics, or ``ncols < 1``.
    """
    if not logs:
        raise ValueError("training_curves needs at least one run")
    if not metrics:
        raise ValueError("training_curves needs at least one metric")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    ncols = min(ncols, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    colours = {name: f"C{i % 10}" for i, name in enumerate(logs)}
    with matplotlib.rc_context({**STYLE, "axes.grid": True}):
        figure = BookFigure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.5 + (0.3 if title else 0.0)),
                        layout="constrained")
        grid = figure.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in grid[len(metrics):]:
            figure.delaxes(ax)
        plotted: set[str] = set()
        for ax, key in zip(grid, metrics):
            for name, records in logs.items():
                points = [(float(r["step"]), float(r[key])) for r in records if _is_step_record(r, key)]
                if points:
                    steps, values = zip(*sorted(points))
                    ax.plot(steps, values, color=colours[name], label=name)
                    plotted.add(name)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("step")
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
        handles = [Line2D([], [], color=colours[name], label=name) for name in logs if name in plotted]
        if handles:
            figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
        if title:
            figure.suptitle(title)
    return figure


def tradeoff_curves(span_logs: Mapping[str, Sequence[Mapping[str, Any]]],
                    baseline_logs: Mapping[str, Sequence[Mapping[str, Any]]],
                    log_k: float | None = None) -> Figure:
    """The SPAN runs' trade-off over training: the inside share (left) and DINO's loss (right), baselines beside.

    The inside share is the share of the assigned heads' attention inside
    their maps; the DINO runs log none, so they appear in the loss panel only.

    Args:
        span_logs: SPAN run name -> its log records (:func:`spanlib.core.checkpoint.read_log`).
        baseline_logs: DINO run name (``dino_cxr``) -> its log records.
        log_k: log of the head's K, drawn as a grey line on the loss panel (the uniform prediction).
    """
    figure = training_curves({**span_logs, **baseline_logs}, metrics=("inside_share", "dino_loss"), ncols=2,
                             panel_size=(3.6, 2.6))
    if log_k is not None:
        loss_panel = figure.axes[1]
        loss_panel.axhline(log_k, color="0.5", linestyle="dashed", lw=1.0, label="log K")
        loss_panel.text(0.98, log_k, "log K", transform=loss_panel.get_yaxis_transform(), ha="right", va="bottom",
                        color="0.4", fontsize=7)
    return figure

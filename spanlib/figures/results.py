"""Figures of the result chapters: attention mAP bars, AUC heat maps, few-label curves, book against paper,
attention against its references, the lambda sweep.

Each takes a table of :mod:`spanlib.figures.tables` (or the summary and ablations it is drawn from) and
returns a :class:`spanlib.figures.style.BookFigure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from spanlib.figures.style import STYLE, BookFigure
from spanlib.figures.tables import summary_value


def attention_map_bars(table: pd.DataFrame, regimens: Sequence[str]) -> Figure:
    """Attention mAP per organ (groups) and regimen (bars), the paper's value as a black tick over each bar.

    Args:
        table: :func:`spanlib.figures.tables.attention_scores_table`.
        regimens: the bars' order.
    """
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        fig = BookFigure(figsize=(7.5, 3.2), layout="constrained")
        ax = fig.add_subplot()
        sns.barplot(data=table, x="organ", y="mAP", hue="regimen", hue_order=list(regimens), ax=ax)
        for bars, regimen in zip(ax.containers, regimens):
            for bar, organ in zip(bars, table["organ"].unique()):
                paper = table[(table.regimen == regimen) & (table.organ == organ)]["paper mAP (JSRT)"].iloc[0]
                if paper == paper:  # not NaN
                    ax.plot([bar.get_x(), bar.get_x() + bar.get_width()], [paper, paper], color="black", lw=1.5)
        ax.set_ylabel("attention mAP (%)")
        ax.set_ylim(0, 100)
        sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.18), ncols=6, title=None, frameon=False, fontsize=7)
    return fig


def auc_heatmap(per_label: pd.DataFrame) -> Figure:
    """Test AUC per finding (columns) and regimen (rows), annotated, centred on chance (50).

    Args:
        per_label: :func:`spanlib.figures.tables.per_finding_auc`.
    """
    fig = BookFigure(figsize=(7.5, 0.45 * len(per_label) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(per_label, annot=True, fmt=".1f", cmap="coolwarm", vmin=0, vmax=100, center=50,
                cbar_kws={"label": "AUC (%)"}, ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(axis="x", rotation=20)
    return fig


def fewshot_curves(table: pd.DataFrame, sizes: Sequence[int] = (4, 8, 16, 32)) -> Figure:
    """Test AUC against the number of labels, one line per regimen with its 95% interval.

    Args:
        table: :func:`spanlib.figures.inspection.fewshot_table`.
        sizes: the ticks of the (log 2) label axis.
    """
    fig = BookFigure(figsize=(5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for regimen, group in table.groupby("regimen"):
        ax.errorbar(group["labels"], group["AUC"],
                    yerr=[group["AUC"] - group["95% CI low"], group["95% CI high"] - group["AUC"]],
                    marker="o", capsize=3, label=regimen)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sizes), labels=[str(n) for n in sizes])
    ax.set_xlabel("labelled parts")
    ax.set_ylabel("test AUC (%)")
    ax.legend()
    return fig


def rank_correlation(pairs: pd.DataFrame) -> float:
    """Spearman's rank correlation of ``this book`` against ``paper (JSRT)`` (NaN for fewer than three pairs)."""
    return spearmanr(pairs["paper (JSRT)"], pairs["this book"]).statistic if len(pairs) > 2 else float("nan")


def book_vs_paper(rows: pd.DataFrame, regimens: Sequence[str]) -> Figure:
    """This book's attention mAP against the paper's, one point per regimen (colour) and organ (marker).

    Args:
        rows: :func:`spanlib.figures.tables.summary_attention_rows`; rows without a paper value are dropped.
        regimens: the regimens, in the order their colours are given.
    """
    pairs = rows.dropna()
    rho = rank_correlation(pairs)
    fig = BookFigure(figsize=(5, 4), layout="constrained")
    ax = fig.add_subplot()
    markers = dict(zip(sorted(pairs["organ"].unique()), "os^"))
    colours = dict(zip(regimens, [f"C{i}" for i in range(len(regimens))]))
    for _, p in pairs.iterrows():
        ax.scatter(p["paper (JSRT)"], p["this book"], marker=markers[p["organ"]], color=colours[p["regimen"]], s=40)
    ax.plot([0, 100], [0, 100], ls="--", color="grey", lw=0.8)
    for regimen in pairs["regimen"].unique():
        ax.scatter([], [], color=colours[regimen], label=regimen)
    for organ, m in markers.items():
        ax.scatter([], [], marker=m, color="black", label=organ)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("paper, JSRT (mAP %)")
    ax.set_ylabel("this book (mAP %)")
    ax.set_title(f"Spearman rank correlation {rho:.2f}")
    ax.legend(fontsize=7, loc="upper left")
    return fig


REFERENCE_LINES = {"oracle": ("black", "solid"), "mean_mask": ("0.45", "dashed")}
"""Colour and line style of each reference line of :func:`attention_against_references` (map kinds: dotted)."""


def attention_against_references(summary: Mapping[str, Any], kinds: Sequence[str] = ("deformable",),
                                 size: str = "headline") -> Figure:
    """Attention mAP per regimen (bars, 95% interval over seeds) and organ (panels), with the references as lines.

    The lines are the oracle (the masks pooled to the grid), the training
    films' mean mask, and each map kind of ``kinds`` scored as attention,
    all on the same test films and grid. Each line's label names it
    (``oracle``, ``mean mask``, ``<kind> maps``).

    Args:
        summary: :func:`spanlib.book.summary.build_summary`'s result, with ``attention_references``.
        kinds: the knowledge-map kinds drawn as lines (those the summary has).
        size: ``headline`` or ``training``.
    """
    suffix = "" if size == "headline" else "_training"
    refs = summary[f"attention_references{suffix}"]
    regimens = list(summary["regimens"])
    organs = list(next(iter(summary["regimens"].values()))[f"attention_mAP{suffix}"])
    lines = {"oracle": refs["oracle"], "mean mask": refs["mean_mask"],
             **{f"{k} maps": refs["maps"][k] for k in kinds if k in refs.get("maps", {})}}
    styles = {"oracle": REFERENCE_LINES["oracle"], "mean mask": REFERENCE_LINES["mean_mask"],
              **{f"{k} maps": (f"C{i + 1}", "dotted") for i, k in enumerate(kinds)}}
    with matplotlib.rc_context({**STYLE, "axes.grid": True}):
        fig = BookFigure(figsize=(3.0 * len(organs), 3.4), layout="constrained")
        axes = fig.subplots(1, len(organs), sharey=True, squeeze=False)[0]
        for ax, organ in zip(axes, organs):
            entries = [summary["regimens"][r][f"attention_mAP{suffix}"][organ] for r in regimens]
            means = [summary_value(e) for e in entries]
            low = [m - e["ci95"][0] if isinstance(e, Mapping) and e.get("ci95") else 0.0 for m, e in zip(means, entries)]
            high = [e["ci95"][1] - m if isinstance(e, Mapping) and e.get("ci95") else 0.0 for m, e in zip(means, entries)]
            ax.bar(range(len(regimens)), means, yerr=[low, high], capsize=2, color="C0", alpha=0.8)
            for name, values in lines.items():
                if organ in values:
                    colour, style = styles[name]
                    ax.axhline(values[organ], color=colour, linestyle=style, lw=1.2, label=name)
            ax.set_xticks(range(len(regimens)), labels=regimens, rotation=60, ha="right", fontsize=7)
            ax.set_title(organ.replace("_", " "))
            ax.set_ylim(0, 100)
        axes[0].set_ylabel(f"attention mAP (%), {summary[f'attention_grid{suffix}']}x"
                           f"{summary[f'attention_grid{suffix}']} grid")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(lines))
    return fig


def lambda_sweep(ablations: Mapping[str, Any]) -> Figure:
    """The lambda sweep: validation mAP and DINO's loss below log K against lambda (log axis), the choice marked.

    Args:
        ablations: :func:`spanlib.book.summary.build_ablations`'s result.
    """
    rows = sorted(ablations["lambda"], key=lambda r: r["lambda"])
    lambdas = [r["lambda"] for r in rows]
    panels = (("val_mAP", "validation attention mAP (%)"), ("dino_loss_below_log_k", "DINO loss below log K (nats)"))
    with matplotlib.rc_context({**STYLE, "axes.grid": True}):
        fig = BookFigure(figsize=(7.0, 2.8), layout="constrained")
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, (key, label) in zip(axes, panels):
            values = [r[key] if r[key] is not None else float("nan") for r in rows]
            ax.plot(lambdas, values, marker="o", color="C0")
            ax.axvline(ablations["lambda_chosen"], color="C3", linestyle="dashed", lw=1.0, label="chosen on validation")
            ax.set_xscale("log")
            ax.set_xlabel("lambda")
            ax.set_ylabel(label)
        axes[0].legend(loc="best")
    return fig

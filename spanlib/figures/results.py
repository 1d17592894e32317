"""Figures of the result chapters: attention mAP bars, AUC heat maps, few-label curves, book against paper.

Each takes a table of :mod:`spanlib.figures.tables` and returns a
:class:`spanlib.figures.style.BookFigure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from spanlib.figures.style import BookFigure


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

"""The book's tables (pandas in, pandas out).

Each function turns what an evaluation or a summary returns into the table a
chapter shows; the sentences a chapter prints about a table are in
:mod:`spanlib.book.readings`. The paper's published
numbers live in the book (:mod:`spanlib.book.paper`) and are passed in:
``paper`` maps organ -> (paper row -> value), ``paper_rows`` our regimen ->
the paper's row name.

Every table comes back as a :class:`BookFrame`: a DataFrame whose HTML shows
a dash where a value is missing (a row the paper does not have, a number a
run does not log) instead of ``NaN``; the value itself stays NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

NAN = float("nan")
MISSING = "\u2013"
"""What a table shows where a value is missing (an en dash)."""


class BookFrame(pd.DataFrame):
    """A DataFrame that shows :data:`MISSING` for a missing value in HTML; what pandas derives from it stays one."""

    _metadata: list[str] = []

    @property
    def _constructor(self) -> type[BookFrame]:
        return BookFrame

    def _repr_html_(self) -> str:
        return self.to_html(na_rep=MISSING, notebook=True, max_rows=pd.get_option("display.max_rows"),
                            max_cols=pd.get_option("display.max_columns"))


def book_frame(table: pd.DataFrame) -> BookFrame:
    """A table as a :class:`BookFrame` (the same data)."""
    return table if isinstance(table, BookFrame) else BookFrame(table)


def book_table(function: Callable[..., pd.DataFrame]) -> Callable[..., BookFrame]:
    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> BookFrame:
        return book_frame(function(*args, **kwargs))

    return wrapped


def summary_value(v: Any) -> float:
    """A summary entry's value: the mean of an entry ``{"mean", "ci95", "seeds"}``, else the value itself."""
    return v["mean"] if isinstance(v, dict) else v


def _paper(paper: Mapping[str, Mapping[str, float]], organ: str, regimen: str, paper_rows: Mapping[str, str]) -> float:
    return paper.get(organ, {}).get(paper_rows.get(regimen) or "", NAN)


@book_table
def attention_scores_table(scores: Mapping[str, Mapping[str, Mapping[str, Any]]],
                           paper: Mapping[str, Mapping[str, float]], paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """One row per regimen and organ: the attention scores of ``evaluate("attention")`` beside the paper's mAP.

    Args:
        scores: regimen -> organ -> the evaluation's scores (``head``,
            ``head_chosen``, ``mAP``, ``per_image_max_mAP``, ``pointing``, ``iou_mass60``).
        paper: organ -> paper row -> published mAP (JSRT).
        paper_rows: regimen -> the paper's row name.
    """
    rows = []
    for regimen, organs in scores.items():
        for organ, s in organs.items():
            rows.append({"regimen": regimen, "organ": organ, "head": s["head"], "head chosen": s["head_chosen"],
                         "mAP": s["mAP"], "per-image best head mAP": s["per_image_max_mAP"],
                         "pointing game": s["pointing"], "IoU (60% mass)": s["iou_mass60"],
                         "paper mAP (JSRT)": _paper(paper, organ, regimen, paper_rows)})
    return pd.DataFrame(rows)


@book_table
def linear_probe_table(results: Mapping[str, Mapping[str, Any]], paper_mauc: Mapping[str, float],
                       paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """Per regimen (index): mAUC, the paper's mAUC and ``AUC <finding>`` columns of ``evaluate("linear")``."""
    rows = []
    for regimen, res in results.items():
        row = {"regimen": regimen, "mAUC": res["mAUC"], "paper mAUC": paper_mauc.get(paper_rows.get(regimen) or "", NAN)}
        row.update({f"AUC {k}": v for k, v in res["auc"].items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("regimen")


@book_table
def per_finding_auc(table: pd.DataFrame) -> pd.DataFrame:
    """The ``AUC <finding>`` columns of :func:`linear_probe_table`, named by finding."""
    return table[[c for c in table.columns if c.startswith("AUC ")]].rename(columns=lambda c: c[4:])


@book_table
def summary_attention_rows(summary: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]],
                           paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """One row per regimen and organ: the summary's attention mAP (``this book``) and the paper's (``paper (JSRT)``)."""
    rows = []
    for regimen, res in summary["regimens"].items():
        for organ, v in res["attention_mAP"].items():
            rows.append({"regimen": regimen, "organ": organ, "this book": summary_value(v),
                         "paper (JSRT)": paper[organ].get(paper_rows.get(regimen) or "", NAN)})
    return pd.DataFrame(rows)


@book_table
def summary_attention_table(rows: pd.DataFrame, regimens: Sequence[str]) -> pd.DataFrame:
    """:func:`summary_attention_rows` as regimens by (source, organ), in the order of ``regimens``."""
    return rows.pivot(index="regimen", columns="organ", values=["this book", "paper (JSRT)"]).loc[list(regimens)]


def mean_attention_map(summary: Mapping[str, Any]) -> dict[str, float]:
    """Regimen -> its attention mAP averaged over the organs."""
    return {r: sum(summary_value(v) for v in res["attention_mAP"].values()) / len(res["attention_mAP"])
            for r, res in summary["regimens"].items()}


def paper_mean(paper: Mapping[str, Mapping[str, float]], row: str) -> float:
    """The paper's mAP of one row averaged over the organs."""
    return sum(organ[row] for organ in paper.values()) / len(paper)


@book_table
def summary_linear_table(summary: Mapping[str, Any], paper_mauc: Mapping[str, float],
                         paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """Per regimen: the summary's linear-probe mAUC (``this book``) and the paper's."""
    return pd.DataFrame(
        {"this book": {r: summary_value(res["linear_mAUC"]) for r, res in summary["regimens"].items()},
         "paper": {r: paper_mauc.get(paper_rows.get(r) or "", NAN) for r in summary["regimens"]}}
    )


@book_table
def summary_fewshot_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Labelled parts (index: 4, 8, 16, 32, then ``all``) by regimen: the summary's few-label AUC (means)."""
    fewshot = pd.DataFrame({r: {n: summary_value(v) for n, v in res.items()} for r, res in summary["fewshot"].items()})
    fewshot.index = [int(n) if str(n).isdigit() else n for n in fewshot.index]
    fewshot.index.name = "labelled parts"
    return fewshot


def interval_text(v: Any, digits: int = 1) -> str:
    """``"57.4 [55.0, 59.8]"`` for a summary number with a 95% interval, the mean alone for one seed."""
    if v is None:
        return ""
    if not isinstance(v, Mapping):
        return f"{v:.{digits}f}"
    if v.get("ci95") is None:
        return f"{v['mean']:.{digits}f}"
    lo, hi = v["ci95"]
    return f"{v['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@book_table
def summary_interval_table(summary: Mapping[str, Any], section: str = "regimens") -> pd.DataFrame:
    """Every headline number as ``mean [95% interval]`` text: regimens by metric.

    ``section="regimens"``: attention mAP and pointing per organ, linear
    mAUC, DINO's loss below log K; ``section="fewshot"``: AUC per number of
    labels (and ``all``).
    """
    rows = {}
    for regimen, res in summary[section].items():
        row = {}
        for metric, value in res.items():
            if isinstance(value, Mapping) and "mean" not in value:
                row.update({f"{metric} {k}": interval_text(v) for k, v in value.items()})
            else:
                row[metric] = interval_text(value, 2 if metric == "dino_loss_below_log_k" else 1)
        rows[regimen] = row
    return pd.DataFrame(rows).T


@book_table
def map_quality_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per kind of knowledge map: its Dice against the true masks beside its SPAN run's attention mAP, per organ.

    Dice is of the map itself (one number per organ over the test films);
    attention mAP is the ``span_<kind>`` run's, ``mean [95% interval]`` over seeds.
    """
    rows = {}
    for kind, dice in summary["knowledge_map_dice"].items():
        attention = summary["regimens"][f"span_{kind}"]["attention_mAP"]
        row = {f"Dice {o}": round(v, 1) for o, v in dice.items()}
        row["Dice mean"] = round(sum(dice.values()) / len(dice), 1)
        row.update({f"attention mAP {o}": interval_text(attention[o]) for o in dice})
        rows[kind] = row
    table = pd.DataFrame(rows).T
    table.index.name = "knowledge map"
    return table


@book_table
def start_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """The shared start's report as one column: steps, DINO loss against log K, teacher entropy, k-NN accuracy."""
    rows = {
        "training steps": report["steps"],
        "pooled sets": ", ".join(report["datasets"]),
        "log K (nats)": round(report["log_k"], 3),
        "DINO loss (nats)": round(report["dino_loss"], 3),
        "loss below log K (nats)": round(report["loss_below_log_k"], 3),
        "teacher entropy per image (nats)": round(report["teacher_entropy"], 3),
        "entropy of the mean teacher output (nats)": round(report["teacher_mean_entropy"], 3),
        "k-NN accuracy, shared start (%)": round(report["knn_accuracy"], 1),
        "k-NN accuracy, untrained network (%)": round(report["knn_accuracy_random"], 1),
        "k-NN accuracy, chance (%)": round(report["knn_chance"], 1),
        "k-NN held-out images": report["knn_test"],
    }
    return pd.DataFrame({"shared start": rows})


@book_table
def lambda_table(ablations: Mapping[str, Any]) -> pd.DataFrame:
    """The lambda sweep: validation mAP (the choice), test mAP per organ, pointing, DINO's loss gap."""
    rows = {}
    for row in ablations["lambda"]:
        name = f"{row['lambda']:g}" + (" (chosen)" if row["lambda"] == ablations["lambda_chosen"] else "")
        rows[name] = {"val mAP": row["val_mAP"], **{f"test {o}": v for o, v in row["test_mAP"].items()},
                      "test pointing": sum(row["pointing"].values()) / len(row["pointing"]),
                      "DINO loss below log K": row["dino_loss_below_log_k"]}
    table = pd.DataFrame(rows).T
    table.index.name = "lambda"
    return table


@book_table
def terms_table(ablations: Mapping[str, Any]) -> pd.DataFrame:
    """Inclusion only, exclusion only and both, each with the raw and the renormalised attention."""
    rows = {}
    for row in ablations["terms"]:
        name = (row["terms"], "renormalised" if row["renormalize"] else "raw")
        rows[name] = {"val mAP": row["val_mAP"], **{f"test {o}": v for o, v in row["test_mAP"].items()},
                      "test pointing": sum(row["pointing"].values()) / len(row["pointing"]),
                      "DINO loss below log K": row["dino_loss_below_log_k"]}
    table = pd.DataFrame(rows).T
    table.index.names = ["terms", "attention"]
    return table


@book_table
def health_table(runs: Mapping[str, Any]) -> pd.DataFrame:
    """The last logged step of every trained run: steps, log K, DINO loss, teacher entropy, spread, inside share.

    Args:
        runs: name -> a run handle (``.config`` and ``.summary`` as
            :class:`spanlib.book.runs.RunHandle`); untrained runs
            (``config.run.train`` false) are left out.
    """
    health = {}
    for name, run in runs.items():
        if not run.config.run.train:
            continue
        last = run.summary["last"]
        health[name] = {
            "steps": run.summary["steps"], "log K": math.log(run.config.dino.out_dim), "DINO loss": last["dino_loss"],
            "teacher entropy": last["teacher_entropy"], "feature spread": last["embed_std"],
            "inside share": last.get("inside_share", NAN),
        }
    return pd.DataFrame(health).T




@book_table
def references_table(references: Mapping[str, Any]) -> pd.DataFrame:
    """The references of an attention table as rows by organ: the oracle, the mean mask, each map kind.

    Args:
        references: ``{"oracle": {organ: v}, "mean_mask": {organ: v}, "maps": {kind: {organ: v}}}``
            (:func:`spanlib.eval.references.attention_references`; a summary's ``attention_references``).
    """
    rows = {"oracle (masks pooled to the grid)": references["oracle"],
            "mean mask of the training films": references["mean_mask"]}
    rows.update({f"{kind} maps as attention": v for kind, v in references.get("maps", {}).items()})
    table = pd.DataFrame(rows).T
    table.index.name = "reference"
    return table


@book_table
def attention_sizes_table(headline: Mapping[str, Mapping[str, Any]], training: Mapping[str, Mapping[str, Any]],
                          sizes: Mapping[str, int]) -> pd.DataFrame:
    """Attention mAP per regimen (rows) and organ, at the headline and at the training size (column groups).

    Args:
        headline, training: regimen -> organ -> the evaluation's scores (``mAP``), or a summary number.
        sizes: ``{"headline": side, "training": side}`` (:func:`spanlib.book.attention.scoring_sizes`).
    """
    def value(s: Any) -> float:
        return summary_value(s["mAP"] if isinstance(s, Mapping) and "mAP" in s else s)

    columns = {}
    for which, scores in (("headline", headline), ("training", training)):
        label = f"{sizes[which]} px ({which})"
        for regimen, organs in scores.items():
            for organ, s in organs.items():
                columns.setdefault((label, organ), {})[regimen] = value(s)
    table = pd.DataFrame(columns)
    table.columns.names = ["scored at", "organ"]
    return table


@book_table
def summary_references_table(summary: Mapping[str, Any], size: str = "headline") -> pd.DataFrame:
    """:func:`references_table` of a summary at the ``headline`` or ``training`` grid (empty without references)."""
    refs = summary.get("attention_references" + ("" if size == "headline" else "_training"))
    return references_table(refs) if refs else pd.DataFrame()

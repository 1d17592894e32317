"""The book's tables and the readings drawn from them (pandas in, pandas or text out).

Each function turns what an evaluation or a summary returns into the table a
chapter shows, or into the sentence it prints about that table; a reading
that depends on a threshold ("close to chance", "has only begun") is decided
here, where it is tested, not in a notebook cell. The paper's published
numbers live in the book (:mod:`spanlib.book.paper`) and are passed in:
``paper`` maps organ -> (paper row -> value), ``paper_rows`` our regimen ->
the paper's row name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

NAN = float("nan")

CHANCE_AUC_BOUND = 65.0
"""Below this AUC with every label, the frozen features are read as not carrying the defects."""

BEGUN_NATS = 1.0
"""A DINO loss less than this many nats below log K everywhere: self-distillation has only begun."""


def summary_value(v: Any) -> float:
    """A summary entry's value: the mean of an entry ``{"mean", "ci95", "seeds"}``, else the value itself."""
    return v["mean"] if isinstance(v, dict) else v


def _paper(paper: Mapping[str, Mapping[str, float]], organ: str, regimen: str, paper_rows: Mapping[str, str]) -> float:
    return paper.get(organ, {}).get(paper_rows.get(regimen) or "", NAN)


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


def linear_probe_table(results: Mapping[str, Mapping[str, Any]], paper_mauc: Mapping[str, float],
                       paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """Per regimen (index): mAUC, the paper's mAUC and ``AUC <finding>`` columns of ``evaluate("linear")``."""
    rows = []
    for regimen, res in results.items():
        row = {"regimen": regimen, "mAUC": res["mAUC"], "paper mAUC": paper_mauc.get(paper_rows.get(regimen) or "", NAN)}
        row.update({f"AUC {k}": v for k, v in res["auc"].items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("regimen")


def per_finding_auc(table: pd.DataFrame) -> pd.DataFrame:
    """The ``AUC <finding>`` columns of :func:`linear_probe_table`, named by finding."""
    return table[[c for c in table.columns if c.startswith("AUC ")]].rename(columns=lambda c: c[4:])


def fewshot_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per regimen and number of labels: mean AUC, its 95% interval and the number of draws."""
    rows = []
    for regimen, res in results.items():
        for n, s in res["sizes"].items():
            rows.append({"regimen": regimen, "labels": int(n), "AUC": s["mean"], "95% CI low": s["ci95"][0],
                         "95% CI high": s["ci95"][1], "draws": len(s["aucs"])})
    return pd.DataFrame(rows)


def all_labels_check(all_labels: Mapping[str, Mapping[str, Any]], fewshot: pd.DataFrame) -> pd.DataFrame:
    """Per regimen: the linear probe's AUC with every training label beside the few-label AUC at the most labels."""
    most = fewshot["labels"].max()
    return pd.DataFrame({r: {"AUC, all training labels": res["mAUC"],
                             f"AUC, {most} labels": fewshot[(fewshot.regimen == r) & (fewshot.labels == most)]["AUC"].iloc[0]}
                         for r, res in all_labels.items()}).T


def fewshot_verdict(check: pd.DataFrame, img_size: int, patch_size: int, epochs: int, part_size: int,
                    chance_bound: float = CHANCE_AUC_BOUND) -> str:
    """What the all-labels check says about the few-label curves (Markdown).

    Args:
        check: :func:`all_labels_check`.
        img_size, patch_size, epochs: the model's input side, patch side and training epochs.
        part_size: the side of the data's part images in pixels.
        chance_bound: below this best AUC the features are read as not carrying the defects.
    """
    best_all = check["AUC, all training labels"].max()
    return (
        f"With every label the best regimen reaches {best_all:.1f} AUC, "
        + ("close to chance: at this scale the frozen features do not carry the defects, so the few-label curves "
           "above cannot show the paper's gap, and they do not. "
           if best_all < chance_bound else "so the features do carry the defects and the few-label curves compare the regimens. ")
        + f"The models here see the parts at {img_size} pixels through {patch_size}-pixel "
        f"patches after {epochs} epochs from random weights; the generated defects (pin holes, hairline "
        f"cracks, small burrs) are a few pixels across at the data's {part_size} pixels, and "
        f"{part_size / img_size:g} times smaller at the model's input. The paper's models started from DINO's ImageNet weights and saw the Kaggle parts at 224 pixels. To run "
        "the comparison where it can succeed, use the `paper` preset on a GPU, or real casting images "
        "(`--reader casting`, see the data chapter)."
    )


def summary_header(summary: Mapping[str, Any], n_seeds: int) -> str:
    """The results chapter's opening line: data, preset, seeds (Markdown)."""
    return (
        f"**Data:** {summary['data']} ({summary['data_description']}). **Preset:** `{summary['preset']}`. "
        f"**Seeds:** {summary['seeds']}. Values in percent"
        + ("; with several seeds, means (the summary file also has the 95% intervals and every seed's value)."
           if n_seeds > 1 else "; one seed, so no interval: the text below claims no ordering.")
    )


def summary_attention_rows(summary: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]],
                           paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """One row per regimen and organ: the summary's attention mAP (``this book``) and the paper's (``paper (JSRT)``)."""
    rows = []
    for regimen, res in summary["regimens"].items():
        for organ, v in res["attention_mAP"].items():
            rows.append({"regimen": regimen, "organ": organ, "this book": summary_value(v),
                         "paper (JSRT)": paper[organ].get(paper_rows.get(regimen) or "", NAN)})
    return pd.DataFrame(rows)


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


def attention_ranking(summary: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]],
                      baselines: Sequence[str] = ("dino", "dino_cxr")) -> str:
    """Regimens ranked by mean attention mAP, and the best SPAN regimen's gap to the best baseline (Markdown)."""
    mean_map = mean_attention_map(summary)
    best_baseline = max(baselines, key=lambda r: mean_map[r])
    lines = [f"- `{r}`: mean attention mAP {m:.1f}" for r, m in sorted(mean_map.items(), key=lambda kv: -kv[1])]
    span_best = max((r for r in mean_map if r.startswith("span_")), key=lambda r: mean_map[r])
    paper_gap = paper_mean(paper, "SPAN deformable") - paper_mean(paper, "DINO (CheX augm.)")
    return (
        "Regimens by mean attention mAP over the three organs:\n\n" + "\n".join(lines)
        + f"\n\nThe best SPAN regimen here, `{span_best}`, is {mean_map[span_best] - mean_map[best_baseline]:+.1f} mAP "
        f"from the best DINO baseline (`{best_baseline}`); the paper reports +{paper_gap:.1f} for deformable SPAN over "
        "DINO (CheX augm.) on JSRT."
    )


def ordering_lines(summary: Mapping[str, Any], baselines: Sequence[str] = ("dino", "dino_cxr")) -> str:
    """The best SPAN regimen against the best baseline, per organ and for the linear probe (Markdown).

    Each line claims an ordering only where the 95% intervals over seeds
    separate (:func:`spanlib.eval.intervals.compare`).
    """
    from spanlib.eval.intervals import compare

    def entry(v: Any) -> dict[str, Any]:
        return v if isinstance(v, Mapping) and "seeds" in v else {"mean": summary_value(v), "ci95": None, "seeds": [v]}

    regimens = summary["regimens"]
    spans = [r for r in regimens if r.startswith("span_")]
    lines = []
    metrics = [(f"{organ} attention mAP", lambda res, o=organ: res["attention_mAP"][o])
               for organ in next(iter(regimens.values()))["attention_mAP"]]
    metrics.append(("linear mAUC", lambda res: res["linear_mAUC"]))
    for what, get in metrics:
        best_span = max(spans, key=lambda r: summary_value(get(regimens[r])))
        best_base = max((b for b in baselines if b in regimens), key=lambda r: summary_value(get(regimens[r])))
        lines.append("- " + compare(f"`{best_span}`", entry(get(regimens[best_span])), f"`{best_base}`",
                                    entry(get(regimens[best_base])), what))
    return "\n".join(lines)


def summary_linear_table(summary: Mapping[str, Any], paper_mauc: Mapping[str, float],
                         paper_rows: Mapping[str, str]) -> pd.DataFrame:
    """Per regimen: the summary's linear-probe mAUC (``this book``) and the paper's."""
    return pd.DataFrame(
        {"this book": {r: summary_value(res["linear_mAUC"]) for r, res in summary["regimens"].items()},
         "paper": {r: paper_mauc.get(paper_rows.get(r) or "", NAN) for r in summary["regimens"]}}
    )


def summary_fewshot_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Labelled parts (index) by regimen: the summary's few-label AUC."""
    fewshot = pd.DataFrame({r: {int(n): summary_value(v) for n, v in res.items()} for r, res in summary["fewshot"].items()})
    fewshot.index.name = "labelled parts"
    return fewshot


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


def self_distillation_has_begun_only(health: pd.DataFrame, nats: float = BEGUN_NATS) -> bool:
    """Whether every run's DINO loss is still within ``nats`` of log K (the uniform prediction)."""
    return bool((health["log K"] - health["DINO loss"]).max() < nats)


def self_distillation_reading(health: pd.DataFrame, arch: str, img_size: int, epochs: int,
                              nats: float = BEGUN_NATS) -> str:
    """How far DINO's objective got, read off :func:`health_table` (Markdown).

    Args:
        health: :func:`health_table`.
        arch, img_size, epochs: the `paper` preset's model, input side and epochs.
        nats: the margin of :func:`self_distillation_has_begun_only`.
    """
    gap = health["log K"] - health["DINO loss"]
    entropy_gap = health["log K"] - health["teacher entropy"]
    facts = (
        f"After {int(health['steps'].max())} steps at most, the DINO loss sits between {gap.min():.2f} and "
        f"{gap.max():.2f} nats below log K (the uniform prediction), and the teachers' per-image entropy between "
        f"{entropy_gap.min():.2f} and {entropy_gap.max():.2f} nats below it"
    )
    if self_distillation_has_begun_only(health, nats):
        reading = (
            ": self-distillation has only begun at the book's scale, while the SPAN runs' assigned heads already put "
            "most of their attention inside their maps (the inside share). So the SPAN-over-DINO gaps on this page "
            "measure what the attention term gives a network that DINO has barely shaped, not a difference between two "
            "converged models as in the paper, where both started from DINO's ImageNet weights."
        )
    else:
        reading = ": the self-distillation objective has made clear progress in every run."
    return (facts + reading + f" The `paper` preset ({arch}, {img_size} pixels, "
            f"{epochs} epochs) is the configuration for the paper's comparison.")

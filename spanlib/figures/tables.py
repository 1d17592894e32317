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
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

NAN = float("nan")

BEGUN_NATS = 1.5
"""A run whose DINO loss ends less than this many nats below log K has only begun self-distillation."""


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
                      baselines: Sequence[str] = ("dino_start", "dino", "dino_cxr")) -> str:
    """Regimens ranked by mean attention mAP, and the best SPAN regimen's gap to the best baseline (Markdown)."""
    mean_map = mean_attention_map(summary)
    best_baseline = max((b for b in baselines if b in mean_map), key=lambda r: mean_map[r])
    lines = [f"- `{r}`: mean attention mAP {m:.1f}" for r, m in sorted(mean_map.items(), key=lambda kv: -kv[1])]
    span_best = max((r for r in mean_map if r.startswith("span_")), key=lambda r: mean_map[r])
    paper_gap = paper_mean(paper, "SPAN deformable") - paper_mean(paper, "DINO (CheX augm.)")
    return (
        "Regimens by mean attention mAP over the three organs:\n\n" + "\n".join(lines)
        + f"\n\nThe best SPAN regimen here, `{span_best}`, is {mean_map[span_best] - mean_map[best_baseline]:+.1f} mAP "
        f"from the best DINO baseline (`{best_baseline}`); the paper reports +{paper_gap:.1f} for deformable SPAN over "
        "DINO (CheX augm.) on JSRT."
    )


def _entry(v: Any) -> dict[str, Any]:
    """A summary number as ``{"mean", "ci95", "seeds"}`` (a bare value: one seed, no interval)."""
    return v if isinstance(v, Mapping) and "seeds" in v else {"mean": summary_value(v), "ci95": None, "seeds": [v]}


def ordering_lines(summary: Mapping[str, Any], baselines: Sequence[str] = ("dino_start", "dino", "dino_cxr")) -> str:
    """The best SPAN regimen against the best baseline, per organ and for the linear probe (Markdown).

    Each line claims an ordering only where the 95% intervals over seeds
    separate (:func:`spanlib.eval.intervals.compare`).
    """
    from spanlib.eval.intervals import compare

    entry = _entry
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


def map_quality_reading(summary: Mapping[str, Any]) -> str:
    """Whether the map that fits the organs best also gives the best attention (Markdown).

    The kinds are ordered by mean Dice; the attention mAP of the best- and the
    worst-fitting kind's SPAN runs are compared per organ, an ordering claimed
    only where the seeds' intervals separate (:func:`spanlib.eval.intervals.compare`).
    """
    from spanlib.eval.intervals import compare

    dice = summary["knowledge_map_dice"]
    mean_dice = {k: sum(v.values()) / len(v) for k, v in dice.items()}
    order = sorted(mean_dice, key=mean_dice.get, reverse=True)
    best, worst = order[0], order[-1]
    regimens = summary["regimens"]
    lines = [
        "By mean Dice against the true organs the maps rank "
        + " > ".join(f"`{k}` ({mean_dice[k]:.1f})" for k in order)
        + f". Does the better prior give better attention? `span_{best}` against `span_{worst}`:",
        "",
    ]
    for organ in dice[best]:
        lines.append("- " + compare(f"`span_{best}`", _entry(regimens[f"span_{best}"]["attention_mAP"][organ]),
                                    f"`span_{worst}`", _entry(regimens[f"span_{worst}"]["attention_mAP"][organ]),
                                    f"{organ} attention mAP"))
    return "\n".join(lines)


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


def start_reading(report: Mapping[str, Any], nats: float = BEGUN_NATS, z: float = 2.0) -> str:
    """What the shared start's report says (Markdown): how far DINO got, and whether its k-NN beats no training.

    The k-NN accuracies of the start and of the untrained network are each a
    share of ``knn_test`` held-out images; their difference is read as real
    only where it exceeds ``z`` standard errors of a difference of two
    independent proportions. Both networks score the same images, and the
    report keeps no per-image predictions for a paired test; where their
    errors are positively correlated this standard error is the larger one,
    so the reading errs towards "no difference".

    Args:
        report: :func:`spanlib.book.start.start_report`'s result.
        nats: the loss gap below log K read as self-distillation under way.
        z: standard errors a k-NN difference must exceed to be read.
    """
    below, n = report["loss_below_log_k"], report["knn_test"]
    start, untrained = report["knn_accuracy"], report["knn_accuracy_random"]
    p, q = start / 100.0, untrained / 100.0
    error = 100.0 * math.sqrt((p * (1 - p) + q * (1 - q)) / n)
    loss = (f"DINO's loss ended {below:.2f} nats below log K after {report['steps']} steps, "
            + ("past" if below >= nats else "short of") + f" the {nats:g} nats this book reads as self-distillation "
            "under way. ")
    facts = (f"On the {n} held-out images of the k-NN task its features score {start:.1f}% against "
             f"{untrained:.1f}% for an untrained network (chance {report['knn_chance']:.1f}%; the difference's "
             f"standard error is {error:.1f} points). ")
    if start - untrained > z * error:
        return loss + facts + "The start's features tell the held-out classes apart better than no training does."
    if untrained - start > z * error:
        return loss + facts + ("The start's features are worse than an untrained network's at this task: what it "
                               "learned is not what tells these classes apart.")
    return loss + facts + ("Within sampling error that is no better than an untrained network: whatever the start "
                           "learned does not show in this task.")


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


def ablation_reading(ablations: Mapping[str, Any]) -> str:
    """What the two ablations show, read off their validation mAP (Markdown)."""
    chosen, preset_lambda = ablations["lambda_chosen"], ablations["preset_lambda"]
    by_terms = {(r["terms"], r["renormalize"]): r["val_mAP"] for r in ablations["terms"]}
    best = max(by_terms, key=by_terms.get)
    renorm_gain = {t: by_terms[(t, True)] - by_terms[(t, False)] for t in ("both", "inclusion", "exclusion")}
    return (
        f"On the validation films the sweep chooses lambda = {chosen:g}"
        + (", the preset's own value." if chosen == preset_lambda else
           f"; the preset uses {preset_lambda:g}, so the headline runs are not at the validation optimum.")
        + f" Of the six term settings the best on validation is `{best[0]}` with the "
        f"{'renormalised' if best[1] else 'raw'} attention ({by_terms[best]:.1f} mAP). Renormalising changes the "
        "validation mAP by " + ", ".join(f"{g:+.1f} ({t})" for t, g in renorm_gain.items())
        + ": with renormalised attention the inside and outside masses sum to one, so inclusion and exclusion are "
        "one term with weight lambda_1 + lambda_2; with the raw row (the CLS-to-CLS weight dropped) they are two. "
        "One seed: read differences of a few points as noise."
    )


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
    behind = health.index[gap < nats]
    if self_distillation_has_begun_only(health, nats):
        reading = (
            ": self-distillation has only begun at the book's scale, while the SPAN runs' assigned heads already put "
            "most of their attention inside their maps (the inside share). So the SPAN-over-DINO gaps on this page "
            "measure what the attention term gives a network that DINO has barely shaped, not a difference between two "
            "converged models as in the paper, where both started from DINO's ImageNet weights."
        )
    elif len(behind) == 0:
        reading = f": the self-distillation objective has made clear progress (at least {nats:g} nats) in every run."
    else:
        # "regimen (dataset, seed s)" -> "regimen (dataset)": the seeds of one regimen counted together
        groups = Counter(re.sub(r", seed \d+\)$", ")", str(name)) for name in behind)
        listed = ", ".join(f"{g} ({n} run{'s' if n > 1 else ''})" for g, n in groups.items())
        reading = (
            f": {len(health) - len(behind)} of {len(health)} runs end at least {nats:g} nats below log K; in the others "
            f"self-distillation has only begun: {listed}. Comparisons with those runs compare a network DINO has "
            "barely shaped, not a converged one."
        )
    return (facts + reading + f" The `paper` preset ({arch}, {img_size} pixels, "
            f"{epochs} epochs) is the configuration for the paper's comparison.")

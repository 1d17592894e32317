"""The sentences the chapters print: every reading of a table or a report, in one place.

A reading that depends on a threshold ("close to chance", "has only begun")
is decided here, where it is tested, not in a notebook cell; an ordering is
claimed only where the seeds' 95% intervals separate
(:func:`spanlib.eval.intervals.compare`). The tables the readings are drawn
from are built in :mod:`spanlib.figures` (:mod:`~spanlib.figures.tables`,
:mod:`~spanlib.figures.inspection`, :mod:`~spanlib.figures.probes`,
:mod:`~spanlib.figures.shapes`). By chapter:

* the results (07): :func:`summary_header`, :func:`start_reading`,
  :func:`attention_ranking`, :func:`ordering_lines`, :func:`map_quality_reading`,
  :func:`ablation_reading`, :func:`self_distillation_reading`; the readings of
  the references, the coverage extension and the lambda sweep are in
  :mod:`spanlib.book.results_readings` (this module would pass its size bound);
* few-label inspection (06): :func:`kept_backbone_line`, :func:`fewshot_verdict`,
  :func:`ceiling_reading`;
* Refine and Represent (09): :func:`byol_reading`;
* what shapes attention maps (10): :func:`changes`, :func:`digit_mass_lines`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from spanlib.eval.intervals import compare
from spanlib.figures.tables import mean_attention_map, paper_mean, summary_value

# ---------------------------------------------------------------------------- results (chapter 07)

BEGUN_NATS = 1.5
"""A run whose DINO loss ends less than this many nats below log K has only begun self-distillation."""


def summary_header(summary: Mapping[str, Any], n_seeds: int) -> str:
    """The results chapter's opening line: data, preset, seeds (Markdown)."""
    return (
        f"**Data:** {summary['data']} ({summary['data_description']}). **Preset:** `{summary['preset']}`. "
        f"**Seeds:** {summary['seeds']}. Values in percent"
        + ("; with several seeds, means (the summary file also has the 95% intervals and every seed's value)."
           if n_seeds > 1 else "; one seed, so no interval: the text below claims no ordering.")
    )


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


def map_quality_reading(summary: Mapping[str, Any]) -> str:
    """Whether the map that fits the organs best also gives the best attention (Markdown).

    The kinds are ordered by mean Dice; the attention mAP of the best- and the
    worst-fitting kind's SPAN runs are compared per organ, an ordering claimed
    only where the seeds' intervals separate (:func:`spanlib.eval.intervals.compare`).
    """
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


# ---------------------------------------------------------------------------- few-label inspection (chapter 06)

CHANCE_AUC_BOUND = 65.0
"""Below this AUC with every label, the frozen features are read as not carrying the defects."""


def kept_backbone_line(chosen: Mapping[str, Any]) -> str:
    """Which SPAN backbone the few-label probe keeps, and why (Markdown; see :func:`spanlib.book.summary.part_regimens`)."""
    baselines = "Its baselines: " + ", ".join(f"`{r}`" for r in chosen["runs"] if r != chosen["kept_name"]) + "."
    if not chosen["attention"]:  # no part masks: the stated rule instead of a choice by attention
        return (f"The paper keeps the SPAN backbone with the best attention on the parts; here {chosen['rule']}, "
                f"shown as `{chosen['kept_name']}`. " + baselines)
    scores = ", ".join(f"`{r}` {m:.1f}" for r, m in chosen["attention"].items())
    return (f"The few-label probe keeps the SPAN backbone with the best attention mAP on the *training* parts "
            f"(never the test parts), as the paper does: {scores}, so `{chosen['kept']}`, shown as "
            f"`{chosen['kept_name']}`. " + baselines)


def fewshot_verdict(check: pd.DataFrame, img_size: int, patch_size: int, epochs: int, part_size: int,
                    chance_bound: float = CHANCE_AUC_BOUND, target: float = 85.0) -> str:
    """What the all-labels check says about the few-label curves (Markdown).

    Args:
        check: :func:`all_labels_check`.
        img_size, patch_size, epochs: the model's input side, patch side and training epochs.
        part_size: the side of the data's part images in pixels.
        chance_bound: below this best AUC the features are read as not carrying the defects.
        target: the all-label AUC at which the comparison is read as able to succeed.
    """
    best_all = check["AUC, all training labels"].max()
    if best_all < chance_bound:
        reading = ("close to chance: the frozen features do not carry the defects, so the few-label curves "
                   "above cannot show the paper's gap. ")
    elif best_all < target:
        reading = (f"above chance but short of {target:g}: the features carry the defects only weakly, so read the "
                   "few-label gaps with that in mind. ")
    else:
        reading = "so the features do carry the defects and the few-label curves compare the regimens. "
    return (
        f"With every label the best regimen reaches {best_all:.1f} AUC, " + reading
        + f"The models here see the {part_size}-pixel parts at {img_size} pixels through {patch_size}-pixel patches "
        f"after {epochs} epochs; the paper's models started from DINO's ImageNet weights and saw the Kaggle parts at "
        "224 pixels. To run the comparison at that scale, use the `paper` preset on a GPU, or real casting images "
        "(`--reader casting`, see the data chapter)."
    )


def ceiling_reading(ceiling: Mapping[str, Any], best_probe: float, chance_bound: float = CHANCE_AUC_BOUND) -> str:
    """What training *with* the labels says about a probe near chance (Markdown).

    Args:
        ceiling: :func:`spanlib.eval.ceiling.supervised_ceiling`'s result.
        best_probe: the best regimen's all-label AUC on frozen features.
        chance_bound: below this AUC a network is read as not having learned the label.
    """
    auc = ceiling["auc"]
    vit, cnn, conv = auc["vit"], auc["cnn"], auc.get("vit_conv_stem")
    stem = ceiling.get("stem", "patch")
    facts = (f"Trained end to end on all {ceiling['train']} labelled parts for {ceiling['epochs']} epochs at "
             f"{ceiling['img_size']} pixels, a small CNN reaches {cnn:.1f} AUC on the test parts and this book's ViT "
             f"(the same shape, from random weights, {stem} stem) {vit:.1f}"
             + (f", the same ViT with a convolutional stem {conv:.1f}" if conv is not None else "")
             + f", against {best_probe:.1f} for the best frozen features. ")
    if cnn < chance_bound:
        return facts + ("Not even the CNN finds the label with every example: at this input size the images do not "
                        "show it clearly enough, whatever the backbone.")
    if vit < chance_bound:
        if conv is not None and conv >= chance_bound:
            return facts + ("The defects are in the images, and this ViT does not learn them even with the labels. "
                            "With a convolutional stem (`model.stem: conv`) the same transformer learns part of "
                            "them, still short of the CNN: from so little data the patchify stem finds no local "
                            "detector, and locality in the first layer gives some of it back. Self-supervision has "
                            "to find the defects without labels, which is harder still; the gap between the "
                            "regimens that the paper shows needs its setting, a ViT pretrained on ImageNet, at 224 "
                            "pixels.")
        return facts + ("The defects are in the images, but this ViT does not learn them even with the labels: with "
                        "this little data and no convolution's locality it finds no local detector, so no "
                        "self-supervised objective can give its features one. The gap between the regimens that the "
                        "paper shows needs its setting: a ViT pretrained on ImageNet, at 224 pixels.")
    if best_probe < chance_bound:
        return facts + ("This ViT can learn the defects with the labels, but the self-supervised runs have not: the "
                        "frozen features fall short of what the backbone can hold, so longer or larger pretraining "
                        "is what the few-label comparison is waiting for.")
    return facts + "The frozen features hold part of what the backbone can learn with every label."


# ---------------------------------------------------------------------------- Refine and Represent (chapter 09)

LEVEL = 0.05
"""Two scores closer than this (points) are read as level."""


def points_apart(table: pd.DataFrame, a: str, b: str, metric: str, level: float = LEVEL) -> str:
    """``level with`` or ``x.y points above/below``: encoder ``a`` against ``b`` on ``metric``."""
    diff = table.loc[a, metric] - table.loc[b, metric]
    if abs(diff) < level:
        return "level with"
    return f"{abs(diff):.1f} points {'above' if diff > 0 else 'below'}"


def byol_reading(table: pd.DataFrame, k: int, ks: Sequence[int], n_test: int, auc_se: float,
                 iou_se: Mapping[str, float]) -> str:
    """The chapter's reading of the probe table (Markdown bullets).

    Args:
        table: :func:`probe_table`.
        k: the preset's K (the run ``object, K = k`` is the method).
        ks: the K of the ablation.
        n_test: number of test films.
        auc_se: standard error of one mAUC of the main run.
        iou_se: reference encoder -> paired standard error of the mIoU difference to the main run
            (``plain BYOL``, ``random init``, ``superpixels``).
    """
    main = f"object, K = {k}"
    best = max((f"object, K = {x}" for x in ks), key=lambda n: table.loc[n, "linear mAUC"])
    t = table
    lines = [
        f"- **Linear probe**: object-level BYOL with K = {k} scores {t.loc[main, 'linear mAUC']:.1f} mAUC, "
        f"{points_apart(t, main, 'plain BYOL', 'linear mAUC')} plain BYOL ({t.loc['plain BYOL', 'linear mAUC']:.1f}) "
        f"and {points_apart(t, main, 'random init', 'linear mAUC')} the untrained encoder "
        f"({t.loc['random init', 'linear mAUC']:.1f}); across K the best is {best} "
        f"({t.loc[best, 'linear mAUC']:.1f}). With {n_test} test films, one mAUC has a standard "
        f"error of about {auc_se:.1f} points (Hanley and McNeil per finding, findings treated as independent), so a "
        f"difference between two encoders needs roughly {2 * 2 ** 0.5 * auc_se:.0f} points to stand out.",
        f"- **Segmentation probe**: K = {k} reaches {t.loc[main, 'segmentation mIoU']:.1f} mIoU, "
        f"{points_apart(t, main, 'plain BYOL', 'segmentation mIoU')} plain BYOL "
        f"({t.loc['plain BYOL', 'segmentation mIoU']:.1f}; paired standard error over films "
        f"{iou_se['plain BYOL']:.1f}) and {points_apart(t, main, 'random init', 'segmentation mIoU')} the untrained "
        f"encoder ({t.loc['random init', 'segmentation mIoU']:.1f}; paired standard error "
        f"{iou_se['random init']:.1f}).",
        f"- **Refinement against the priors alone**: superpixel pooling scores "
        f"{t.loc['superpixels', 'linear mAUC']:.1f} mAUC and "
        f"{t.loc['superpixels', 'segmentation mIoU']:.1f} mIoU; K = {k} is "
        f"{points_apart(t, main, 'superpixels', 'linear mAUC')} it on the linear probe and "
        f"{points_apart(t, main, 'superpixels', 'segmentation mIoU')} it on segmentation (paired standard error "
        f"{iou_se['superpixels']:.1f}).",
        "- **One seed.** Every run here is one training seed; seed-to-seed variation adds to the test-set noise above.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- attention shapes (chapter 10)

LOSS_AND_VIEW_PAIRS: tuple[tuple[str, str], ...] = (
    ("untrained", "dino_same"), ("untrained", "nce_same"), ("untrained", "dino_digit"), ("untrained", "nce_digit"),
    ("dino_same", "dino_digit"), ("nce_same", "nce_digit"), ("dino_digit", "nce_digit"),
)
"""The changes read in the loss-and-views comparison: (from, to) variants."""


def change(table: pd.DataFrame, variants: Mapping[str, Any], a: str, b: str, column: str) -> str:
    """``<b> raises|lowers|leaves <column> from x (<a>) to y``, read off the study's table."""
    x, y = table.loc[variants[a].label, column], table.loc[variants[b].label, column]
    word = "raises" if y > x else "lowers" if y < x else "leaves"
    return f"{variants[b].label} {word} {column} from {x:.1f} ({variants[a].label}) to {y:.1f}"


def changes(table: pd.DataFrame, variants: Mapping[str, Any], columns: Sequence[str],
            pairs: Sequence[tuple[str, str]] = LOSS_AND_VIEW_PAIRS) -> str:
    """:func:`change` for every pair, one line each, a blank line after each column's group."""
    lines: list[str] = []
    for column in columns:
        lines += [change(table, variants, a, b, column) for a, b in pairs]
        lines.append("")
    return "\n".join(lines)


def digit_mass_lines(variants: Mapping[str, Any], names: Sequence[str], flat: float) -> str:
    """Per variant, the range over heads of the attention mass on the digit, against a flat map's share."""
    lines = []
    for n in names:
        r = variants[n]
        mass = r.head_means("digit_mass")
        lines.append(f"{r.label}: {mass.min():.2f} to {mass.max():.2f} % on the digit across heads "
                     f"(a flat map: {flat:.2f} %; the most, {mass.max() / flat:.1f} times the flat share)")
    return "\n".join(lines)


def build_dice(builds: Mapping[str, Mapping[str, Any]]) -> tuple[pd.DataFrame | None, str]:
    """What the map builds' reports say of their maps' Dice on the set's own masks: a table and a line (Markdown).

    Args:
        builds: kind -> the build's ``report.json`` (:func:`spanlib.maps.build.build_knowledge_maps`).

    Returns:
        ``(percent per kind and organ, or None, the reading)``; without masks in the set the
        table is None and the line says so.
    """
    scored = {kind: report["dice"] for kind, report in builds.items() if report.get("dice")}
    if not scored:
        return None, ("The set has no masks of the maps' organs, so the builds could not score their maps: "
                      "their Dice needs an annotated set (`templates dice --maps DIR --data ANNOTATED`).")
    table = 100 * pd.DataFrame(scored).T
    table["mean"] = table.mean(axis=1)
    films = {report.get("dice_films") for report in builds.values() if report.get("dice")}
    line = (f"Each build scored its maps against the set's own masks ({', '.join(map(str, sorted(films)))} films, "
            "each at its own size).")
    deformable = builds.get("deformable", {})
    if "fell_back" in deformable:
        line += (f" Of the {deformable['count']} registered films, {deformable['fell_back']} fell back "
                 f"(to an affine transform or the {deformable.get('fallback_template')} maps).")
    return table, line

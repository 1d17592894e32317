"""The attention-shapes chapter's sentences, each read off the build's own study table.

The chapter (``notebooks/10_attention_shapes.md``) compares variants of a
small ViT trained on cluttered digits. What it says about them (which views
move the attention onto the digit, which variant is best, whether a loss has
learned its task, what several crops or a coarser grid do) is decided here
from the numbers of the run that built the book, so a rebuild that changes
the numbers changes the words. Every comparison is of means over the heads
(:meth:`spanlib.attention_study.study.StudyResults.table`), so that one lucky
head does not decide. The variants are told apart by their configuration
(loss, views, crops, grid, steps), not by their names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spanlib.figures.shapes import chance_loss, last_logged

AP, POINTING, CLUTTER = "AP, mean of heads", "pointing, mean of heads", "digit vs clutter AP, mean of heads"
"""The study table's columns the readings compare."""

SCORE_NAMES = {AP: "pixel AP", POINTING: "the pointing game", CLUTTER: "digit vs clutter AP"}

NEAR_CHANCE = 0.9
"""A training loss above this share of its chance level has learned (next to) nothing of its task."""

NEARLY_FLAT = 3.0
"""Maps whose most digit-loving head puts less than this multiple of a flat map's share on the digit are nearly flat."""

LOSS_NAMES = {"dino": "DINO", "nce": "NCE"}
VIEW_NAMES = {"same": "crops of one canvas", "digit_only": "views sharing only the digit"}


def _value(table: pd.DataFrame, variant: Any, column: str) -> float:
    return float(table.loc[variant.label, column])


def _relation(x: float, reference: float, digits: int = 1) -> str:
    """``above``, ``below`` or ``level with``, as the table shows the two numbers (rounded to ``digits``)."""
    x, reference = round(x, digits), round(reference, digits)
    return "above" if x > reference else "below" if x < reference else "level with"


def _name(variant: Any) -> str:
    cfg = variant.config
    return f"{LOSS_NAMES.get(cfg.loss, cfg.loss)} with {VIEW_NAMES.get(cfg.views, cfg.views)}"


def views_reading(table: pd.DataFrame, variants: Mapping[str, Any], names: Sequence[str],
                  columns: Sequence[str] = (AP, CLUTTER)) -> str:
    """Where each trained variant of the loss-and-views comparison ends against the untrained network.

    Args:
        table: the study's table (variants by label).
        variants: name -> :class:`~spanlib.attention_study.study.VariantResult`.
        names: the comparison's variants, the untrained one (no steps) among them.
        columns: the scores compared.

    Returns:
        One sentence per trained variant, then whether the views order them as Zhang found
        (every same-view variant below the untrained network on every score, every digit-only one above).

    Raises:
        ValueError: no untrained variant among ``names``.
    """
    untrained = [variants[n] for n in names if variants[n].config.steps == 0]
    if not untrained:
        raise ValueError(f"no untrained variant among {list(names)}: nothing to read the changes against")
    base = untrained[0]
    trained = [variants[n] for n in names if variants[n].config.steps > 0]
    lines, relations = [], {}
    for v in trained:
        parts = []
        for c in columns:
            x, ref = _value(table, v, c), _value(table, base, c)
            relation = relations[(v.config.views, c, v.label)] = _relation(x, ref)
            parts.append(f"{relation} it on {SCORE_NAMES.get(c, c)} ({x:.1f} against {ref:.1f})")
        lines.append(f"{_name(v)} ends " + ", and ".join(parts) + ".")
    same = [r for (views, _, _), r in relations.items() if views == "same"]
    digit = [r for (views, _, _), r in relations.items() if views == "digit_only"]
    if same and digit and all(r == "below" for r in same) and all(r == "above" for r in digit):
        verdict = ("The views decide the direction, as Zhang found: crops of one canvas move the attention off the "
                   "digit, below where the untrained network has it, and views sharing only the digit move it "
                   "onto the digit, above the untrained network.")
    else:
        verdict = ("The views do not order the variants as cleanly as Zhang found: not every variant on crops of "
                   "one canvas ends below the untrained network, or not every one on digit-only views above it.")
    return "\n".join(["Against the untrained network (means over the heads):", *lines, verdict])


def best_reading(table: pd.DataFrame, variants: Mapping[str, Any], names: Sequence[str], column: str = CLUTTER) -> str:
    """Which trained variant of a comparison scores highest on ``column``, and which lowest."""
    trained = [variants[n] for n in names if variants[n].config.steps > 0]
    if len(trained) < 2:
        raise ValueError(f"a best of {len(trained)} trained variants means nothing")
    scores = {v.label: _value(table, v, column) for v in trained}
    top, low = max(scores, key=scores.get), min(scores, key=scores.get)
    best = next(v for v in trained if v.label == top)
    worst = next(v for v in trained if v.label == low)
    ties = [k for k, s in scores.items() if round(s, 1) == round(scores[top], 1) and k != top]
    said = f"{_name(best)} is the best of the {len(trained)} on {SCORE_NAMES.get(column, column)} ({scores[top]:.1f})"
    if ties:
        said += f", level at the table's precision with {', '.join(ties)}"
    return f"{said}; {_name(worst)} the lowest ({scores[low]:.1f})."


def learning_reading(variants: Mapping[str, Any], names: Sequence[str], near: float = NEAR_CHANCE) -> str:
    """Per trained variant: its last training loss against its chance level, and whether it has learned its task.

    A loss above ``near`` times its chance level (log(2N - 1) for NCE, log K
    for DINO) has learned next to nothing; NCE's share of views whose most
    similar view is their partner is given beside its chance (1 in 2N - 1).
    """
    lines = []
    for n in names:
        v = variants[n]
        if v.config.steps == 0:
            continue
        loss, chance = last_logged(v.log, "loss"), chance_loss(v.config)
        if not math.isfinite(loss):
            lines.append(f"{_name(v)}: no training loss logged.")
            continue
        word = "stays near" if loss > near * chance else "falls well below"
        line = f"{_name(v)}: the loss {word} its chance level ({loss:.2f} against {chance:.2f} nats)"
        top1 = last_logged(v.log, "positive_top1")
        if v.config.loss == "nce" and math.isfinite(top1):
            line += (f"; it finds the partner view for {top1:.0f}% of the views "
                     f"(chance {100 / (2 * v.config.optim.batch_size - 1):.1f}%)")
        lines.append(line + ".")
    return "\n".join(lines)


def crops_reading(table: pd.DataFrame, variants: Mapping[str, Any], names: Sequence[str],
                  columns: Sequence[str] = (AP, POINTING, CLUTTER)) -> str:
    """Each variant with several crops per branch against the one with one crop, on every score."""
    one = [variants[n] for n in names if variants[n].config.crops == 1]
    if not one:
        raise ValueError(f"no variant with one crop per branch among {list(names)}")
    base, lines = one[0], []
    for n in names:
        v = variants[n]
        if v is base:
            continue
        relations = [(c, _relation(_value(table, v, c), _value(table, base, c))) for c in columns]
        below = sum(r == "below" for _, r in relations)
        detail = "; ".join(f"{SCORE_NAMES.get(c, c)} {_value(table, v, c):.1f} against {_value(table, base, c):.1f}"
                           for c in columns)
        lines.append(f"{v.config.crops} crops per branch: below one crop on {below} of {len(columns)} scores "
                     f"averaged over the heads ({detail}).")
    return "\n".join(lines)


def resolution_reading(table: pd.DataFrame, variants: Mapping[str, Any], names: Sequence[str]) -> str:
    """What each coarser grid does to the scores, relative to the finest grid of the comparison.

    Says, for each coarser variant, how much of the finest grid's pixel AP,
    pointing game and digit vs clutter AP it keeps, and whether the digit vs
    clutter AP holds up better (keeps a larger share) than the other two.
    """
    fine = max((variants[n] for n in names), key=lambda v: v.config.grid)
    lines = []
    for n in names:
        v = variants[n]
        if v.config.grid == fine.config.grid:
            continue
        kept = {c: _value(table, v, c) / _value(table, fine, c) if _value(table, fine, c) else math.nan
                for c in (AP, POINTING, CLUTTER)}
        holds = kept[CLUTTER] > max(kept[AP], kept[POINTING])
        why = (f"input {v.config.model.img_size} px" if v.config.model.img_size != fine.config.model.img_size
               else f"patch {v.config.model.patch_size}")
        lines.append(
            f"A {v.config.grid} x {v.config.grid} grid ({why}) keeps {kept[AP]:.0%} of the "
            f"{fine.config.grid} x {fine.config.grid} grid's pixel AP, {kept[POINTING]:.0%} of its pointing game and "
            f"{kept[CLUTTER]:.0%} of its digit vs clutter AP: the last holds up "
            + ("better than the other two." if holds else "no better than the other two."))
    return "\n".join(lines)


def flatness_reading(variants: Mapping[str, Any], names: Sequence[str], flat: float,
                     nearly_flat: float = NEARLY_FLAT) -> str:
    """How strongly the most digit-loving head of the trained variants looks at the digit, against a flat map."""
    best, who = -math.inf, None
    for n in names:
        v = variants[n]
        if v.config.steps == 0:
            continue
        mass = float(np.nanmax(v.head_means("digit_mass")))
        if mass > best:
            best, who = mass, v
    if who is None or not flat > 0:
        return "No trained variant, or no flat share to compare with."
    ratio = best / flat
    verdict = ("The maps are nearly flat: " if ratio < nearly_flat else "The maps are not flat: ")
    return (verdict + f"the head that favours the digit most ({who.label}) puts {best:.2f}% of its attention on "
            f"the digit's pixels, {ratio:.1f} times a flat map's {flat:.2f}%.")


def untrained_reading(table: pd.DataFrame, variants: Mapping[str, Any], names: Sequence[str],
                      reference: Mapping[str, float]) -> str:
    """Whether the untrained network's heads already rank the digit above a flat map (pixel AP, means over heads)."""
    untrained = [variants[n] for n in names if variants[n].config.steps == 0]
    if not untrained:
        raise ValueError(f"no untrained variant among {list(names)}")
    ap, flat = _value(table, untrained[0], AP), float(reference["ap"])
    relation = _relation(ap, flat)
    said = {"above": "already rank the digit above a flat map", "below": "rank the digit below a flat map",
            "level with": "rank the digit no better than a flat map"}[relation]
    return f"The untrained network's heads {said}: pixel AP {ap:.1f} averaged over the heads, a flat map {flat:.1f}."

"""Tables and readings of the attention-shapes chapter, over the study's variants.

``variants`` is :attr:`spanlib.attention_study.StudyResults.variants`: name ->
a variant's result with ``label``, ``config`` (``loss``, ``batch_size``,
``out_dim``, ``steps``), ``log`` (records), ``seconds`` and ``head_means``.
"""

from __future__ import annotations

import math
from operator import attrgetter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

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


def last_logged(log: Sequence[Mapping[str, Any]], key: str) -> float:
    """The last value of ``key`` in a log (NaN when never logged)."""
    records = [r for r in log if key in r]
    return records[-1][key] if records else float("nan")


def chance_loss(config: Any) -> float:
    """The loss of a model that has learned nothing: log(2N - 1) for NCE over N canvases, log K for DINO."""
    return math.log(2 * config.optim.batch_size - 1) if config.loss == "nce" else math.log(config.dino.out_dim)


def loss_table(variants: Mapping[str, Any], names: Sequence[str]) -> pd.DataFrame:
    """Per trained variant: final loss, its chance level, NCE positive top-1, DINO teacher entropy, seconds."""
    return pd.DataFrame([{"variant": variants[n].label, "final loss": last_logged(variants[n].log, "loss"),
                          "chance level": chance_loss(variants[n].config),
                          "NCE positive top-1": last_logged(variants[n].log, "positive_top1"),
                          "DINO teacher entropy": last_logged(variants[n].log, "teacher_entropy"),
                          "training seconds": variants[n].seconds}
                         for n in names if variants[n].config.steps > 0]).set_index("variant")


def digit_mass_lines(variants: Mapping[str, Any], names: Sequence[str], flat: float) -> str:
    """Per variant, the range over heads of the attention mass on the digit, against a flat map's share."""
    lines = []
    for n in names:
        r = variants[n]
        mass = r.head_means("digit_mass")
        lines.append(f"{r.label}: {mass.min():.2f} to {mass.max():.2f} % on the digit across heads "
                     f"(a flat map: {flat:.2f} %; the most, {mass.max() / flat:.1f} times the flat share)")
    return "\n".join(lines)


VARIANT_FIELDS: tuple[str, ...] = ("loss", "views", "crops", "model.img_size", "model.patch_size", "steps")
"""The configuration fields :func:`variants_table` shows (dotted into sections; a column is named by the last part)."""


def variants_table(variants: Mapping[str, Any], fields: Sequence[str] = VARIANT_FIELDS) -> pd.DataFrame:
    """Per variant (index, its label): the configuration fields that tell the variants apart, and the grid."""
    return pd.DataFrame([{"variant": r.label, **{f.split(".")[-1]: attrgetter(f)(r.config) for f in fields},
                          "grid": f"{r.config.grid}x{r.config.grid}"}
                         for r in variants.values()]).set_index("variant")

"""Tables of the attention-shapes chapter, over the study's variants (its readings: :mod:`spanlib.book.readings` and
:mod:`spanlib.book.shapes_readings`).

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

from spanlib.figures.tables import book_frame


def last_logged(log: Sequence[Mapping[str, Any]], key: str) -> float:
    """The last value of ``key`` in a log (NaN when never logged)."""
    records = [r for r in log if key in r]
    return records[-1][key] if records else float("nan")


def chance_loss(config: Any) -> float:
    """The loss of a model that has learned nothing: log(2N - 1) for NCE over N canvases, log K for DINO."""
    return math.log(2 * config.optim.batch_size - 1) if config.loss == "nce" else math.log(config.dino.out_dim)


def loss_table(variants: Mapping[str, Any], names: Sequence[str]) -> pd.DataFrame:
    """Per trained variant: final loss, its chance level, NCE positive top-1, DINO teacher entropy, seconds."""
    return book_frame(pd.DataFrame([{"variant": variants[n].label, "final loss": last_logged(variants[n].log, "loss"),
                          "chance level": chance_loss(variants[n].config),
                          "NCE positive top-1": last_logged(variants[n].log, "positive_top1"),
                          "DINO teacher entropy": last_logged(variants[n].log, "teacher_entropy"),
                          "training seconds": variants[n].seconds}
                         for n in names if variants[n].config.steps > 0]).set_index("variant"))


VARIANT_FIELDS: tuple[str, ...] = ("loss", "views", "crops", "model.img_size", "model.patch_size", "steps")
"""The configuration fields :func:`variants_table` shows (dotted into sections; a column is named by the last part)."""


def variants_table(variants: Mapping[str, Any], fields: Sequence[str] = VARIANT_FIELDS) -> pd.DataFrame:
    """Per variant (index, its label): the configuration fields that tell the variants apart, and the grid."""
    return book_frame(pd.DataFrame([{"variant": r.label, **{f.split(".")[-1]: attrgetter(f)(r.config) for f in fields},
                          "grid": f"{r.config.grid}x{r.config.grid}"}
                         for r in variants.values()]).set_index("variant"))

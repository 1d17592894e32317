"""Tables of the BYOL chapter: training runs, mask quality, frozen-encoder probes (its reading:
:func:`spanlib.book.readings.byol_reading`).

Plain functions over what :mod:`spanlib.byol` returns (run handles with
``summary`` and ``log``, probe results as dicts), so the chapter's cells
are calls. Standard errors are computed by :mod:`spanlib.byol.evaluate`
and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from spanlib.figures.tables import book_table


@book_table
def runs_table(runs: Mapping[str, Any]) -> pd.DataFrame:
    """Per run: steps, training time, seconds per step, first and last loss, masks present in both views."""
    return pd.DataFrame({name: {"steps": run.summary["steps"], "training time (s)": run.summary["seconds"],
                                "s / step": run.summary["seconds_per_step"], "first loss": run.log[0]["loss"],
                                "last loss": run.log[-1]["loss"], "masks in both views / image": run.log[-1]["masks"]}
                         for name, run in runs.items()}).T


@book_table
def mask_quality_table(quality: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Segmentation (rows) by organ best-segment IoU, with their ``mean`` over the organs."""
    table = pd.DataFrame(quality).T
    table["mean"] = table.mean(axis=1)
    return table


@book_table
def probe_table(probes: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per encoder: linear mAUC, segmentation mIoU and ``IoU <organ>``."""
    rows = {}
    for name, res in probes.items():
        rows[name] = {"linear mAUC": res["mAUC"], "segmentation mIoU": res["mIoU"]}
        rows[name].update({f"IoU {organ.replace('_', ' ')}": v for organ, v in res["iou"].items()})
    return pd.DataFrame(rows).T


@book_table
def probe_auc_table(probes: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Encoder (rows) by finding: the linear probe's test AUC."""
    return pd.DataFrame({name: res["auc"] for name, res in probes.items()}).T


def ablation_inputs(table: pd.DataFrame, ks: Sequence[int],
                    references: Sequence[str] = ("plain BYOL", "superpixels", "random init"),
                    metrics: Sequence[str] = ("linear mAUC", "segmentation mIoU")
                    ) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """What :func:`spanlib.byol.figures.ablation_figure` draws: per metric the object runs' scores over ``ks``,
    and per reference encoder its scores."""
    by_k = {metric: [table.loc[f"object, K = {k}", metric] for k in ks] for metric in metrics}
    refs = {name: table.loc[name, list(metrics)].to_dict() for name in references}
    return by_k, refs



"""Tables and the reading of the BYOL chapter: training runs, mask quality, frozen-encoder probes.

Plain functions over what :mod:`spanlib.byol` returns (run handles with
``summary`` and ``log``, probe results as dicts), so the chapter's cells
are calls. Standard errors are computed by :mod:`spanlib.byol.evaluate`
and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

LEVEL = 0.05
"""Two scores closer than this (points) are read as level."""


def runs_table(runs: Mapping[str, Any]) -> pd.DataFrame:
    """Per run: steps, training time, seconds per step, first and last loss, masks present in both views."""
    return pd.DataFrame({name: {"steps": run.summary["steps"], "training time (s)": run.summary["seconds"],
                                "s / step": run.summary["seconds_per_step"], "first loss": run.log[0]["loss"],
                                "last loss": run.log[-1]["loss"], "masks in both views / image": run.log[-1]["masks"]}
                         for name, run in runs.items()}).T


def mask_quality_table(quality: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Segmentation (rows) by organ best-segment IoU, with their ``mean`` over the organs."""
    table = pd.DataFrame(quality).T
    table["mean"] = table.mean(axis=1)
    return table


def probe_table(probes: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per encoder: linear mAUC, segmentation mIoU and ``IoU <organ>``."""
    rows = {}
    for name, res in probes.items():
        rows[name] = {"linear mAUC": res["mAUC"], "segmentation mIoU": res["mIoU"]}
        rows[name].update({f"IoU {organ.replace('_', ' ')}": v for organ, v in res["iou"].items()})
    return pd.DataFrame(rows).T


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


def compare(table: pd.DataFrame, a: str, b: str, metric: str, level: float = LEVEL) -> str:
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
        f"{compare(t, main, 'plain BYOL', 'linear mAUC')} plain BYOL ({t.loc['plain BYOL', 'linear mAUC']:.1f}) "
        f"and {compare(t, main, 'random init', 'linear mAUC')} the untrained encoder "
        f"({t.loc['random init', 'linear mAUC']:.1f}); across K the best is {best} "
        f"({t.loc[best, 'linear mAUC']:.1f}). With {n_test} test films, one mAUC has a standard "
        f"error of about {auc_se:.1f} points (Hanley and McNeil per finding, findings treated as independent), so a "
        f"difference between two encoders needs roughly {2 * 2 ** 0.5 * auc_se:.0f} points to stand out.",
        f"- **Segmentation probe**: K = {k} reaches {t.loc[main, 'segmentation mIoU']:.1f} mIoU, "
        f"{compare(t, main, 'plain BYOL', 'segmentation mIoU')} plain BYOL "
        f"({t.loc['plain BYOL', 'segmentation mIoU']:.1f}; paired standard error over films "
        f"{iou_se['plain BYOL']:.1f}) and {compare(t, main, 'random init', 'segmentation mIoU')} the untrained "
        f"encoder ({t.loc['random init', 'segmentation mIoU']:.1f}; paired standard error "
        f"{iou_se['random init']:.1f}).",
        f"- **Refinement against the priors alone**: superpixel pooling scores "
        f"{t.loc['superpixels', 'linear mAUC']:.1f} mAUC and "
        f"{t.loc['superpixels', 'segmentation mIoU']:.1f} mIoU; K = {k} is "
        f"{compare(t, main, 'superpixels', 'linear mAUC')} it on the linear probe and "
        f"{compare(t, main, 'superpixels', 'segmentation mIoU')} it on segmentation (paired standard error "
        f"{iou_se['superpixels']:.1f}).",
        "- **One seed.** Every run here is one training seed; seed-to-seed variation adds to the test-set noise above.",
    ]
    return "\n".join(lines)

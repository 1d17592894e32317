"""The inspection chapter's tables: few-label curves and the all-label check.

The readings the few-label chapter (cast parts) prints about them are in
:mod:`spanlib.book.readings`; the results chapter's tables are in
:mod:`spanlib.figures.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd


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



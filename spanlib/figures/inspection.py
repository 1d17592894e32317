"""The inspection chapter's tables and readings: few-label curves, the all-label check, the supervised ceiling.

Everything the few-label chapter (cast parts) shows of its probes, and the
readings it prints about them: a threshold such as "near chance" is decided
here, where it is tested, not in a notebook cell. The results chapter's
tables are in :mod:`spanlib.figures.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

CHANCE_AUC_BOUND = 65.0
"""Below this AUC with every label, the frozen features are read as not carrying the defects."""


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


def kept_backbone_line(chosen: Mapping[str, Any]) -> str:
    """Which SPAN backbone the few-label probe keeps, and why (Markdown; see :func:`spanlib.book.summary.part_regimens`)."""
    scores = ", ".join(f"`{r}` {m:.1f}" for r, m in chosen["attention"].items())
    return (f"The few-label probe keeps the SPAN backbone with the best attention mAP on the *training* parts "
            f"(never the test parts), as the paper does: {scores}, so `{chosen['kept']}`, shown as "
            f"`{chosen['kept_name']}`. Its baselines: " + ", ".join(f"`{r}`" for r in chosen["runs"] if r != chosen["kept_name"])
            + ".")

"""Tables (:mod:`spanlib.figures.probes`, :mod:`spanlib.figures.shapes`) and readings (:mod:`spanlib.book.readings`) of the
BYOL and attention-shapes chapters."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

from spanlib.book import readings
from spanlib.figures import probes, shapes


def _probe(mauc, miou):
    return {"mAUC": mauc, "mIoU": miou, "iou": {"left_lung": miou, "heart": miou - 10}, "auc": {"a": mauc, "b": 50.0}}


PROBES = {"random init": _probe(55.0, 30.0), "plain BYOL": _probe(60.0, 40.0), "superpixels": _probe(60.02, 45.0),
          "object, K = 4": _probe(62.0, 50.0), "object, K = 16": _probe(64.0, 41.0)}


def test_runs_and_quality_tables():
    run = SimpleNamespace(summary={"steps": 10, "seconds": 5.0, "seconds_per_step": 0.5},
                          log=[{"loss": 4.0, "masks": 1}, {"loss": 2.0, "masks": 3.5}])
    table = probes.runs_table({"plain BYOL": run})
    assert table.loc["plain BYOL", "first loss"] == 4.0 and table.loc["plain BYOL", "masks in both views / image"] == 3.5
    quality = probes.mask_quality_table({"SLIC priors": {"heart": 20.0, "lung": 40.0}})
    assert quality.loc["SLIC priors", "mean"] == 30.0


def test_probe_tables_and_ablation_inputs():
    table = probes.probe_table(PROBES)
    assert list(table.columns) == ["linear mAUC", "segmentation mIoU", "IoU left lung", "IoU heart"]
    assert probes.probe_auc_table(PROBES).loc["plain BYOL", "a"] == 60.0
    by_k, refs = probes.ablation_inputs(table, [4, 16])
    assert by_k == {"linear mAUC": [62.0, 64.0], "segmentation mIoU": [50.0, 41.0]}
    assert refs["random init"] == {"linear mAUC": 55.0, "segmentation mIoU": 30.0}


def test_compare_and_reading():
    table = probes.probe_table(PROBES)
    assert readings.points_apart(table, "superpixels", "plain BYOL", "linear mAUC") == "level with"
    assert readings.points_apart(table, "object, K = 4", "plain BYOL", "linear mAUC") == "2.0 points above"
    assert readings.points_apart(table, "random init", "plain BYOL", "segmentation mIoU") == "10.0 points below"
    text = readings.byol_reading(table, 4, [4, 16], 100, 2.0, {"plain BYOL": 1.5, "random init": 2.5, "superpixels": 0.5})
    lines = text.split("\n")
    assert len(lines) == 4 and lines[0].startswith("- **Linear probe**: object-level BYOL with K = 4 scores 62.0 mAUC")
    assert "the best is object, K = 16 (64.0)" in lines[0] and "roughly 6 points" in lines[0]
    assert "paired standard error over films 1.5" in lines[1] and "(paired standard error 0.5)" in lines[2]


def _variant(label, loss="dino", log=(), steps=10, mass=(1.0, 3.0)):
    config = SimpleNamespace(loss=loss, views="digit", crops=1, model=SimpleNamespace(img_size=64, patch_size=8),
                             steps=steps, grid=8, optim=SimpleNamespace(batch_size=8), dino=SimpleNamespace(out_dim=256))
    return SimpleNamespace(label=label, config=config, log=list(log), seconds=2.0,
                           head_means=lambda metric: np.array(mass))


VARIANTS = {"untrained": _variant("untrained", steps=0), "dino_same": _variant("DINO, same"),
            "nce_same": _variant("NCE, same", loss="nce", log=[{"loss": 3.0, "positive_top1": 0.1}, {"loss": 2.0}])}


def test_changes_read_the_direction():
    table = pd.DataFrame({"AP": [10.0, 12.0, 10.0]}, index=["untrained", "DINO, same", "NCE, same"])
    assert readings.change(table, VARIANTS, "untrained", "dino_same", "AP") == "DINO, same raises AP from 10.0 (untrained) to 12.0"
    assert readings.change(table, VARIANTS, "dino_same", "nce_same", "AP").startswith("NCE, same lowers AP")
    assert " leaves " in readings.change(table, VARIANTS, "untrained", "nce_same", "AP")
    text = readings.changes(table, VARIANTS, ["AP", "AP"], pairs=[("untrained", "dino_same")])
    assert text.split("\n") == [readings.change(table, VARIANTS, "untrained", "dino_same", "AP"), "",
                                readings.change(table, VARIANTS, "untrained", "dino_same", "AP"), ""]


def test_loss_table_and_digit_mass():
    assert shapes.last_logged([{"loss": 1.0}, {"x": 2}], "loss") == 1.0 and math.isnan(shapes.last_logged([], "loss"))
    table = shapes.loss_table(VARIANTS, list(VARIANTS))
    assert list(table.index) == ["DINO, same", "NCE, same"]  # the untrained variant is left out
    assert table.loc["NCE, same", "chance level"] == math.log(15) and table.loc["DINO, same", "chance level"] == math.log(256)
    assert table.loc["NCE, same", "final loss"] == 2.0 and table.loc["NCE, same", "NCE positive top-1"] == 0.1
    assert math.isnan(table.loc["DINO, same", "final loss"])
    lines = readings.digit_mass_lines(VARIANTS, ["dino_same"], flat=1.5)
    assert lines == "DINO, same: 1.00 to 3.00 % on the digit across heads (a flat map: 1.50 %; the most, 2.0 times the flat share)"


def test_variants_table():
    table = shapes.variants_table(VARIANTS)
    assert list(table.columns) == ["loss", "views", "crops", "img_size", "patch_size", "steps", "grid"] and table.loc["NCE, same", "grid"] == "8x8"

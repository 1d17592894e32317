"""The attention-shapes chapter's sentences follow the numbers they are read from."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from spanlib.book import shapes_readings as R

AP, POINTING, CLUTTER = R.AP, R.POINTING, R.CLUTTER


def variant(label, loss="dino", views="digit_only", crops=1, steps=100, img_size=64, patch=8, log=(), mass=(1.0,)):
    cfg = SimpleNamespace(loss=loss, views=views, crops=crops, steps=steps, grid=img_size // patch,
                          model=SimpleNamespace(img_size=img_size, patch_size=patch),
                          optim=SimpleNamespace(batch_size=32), dino=SimpleNamespace(out_dim=1024))
    return SimpleNamespace(label=label, config=cfg, log=list(log), head_means=lambda metric: np.array(mass))


def loss_views(scores: dict[str, tuple[float, float]]):
    variants = {"untrained": variant("untrained", steps=0), "dino_same": variant("DINO same", views="same"),
                "nce_same": variant("NCE same", loss="nce", views="same"), "dino_digit": variant("DINO digit"),
                "nce_digit": variant("NCE digit", loss="nce")}
    table = pd.DataFrame({variants[n].label: {AP: ap, CLUTTER: c} for n, (ap, c) in scores.items()}).T
    return table, variants, list(variants)


def test_views_reading_says_zhangs_order_only_when_the_numbers_show_it():
    zhang = {"untrained": (20, 30), "dino_same": (18, 28), "nce_same": (15, 25), "dino_digit": (22, 33),
             "nce_digit": (25, 36)}
    table, variants, names = loss_views(zhang)
    text = R.views_reading(table, variants, names)
    assert "NCE with crops of one canvas ends below it on pixel AP (15.0 against 20.0)" in text
    assert "DINO with views sharing only the digit ends above it" in text
    assert "The views decide the direction, as Zhang found" in text
    table, variants, names = loss_views({**zhang, "dino_same": (21, 28)})
    text = R.views_reading(table, variants, names)
    assert "above it on pixel AP (21.0 against 20.0)" in text and "do not order the variants" in text
    with pytest.raises(ValueError, match="no untrained"):
        R.views_reading(table, variants, names[1:])


def test_best_reading_names_the_highest_and_the_lowest():
    table, variants, names = loss_views({"untrained": (20, 90), "dino_same": (18, 28), "nce_same": (15, 25),
                                         "dino_digit": (22, 40), "nce_digit": (25, 36)})
    text = R.best_reading(table, variants, names)
    # the untrained network is not one of the four, however high it scores
    assert text.startswith("DINO with views sharing only the digit is the best of the 4 on digit vs clutter AP (40.0)")
    assert "NCE with crops of one canvas the lowest (25.0)" in text


def test_learning_reading_reads_the_loss_against_its_chance_level():
    chance_nce, chance_dino = math.log(63), math.log(1024)
    variants = {"a": variant("a", loss="nce", log=[{"loss": 0.99 * chance_nce, "positive_top1": 2.0}]),
                "b": variant("b", views="same", log=[{"loss": 0.3 * chance_dino}]),
                "u": variant("u", steps=0)}
    text = R.learning_reading(variants, ["u", "a", "b"]).splitlines()
    assert len(text) == 2
    assert text[0].startswith("NCE with views sharing only the digit: the loss stays near its chance level")
    assert "partner view for 2% of the views (chance 1.6%)" in text[0]
    assert text[1].startswith("DINO with crops of one canvas: the loss falls well below its chance level")


def crops(values: dict[int, tuple[float, float, float]]):
    variants = {f"c{k}": variant(f"{k} crops", crops=k) for k in values}
    table = pd.DataFrame({f"{k} crops": dict(zip((AP, POINTING, CLUTTER), v)) for k, v in values.items()}).T
    return table, variants, list(variants)


def test_crops_reading_counts_the_scores_below_one_crop():
    table, variants, names = crops({1: (30, 40, 50), 2: (31, 39, 50), 4: (29, 38, 49)})
    lines = R.crops_reading(table, variants, names).splitlines()
    assert lines[0].startswith("2 crops per branch: below one crop on 1 of 3 scores")
    assert lines[1].startswith("4 crops per branch: below one crop on 3 of 3 scores")
    assert "pixel AP 29.0 against 30.0" in lines[1]


def test_resolution_reading_compares_what_each_coarse_grid_keeps():
    variants = {"base": variant("base"), "low": variant("low", img_size=32), "big": variant("big", patch=16)}
    table = pd.DataFrame({"base": {AP: 40, POINTING: 60, CLUTTER: 50}, "low": {AP: 20, POINTING: 30, CLUTTER: 45},
                          "big": {AP: 30, POINTING: 30, CLUTTER: 10}}).T
    lines = R.resolution_reading(table, variants, list(variants)).splitlines()
    assert lines[0] == ("A 4 x 4 grid (input 32 px) keeps 50% of the 8 x 8 grid's pixel AP, 50% of its pointing game "
                        "and 90% of its digit vs clutter AP: the last holds up better than the other two.")
    assert lines[1].startswith("A 4 x 4 grid (patch 16)") and lines[1].endswith("no better than the other two.")


def test_flatness_and_untrained_readings():
    variants = {"u": variant("u", steps=0, mass=(50.0,)), "a": variant("a", mass=(1.0, 2.5)),
                "b": variant("b", mass=(1.5,))}
    text = R.flatness_reading(variants, list(variants), flat=1.0)
    assert text.startswith("The maps are nearly flat: the head that favours the digit most (a) puts 2.50%")
    assert "2.5 times" in text
    assert R.flatness_reading(variants, list(variants), flat=0.5).startswith("The maps are not flat")
    table = pd.DataFrame({"u": {AP: 12.0}}).T
    assert "already rank the digit above a flat map: pixel AP 12.0" in R.untrained_reading(table, variants, ["u"], {"ap": 9.0})
    assert "below a flat map" in R.untrained_reading(table, variants, ["u"], {"ap": 15.0})

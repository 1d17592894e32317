"""The Dice the summary reports for each kind of map is the Dice of the maps the runs loaded (smoke data)."""

from __future__ import annotations

import pytest

from spanlib.book.runs import run_config, run_key
from spanlib.book.summary import map_dice
from spanlib.core.mapspec import MAP_KINDS, MapSpec, maps_folder
from spanlib.data import open_dataset
from spanlib.eval.sets import split_of
from spanlib.maps.quality import dice
from spanlib.pretrain.augment import ViewMaker
from spanlib.pretrain.loader import ViewDataset, knowledge_map_source


@pytest.fixture(scope="module")
def reported() -> dict:
    return map_dice("smoke")


@pytest.mark.parametrize("kind", MAP_KINDS)
def test_the_summary_s_dice_is_the_dice_of_what_training_loaded(reported, kind):
    key = run_key("smoke", f"span_{kind}", from_start=False)
    cfg = run_config(key)  # the configuration ensure_pretrained trains with (its maps built), without training
    spec = cfg.span.knowledge_maps
    assert spec == MapSpec(kind, str(maps_folder(MapSpec(kind), "smoke"))), "the run reads the rule's folder"
    organs = tuple(cfg.span.assigned_heads)
    test = split_of(open_dataset("folder", cfg.run.data), "test")
    # the maps exactly as the training loader holds them (uint8, at the image's size)
    loaded = ViewDataset(test, ViewMaker(cfg.views, cfg.model.img_size, organs, cfg.model.in_chans),
                         knowledge_map_source(spec, organs), seed=0, in_memory=True)
    for channel, organ in enumerate(organs):
        scores = [dice(maps[channel].numpy() >= 128, sample.masks[organ]) for maps, sample in zip(loaded.maps, test)]
        assert reported[kind][organ] == pytest.approx(100.0 * sum(scores) / len(scores), abs=1e-9), organ

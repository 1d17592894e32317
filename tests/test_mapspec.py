"""Knowledge maps named by a typed value (MapSpec), placed by one rule, read through one store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spanlib.core.configs import SpanConfig, load_preset, resolve
from spanlib.core.mapspec import MAP_KINDS, MapSpec, maps_folder
from spanlib.core.paths import project_root, runs_dir
from spanlib.maps.heuristic import heuristic_maps
from spanlib.maps.store import heuristic_knowledge_maps, resize_nearest


def test_the_one_rule_places_every_kind_for_preset_dataset_and_user_data(tmp_path):
    for kind in MAP_KINDS:
        spec = MapSpec(kind)
        assert maps_folder(spec, "book") == runs_dir("book") / "maps" / kind
        assert maps_folder(spec, "book", dataset="parts") == runs_dir("book") / "maps" / f"parts-{kind}"
        # a user's data: under data-<folder name>, whatever the dataset, never the generated set's folder
        films = tmp_path / "my-films"
        assert maps_folder(spec, "smoke", data=str(films)) == runs_dir("smoke") / "data-my-films" / "maps" / kind
        assert maps_folder(spec.at(tmp_path / "x"), "book") == tmp_path / "x"
        assert maps_folder(spec.at("runs/elsewhere"), "book") == project_root() / "runs" / "elsewhere"
    assert maps_folder(MapSpec("masks"), "book") is None


def test_the_knowledge_map_chapter_reads_its_report_from_the_rule_s_folder():
    """Notebook 02 takes every folder, the deformable report's included, from the one rule (no path of its own)."""
    text = (project_root() / "notebooks" / "02_knowledge_maps.md").read_text()
    assert "knowledge_maps_dir(MapSpec(kind)" in text and "data=data or None" in text
    assert 'for kind, folder in folders.items()' in text and '(folder / "report.json")' in text
    assert '/ "maps"' not in text and "runs_dir" not in text


def test_presets_name_a_kind_and_resolve_to_a_map_spec():
    for preset in ("smoke", "book", "paper"):
        regimens = load_preset(preset)["regimens"]
        for kind in MAP_KINDS:
            assert regimens[f"span_{kind}"]["span"]["knowledge_maps"] == {"kind": kind}
            assert resolve(preset, f"span_{kind}").span.knowledge_maps == MapSpec(kind)
    cfg = resolve("smoke", "span_deformable", {"span.knowledge_maps": "masks"})
    assert cfg.span.knowledge_maps == MapSpec("masks")
    assert cfg.to_dict()["span"]["knowledge_maps"] == {"kind": "masks", "location": None}
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_a_string_saved_by_an_older_run_converts_or_fails_clearly(tmp_path):
    assert SpanConfig.from_dict({"knowledge_maps": "triangular"}).knowledge_maps == MapSpec("triangular")
    old = SpanConfig.from_dict({"knowledge_maps": "/old/runs/book/maps/parts-deformable"}).knowledge_maps
    assert old == MapSpec("deformable", "/old/runs/book/maps/parts-deformable")
    folder = tmp_path / "my-maps"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"kind": "global", "organs": ["heart"], "size": 8}))
    assert SpanConfig.from_dict({"knowledge_maps": str(folder)}).knowledge_maps == MapSpec("global", str(folder))
    with pytest.raises(ValueError, match="neither a kind .* write \\{kind: <kind>, location"):
        SpanConfig.from_dict({"knowledge_maps": str(tmp_path / "nothing")})
    with pytest.raises(ValueError, match="kind must be one of"):
        SpanConfig.from_dict({"knowledge_maps": {"kind": "triangles"}})
    with pytest.raises(ValueError, match="take no location"):
        MapSpec("masks", "somewhere")


@pytest.mark.parametrize("size,factor", [(64, 1), (64, 2), (64, 4), (16, 3), (5, 7)])
def test_the_one_nearest_resize_is_torch_s_nearest_at_whole_upsampling_factors(size, factor):
    maps = np.random.default_rng(0).random((3, size, size)).astype(np.float32)
    ours = resize_nearest(maps, size * factor, size * factor)
    theirs = F.interpolate(torch.from_numpy(maps)[None], size=(size * factor,) * 2, mode="nearest")[0].numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_the_heuristic_through_the_store_is_the_heuristic_drawn_at_the_image_size():
    organs = ("left_lung", "right_lung", "heart")
    store = heuristic_knowledge_maps(organs, 96, 80)
    np.testing.assert_array_equal(store.maps_at("any", 96, 80), heuristic_maps(96, 80, organs).astype(np.float32))

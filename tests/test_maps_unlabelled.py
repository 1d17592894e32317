"""Knowledge maps for a set without masks: the exemplar, or the segmenter's training films, from another set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spanlib.cli import main as cli_main
from spanlib.data import CHEST_ORGANS, ChestConfig, make_chest_phantom, write_folder_dataset
from spanlib.maps.build import build_knowledge_maps
from spanlib.maps.quality import dice
from spanlib.maps.registration import RegistrationConfig
from spanlib.maps.store import load_knowledge_maps

QUICK = RegistrationConfig(affine_levels=((32, 30),), bspline_levels=((32, 4, 30),))


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An annotated set (folder format) and an unlabelled folder of films (images reader, no masks)."""
    root = tmp_path_factory.mktemp("unlabelled")
    config = ChestConfig(image_size=64)
    annotated = [make_chest_phantom(i, seed=3, config=config) for i in range(3)]
    targets = [make_chest_phantom(i, seed=4, config=config) for i in range(4)]
    films = root / "films"
    (films / "images").mkdir(parents=True)
    for s in targets:
        Image.fromarray((s.image * 255).astype(np.uint8)).save(films / "images" / f"{s.id}.png")
    return {"annotated": write_folder_dataset(root / "annotated", annotated, {"kind": "chest",
                                                                              "mask_names": list(CHEST_ORGANS)}),
            "films": films, "targets": targets}


def test_deformable_maps_from_an_exemplar_of_another_set(sets, tmp_path):
    out = tmp_path / "deformable"
    report = build_knowledge_maps("deformable", sets["films"], out, size=32, reader="images",
                                  exemplar_from=sets["annotated"], exemplar="chest_000001", registration_config=QUICK)
    assert report["count"] == 4 and report["errors"] == 0 and report["exemplar"] == "chest_000001"
    maps = load_knowledge_maps(out)
    assert maps.organs == CHEST_ORGANS
    for target in sets["targets"]:
        got = maps.maps_for(target.id)
        truth = np.stack([target.masks[o] for o in CHEST_ORGANS])[:, ::2, ::2]
        assert got.shape == (3, 32, 32) and dice(got[0] > 0.5, truth[0]) > 0.5  # the warped lung finds the lung


def test_global_average_trained_on_another_set(sets, tmp_path):
    report = build_knowledge_maps("global", sets["films"], tmp_path / "global", size=16, reader="images",
                                  segmenter_from=sets["annotated"], seg_steps=3, seg_train=3)
    assert report["built"] == 1 and report["train_images"] == 3 and report["averaged_images"] == 4
    assert load_knowledge_maps(tmp_path / "global").template.shape == (3, 16, 16)


def test_a_set_without_masks_says_where_to_get_them(sets, tmp_path, capsys):
    code = cli_main(["templates", "build", "--kind", "deformable", "--data", str(sets["films"]), "--reader", "images",
                     "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no masks" in err and "--exemplar-from" in err
    code = cli_main(["templates", "build", "--kind", "deformable", "--data", str(sets["films"]), "--reader", "images",
                     "--exemplar-from", str(sets["annotated"]), "--exemplar-id", "ghost", "--out", str(tmp_path / "o"),
                     "--no-progress"])
    assert code == 2 and "no sample 'ghost'" in capsys.readouterr().err

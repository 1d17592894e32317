"""Knowledge maps: spatial heuristics, storage, loader, Dice, and the batch tool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spanlib.cli import main as cli_main
from spanlib.maps.build import build_knowledge_maps, parse_shard, shard_ids
from spanlib.maps.heuristic import CHEST_ORGANS, fill_triangle, part_heuristic_maps, triangular_maps
from spanlib.maps.quality import dice, dice_report, resize_nearest
from spanlib.maps.registration import RegistrationConfig
from spanlib.maps.store import MapFileError, load_knowledge_maps, read_maps, save_maps


def test_triangular_maps_shape_and_dtype() -> None:
    maps = triangular_maps(64, 48)
    assert maps.shape == (3, 64, 48)
    assert maps.dtype == bool
    assert all(m.any() for m in maps)


def test_triangular_maps_follow_organ_order() -> None:
    full = triangular_maps(32, 32)
    swapped = triangular_maps(32, 32, ("heart", "left_lung"))
    np.testing.assert_array_equal(swapped[0], full[CHEST_ORGANS.index("heart")])
    np.testing.assert_array_equal(swapped[1], full[CHEST_ORGANS.index("left_lung")])


def test_patient_left_lung_is_on_image_right() -> None:
    left, right, heart = triangular_maps(100, 100)
    cols = np.arange(100)
    centroid = lambda m: (m.sum(0) * cols).sum() / m.sum()  # noqa: E731
    assert centroid(left) > 60 and centroid(right) < 40
    # the lungs mirror each other; the heart leans to the patient's left, sits low
    np.testing.assert_array_equal(left, right[:, ::-1])
    assert centroid(heart) > 50
    rows = np.nonzero(heart.any(1))[0]
    assert rows.min() > 40 and rows.max() > 75
    # lungs reach higher (apex) than the heart
    assert np.nonzero(left.any(1))[0].min() < rows.min()


def test_triangular_maps_scale_with_size() -> None:
    small = triangular_maps(50, 50).mean(axis=(1, 2))
    large = triangular_maps(200, 200).mean(axis=(1, 2))
    np.testing.assert_allclose(small, large, atol=0.02)


def test_fill_triangle_area() -> None:
    tri = fill_triangle(200, 200, ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))
    assert abs(tri.mean() - 0.5) < 0.01


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="organ"):
        triangular_maps(10, 10, ("spleen",))
    with pytest.raises(ValueError, match="positive"):
        triangular_maps(0, 10)
    with pytest.raises(ValueError, match="region"):
        part_heuristic_maps(10, 10, ("flange",))


def test_part_heuristic_hub_inside_rim() -> None:
    rim, hub = part_heuristic_maps(64, 64)
    assert not (rim & hub).any()
    assert hub[32, 32] and not rim[32, 32]
    radius = lambda m: np.hypot(*(np.stack(np.nonzero(m)) + 0.5 - 32))  # noqa: E731
    assert radius(rim).min() > radius(hub).max()


# --------------------------------------------------------------------------- storage and loader

QUICK = RegistrationConfig(affine_levels=((32, 30),), bspline_levels=((32, 4, 30),))


@pytest.fixture(scope="module")
def chest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 64-pixel chest phantoms in the folder format (4 train, 2 test)."""
    from spanlib.data import ChestConfig, make_chest_phantom, write_folder_dataset

    config = ChestConfig(image_size=64)
    samples = [make_chest_phantom(i, seed=1, config=config, split="train" if i < 4 else "test") for i in range(6)]
    root = tmp_path_factory.mktemp("chest")
    return write_folder_dataset(root, samples, {"kind": "chest", "mask_names": list(CHEST_ORGANS)})


def test_save_and_read_maps_round_trip(tmp_path: Path) -> None:
    maps = triangular_maps(16, 16)
    save_maps(tmp_path / "a.npz", maps, {"method": "deformable"})
    loaded, info = read_maps(tmp_path / "a.npz", 3, 16)
    assert loaded.dtype == np.float32 and info == {"method": "deformable"}
    np.testing.assert_array_equal(loaded, maps.astype(np.float32))


def test_read_maps_names_the_file_and_the_problem(tmp_path: Path) -> None:
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(MapFileError, match=r"garbage\.npz: unreadable map file"):
        read_maps(tmp_path / "garbage.npz")
    save_maps(tmp_path / "small.npz", np.zeros((3, 8, 8), bool))
    with pytest.raises(MapFileError, match=r"small\.npz: expected maps of size 16"):
        read_maps(tmp_path / "small.npz", 3, 16)
    with pytest.raises(MapFileError, match="expected 2 maps"):
        read_maps(tmp_path / "small.npz", 2, 8)
    save_maps(tmp_path / "range.npz", np.full((3, 8, 8), 2.0, np.float32))
    with pytest.raises(MapFileError, match=r"within \[0, 1\]"):
        read_maps(tmp_path / "range.npz")
    with pytest.raises(MapFileError, match="manifest.json: missing file"):
        load_knowledge_maps(tmp_path)


def test_resize_nearest_and_dice() -> None:
    small = np.array([[True, False], [False, True]])
    big = resize_nearest(small, 4, 4)
    assert big.shape == (4, 4) and big[:2, :2].all() and not big[:2, 2:].any()
    assert dice(small, small) == 1.0 and dice(small, ~small) == 0.0
    assert dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_parse_and_partition_shards() -> None:
    assert parse_shard(None) == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "a/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    ids = [f"s{i:02d}" for i in range(11)][::-1]
    parts = [shard_ids(ids, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(not set(a) & set(b) for a in parts for b in parts if a is not b)


# --------------------------------------------------------------------------- the batch tool


def test_cli_triangular_and_dice(chest_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tri"
    assert cli_main(["templates", "build", "--kind", "triangular", "--data", str(chest_dir), "--out", str(out),
                     "--size", "32", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "triangular" and manifest["organs"] == list(CHEST_ORGANS) and manifest["size"] == 32
    maps = load_knowledge_maps(out)
    np.testing.assert_array_equal(maps.maps_for("anything"), triangular_maps(32, 32).astype(np.float32))
    capsys.readouterr()
    assert cli_main(["templates", "dice", "--maps", str(out), "--data", str(chest_dir)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == set(CHEST_ORGANS) and all(0.3 < v < 1.0 for v in scores.values())


def test_global_average_template(chest_dir: Path, tmp_path: Path) -> None:
    report = build_knowledge_maps("global", chest_dir, tmp_path / "g", size=32, seg_train=4, seg_steps=5)
    assert report["built"] == 1 and report["train_images"] == 4 and report["averaged_images"] == 6
    maps = load_knowledge_maps(tmp_path / "g")
    assert maps.kind == "global" and maps.soft is not None and maps.soft.shape == (3, 32, 32)
    assert set(np.unique(maps.maps_for("x"))) <= {0.0, 1.0}
    np.testing.assert_array_equal(maps.template, (maps.soft >= 0.5).astype(np.float32))
    again = build_knowledge_maps("global", chest_dir, tmp_path / "g", size=32, seg_train=4, seg_steps=5)
    assert again["cached"] == 1 and again["built"] == 0


def test_deformable_end_to_end_resume_and_corruption(chest_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "def"
    first = build_knowledge_maps("deformable", chest_dir, out, size=32, registration_config=QUICK)
    assert first["count"] == 6 and first["built"] == 6 and first["errors"] == 0
    assert first["exemplar"] in {"chest_000000", "chest_000001", "chest_000002", "chest_000003"}  # auto: a train sample
    assert sum(first["methods"].values()) == 6 and "ncc_deformable" in first["quality"]
    maps = load_knowledge_maps(out)
    assert maps.kind == "deformable" and maps.organs == CHEST_ORGANS and len(maps.index) == 6
    one = maps.maps_for("chest_000003")
    assert one.shape == (3, 32, 32) and one.dtype == np.float32 and set(np.unique(one)) <= {0.0, 1.0}
    from spanlib.data import FolderDataset

    scores = dice_report(maps, FolderDataset(chest_dir))
    assert all(v > 0.7 for v in scores.values()), scores
    with pytest.raises(KeyError, match="no knowledge maps for sample 'nope'"):
        maps.maps_for("nope")
    np.testing.assert_array_equal(load_knowledge_maps(out).preload().maps_for("chest_000003"), one)

    resumed = build_knowledge_maps("deformable", chest_dir, out, size=32, registration_config=QUICK)
    assert resumed["built"] == 0 and resumed["cached"] == 6

    files = sorted((out / "maps").glob("*.npz"))
    files[0].write_bytes(b"truncated")
    save_maps(files[1], np.zeros((3, 16, 16), bool))
    repaired = build_knowledge_maps("deformable", chest_dir, out, size=32, registration_config=QUICK)
    assert repaired["built"] == 2 and repaired["cached"] == 4 and repaired["rebuilt_corrupt"] == 2
    assert load_knowledge_maps(out).maps_for("chest_000000").shape == (3, 32, 32)

    with pytest.raises(ValueError, match="built with other settings"):
        build_knowledge_maps("deformable", chest_dir, out, size=16, registration_config=QUICK)


def test_deformable_shards_with_worker_processes(chest_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    reports = [  # shard 0 in two worker processes, shard 1 in this process
        build_knowledge_maps("deformable", chest_dir, out, size=16, shard=(i, 2), workers=2 - i, batch_size=2,
                             registration_config=QUICK)
        for i in range(2)
    ]
    assert [r["count"] for r in reports] == [3, 3]
    assert (out / "index-0-of-2.json").is_file() and (out / "report-1-of-2.json").is_file()
    maps = load_knowledge_maps(out)
    assert len(maps.index) == 6 and maps.maps_for("chest_000005").shape == (3, 16, 16)


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["templates", "build", "--kind", "deformable", "--data", str(tmp_path), "--out",
                     str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "meta.json" in capsys.readouterr().err


def test_unknown_exemplar_is_an_error(chest_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sample 'ghost'"):
        build_knowledge_maps("deformable", chest_dir, tmp_path / "x", exemplar="ghost")


# --------------------------------------------------------------------------- segmentation network


def test_segmenter_shapes_save_and_load(tmp_path: Path) -> None:
    import torch

    from spanlib.maps.segmentation import SegConfig, SmallUNet, load_segmenter, predict_probabilities, save_segmenter

    config = SegConfig(size=32, channels=(4, 8, 16))
    model = SmallUNet(3, config.channels).eval()
    probabilities = predict_probabilities(model, [np.random.default_rng(0).random((40, 40), np.float32)] * 2, config,
                                          device=torch.device("cpu"))
    assert probabilities.shape == (2, 3, 32, 32) and probabilities.dtype == np.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()
    save_segmenter(tmp_path / "seg.pt", model, config, CHEST_ORGANS, {"train_dice": 0.5})
    loaded, loaded_config, organs, info = load_segmenter(tmp_path / "seg.pt")
    assert loaded_config == config and organs == CHEST_ORGANS and info == {"train_dice": 0.5}
    np.testing.assert_allclose(
        predict_probabilities(loaded, [np.ones((32, 32), np.float32)], config, device=torch.device("cpu")),
        predict_probabilities(model, [np.ones((32, 32), np.float32)], config, device=torch.device("cpu")))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.pt: unreadable segmentation checkpoint"):
        load_segmenter(tmp_path / "bad.pt")


def test_paper_segmenter_builds_offline() -> None:
    import torch

    from spanlib.maps.segmentation import SegConfig, build_segmenter

    model = build_segmenter(SegConfig(arch="deeplabv3_resnet50"), 3).eval()  # weights=None: nothing downloaded
    with torch.no_grad():
        logits = model(torch.zeros(1, 1, 64, 64))
    assert logits.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="arch"):
        SegConfig(arch="segformer")


def test_deformable_with_the_simpleitk_method(chest_dir: Path, tmp_path: Path) -> None:
    from spanlib.maps.registration_sitk import SitkConfig

    config = SitkConfig(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0), affine_iterations=30, bspline_iterations=10)
    report = build_knowledge_maps("deformable", chest_dir, tmp_path / "sitk", size=32, method="sitk",
                                  exemplar="chest_000001", registration_config=config)
    assert report["built"] == 6 and report["errors"] == 0
    manifest = json.loads((tmp_path / "sitk" / "manifest.json").read_text())
    assert manifest["params"]["method"] == "sitk" and manifest["exemplar_selection"] == {"selection": "given"}
    assert load_knowledge_maps(tmp_path / "sitk").maps_for("chest_000004").shape == (3, 32, 32)


def test_an_unreadable_image_is_recorded_and_the_build_goes_on(chest_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "chest"
    shutil.copytree(chest_dir, data)
    (data / "images" / "chest_000005.png").write_bytes(b"not a png")
    report = build_knowledge_maps("deformable", data, tmp_path / "maps", size=16, registration_config=QUICK)
    assert report["errors"] == 1 and report["built"] == 5
    failure = next(f for f in report["failures"] if f["id"] == "chest_000005")
    assert failure["method"] is None and "chest_000005.png" in failure["reason"]
    maps = load_knowledge_maps(tmp_path / "maps")
    assert "chest_000005" not in maps and "chest_000004" in maps

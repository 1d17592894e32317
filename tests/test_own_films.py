"""A user's own folder of films, the first time: mixed sizes and bit depths in every verb, every bad file named.

Every file here is written by the tests (``conftest.write_films``): chest
phantoms at four sizes, as 8-bit PNG, 16-bit PNG, JPEG and 16-bit TIFF, with
masks of the same sizes, and no ``splits.csv``.
"""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import write_films
from spanlib.data import open_dataset
from spanlib.data.images import ImagesDataset
from spanlib.data.importer import import_dataset


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    return write_films(tmp_path_factory.mktemp("own") / "films", n=24)


def in_process(capsys, *args: str) -> SimpleNamespace:
    """``python -m spanlib ARGS`` through the same entry point, in this process."""
    from spanlib.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def _bomb(path: Path, side: int = 60000) -> None:
    """A valid 1x1 PNG whose header is rewritten to claim ``side x side`` pixels (CRC fixed)."""
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", side, side)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))


def test_mixed_sizes_and_bit_depths_scan_clean(films, capsys):
    shapes = {s.image.shape for s in ImagesDataset(films)}
    assert len(shapes) == 4  # four sizes, read as they are
    done = in_process(capsys, "data", "scan", "--reader", "images", "--root", str(films), "--quiet")
    assert done.returncode == 0 and "24 samples, 24 good, 0 problem(s)" in done.stdout


def test_every_bad_file_is_named_and_the_good_ones_counted(films, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(films, bad)
    _bomb(bad / "images" / "bomb.png")
    for organ in ("left_lung", "right_lung", "heart"):
        shutil.copy(bad / "masks" / organ / "film000.png", bad / "masks" / organ / "bomb.png")
    (bad / "images" / "film001.png").write_bytes((bad / "images" / "film001.png").read_bytes()[:60])  # truncated
    (bad / "masks" / "heart" / "film002.png").unlink()  # an image lacking one organ's mask
    shutil.copy(bad / "masks" / "heart" / "film003.png", bad / "masks" / "heart" / "ghost.png")  # a mask, no image
    done = in_process(capsys, "data", "scan", "--reader", "images", "--root", str(bad), "--quiet")
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("BAD ")]
    expected = {"bomb.png": "too large to decode safely", "film001.png": "unreadable or truncated image",
                "film002.jpg": "no mask for heart", "ghost.png": "mask with no image"}
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in lines), (name, lines)
    assert len(lines) == 4
    # 25 images, one left out for its missing mask: 24 indexed, 22 good (the bomb and the truncated film are bad)
    assert "24 samples, 22 good, 4 problem(s)" in done.stdout
    # the same rules in the import: every bad file in its report, the rest imported
    summary = import_dataset("images", bad, tmp_path / "imported", size=32, progress=False)
    assert summary["written"] == 22 and summary["failed"] == 4
    assert {Path(f["path"]).name for f in summary["failures"]} == set(expected)
    # and in the pretraining loader: bad films left out and named, the rest trained on
    from spanlib.data.transforms import EvaluationView  # noqa: F401 - torch views are importable
    from spanlib.pretrain.augment import ViewMaker
    from spanlib.pretrain.loader import ViewDataset
    from spanlib.core.configs import resolve

    cfg = resolve("smoke", "dino")
    views = ViewMaker(cfg.views, cfg.model.img_size, (), cfg.model.in_chans)
    loaded = ViewDataset(open_dataset("images", bad), views, None, seed=0)
    assert len(loaded) == 22 and {Path(p.path).name for p in loaded.skipped} == set(expected)


def test_a_16_bit_2048_pixel_film_is_read_without_a_float64_copy(tmp_path):
    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 2048).astype(np.uint16), (2048, 1))
    Image.fromarray(ramp).save(root / "images" / "big.png")
    dataset = open_dataset("images", root, max_side=256)
    tracemalloc.start()
    try:
        sample = dataset[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sample.image.shape == (256, 256) and sample.image.dtype == np.float32
    assert abs(float(sample.image[0, -1]) - 1.0) < 5e-3 and float(sample.image[0, 0]) < 5e-3  # the ramp, averaged
    # the 16-bit film (8 MiB) decoded to float32 (16 MiB) and shrunk; a float64 copy alone would be 32 MiB
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_templates_report_and_print_dice_on_mixed_films(films, tmp_path, capsys):
    out = tmp_path / "maps"
    done = in_process(capsys, "templates", "build", "--kind", "deformable", "--data", str(films), "--reader", "images",
                      "--out", str(out), "--workers", "1", "--size", "32", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == 24 and report["dice_films"] == 24 and report["fell_back"] == len(
        [f for f in report["failures"] if f["method"] != "deformable"])
    assert set(report["dice"]) == {"left_lung", "right_lung", "heart"}
    assert all(0.5 < v <= 1.0 for v in report["dice"].values()), report["dice"]
    assert "Dice of the built maps against the set's own masks (24 films, percent): heart" in done.stderr
    assert f"{report['fell_back']} of 24 films fell back" in done.stderr
    # the same numbers as scoring the maps by hand at each film's own size
    from spanlib.maps.quality import dice_report
    from spanlib.maps.store import load_knowledge_maps

    by_hand = dice_report(load_knowledge_maps(out), ImagesDataset(films))
    assert by_hand == pytest.approx(report["dice"], abs=1e-4)


def test_pretrain_and_evaluate_mixed_films_with_no_size_flag(films, tmp_path, capsys):
    run = tmp_path / "run"
    done = in_process(capsys, "pretrain", "--preset", "smoke", "--regimen", "span_triangular", "--data", str(films),
                      "--reader", "images", "--out", str(run))
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "attention.json"
    done = in_process(capsys, "evaluate", "attention", "--run", str(run), "--data", str(films), "--reader", "images",
                      "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["masks_scored_at"].startswith("32x32 px, the model's input (the films differ in size")
    assert set(result["attention"]) == {"heart", "left_lung", "right_lung"}
    assert all(0 <= s["mean"] <= 100 for s in result["attention"].values())


def test_the_book_command_names_what_a_set_lacks_before_anything_trains(tmp_path, capsys):
    from spanlib.core.paths import runs_dir

    few = write_films(tmp_path / "few-unannotated-films", n=4, masks=False)
    (few / "images" / "film003.tif").write_bytes(b"not a tiff")
    done = in_process(capsys, "book", "--preset", "smoke", "--data", str(few), "--quiet")
    assert done.returncode == 2 and "nothing was trained" in done.stderr
    for missing in ("too few films: 4 to pretrain on, the smoke preset trains in batches of 8",
                    "no labels for the linear probe", "no exemplar for the registered maps",
                    "no masks to score attention against", "--eval-data DIR"):
        assert missing in done.stderr, (missing, done.stderr)
    assert "BAD " in done.stdout and "film003.tif: unreadable or truncated image" in done.stdout
    assert not (runs_dir("smoke") / f"data-{few.name}").exists()  # nothing trained, nothing built
    # a casting-layout set without masks is fine: the inspection chapter states its rule instead
    from conftest import write_casting

    casting = write_casting(tmp_path / "casting", train=10, test=4)
    done = in_process(capsys, "book", "--check", "--preset", "smoke", "--parts-data", str(casting), "--quiet")
    assert done.returncode == 0, done.stdout
    assert "14 films, 14 good, 0 problem(s)" in done.stdout and "keeps the first SPAN regimen" in done.stdout


def test_the_book_command_passes_the_chapters_absolute_folders(tmp_path, monkeypatch):
    """The chapters run from notebooks/: a folder given relative to where the command runs is made absolute."""
    from spanlib.book.own import OwnSets

    (tmp_path / "films").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    sets = OwnSets(data="films", maps_from="other", select_on="train", parts_data="").resolved()
    assert sets.data == str(tmp_path / "films") and sets.maps_from == str(tmp_path / "other")
    assert sets.select_on == "train" and sets.parts_data == ""
    assert OwnSets(data="films", select_on="other").resolved().select_on == str(tmp_path / "other")

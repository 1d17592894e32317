"""Real-dataset readers on small files written in the real formats; bad input; scans; the scan CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spanlib.cli import main as spanlib_main
from spanlib.data import (
    CHEST_LABELS,
    CastingDataset,
    ChexpertDataset,
    DataError,
    FolderDataset,
    JsrtDataset,
    MontgomeryDataset,
    Sample,
    ShenzhenDataset,
    open_dataset,
    scan,
    scan_dataset,
    write_folder_dataset,
)

CHEXPERT_COLUMNS = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip


def _grey(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)
    return path


def _film(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 230, (height, width), dtype=np.uint8)


def _half_mask(height: int, width: int, image_right: bool) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cols = slice(width // 2 + 2, width - 2) if image_right else slice(2, width // 2 - 2)
    mask[height // 4 : 3 * height // 4, cols] = 255
    return mask


# --------------------------------------------------------------------------- CheXpert


def _chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    rows = [
        # path, view, Cardiomegaly, Edema, Atelectasis, No Finding, Pleural Effusion, Consolidation
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "1.0", "", "-1.0", "", "0.0", ""),
        ("patient00001/study1/view2_lateral.jpg", "Lateral", "1.0", "", "", "", "", ""),
        ("patient00002/study1/view1_frontal.jpg", "Frontal", "", "-1.0", "", "1.0", "", "0.0"),
    ]
    root.mkdir(parents=True)
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CHEXPERT_COLUMNS)
        writer.writeheader()
        for path, view, cardio, edema, atel, none, effusion, consolidation in rows:
            row = dict.fromkeys(CHEXPERT_COLUMNS, "")
            row.update({"Path": f"CheXpert-v1.0-small/train/{path}", "Sex": "Female", "Age": "68"})
            row.update({"Frontal/Lateral": view, "AP/PA": "AP" if view == "Frontal" else ""})
            row.update({"Cardiomegaly": cardio, "Edema": edema, "Atelectasis": atel, "No Finding": none})
            row.update({"Pleural Effusion": effusion, "Consolidation": consolidation, "Support Devices": "1.0"})
            writer.writerow(row)
            _grey(root / "train" / path, _film(30, 40))
    return root


def test_chexpert_reader(tmp_path: Path) -> None:
    root = _chexpert(tmp_path)
    dataset = ChexpertDataset(root)
    assert len(dataset) == 2  # the lateral view is dropped
    assert dataset.label_names == CHEST_LABELS and dataset.mask_names == ()
    first, second = dataset[0], dataset[1]
    assert first.id == "train_patient00001_study1_view1_frontal" and first.split == "train"
    assert first.image.shape == (30, 40) and first.masks == {}
    assert first.labels["Cardiomegaly"] == 1.0 and first.labels["Atelectasis"] == 1.0  # U-Ones
    assert first.labels["Edema"] == 0.0 and first.labels["Pleural Effusion"] == 0.0  # blank -> 0
    assert second.labels["No Finding"] == 1.0 and second.labels["Edema"] == 1.0
    zeros = ChexpertDataset(root, uncertain="zeros")
    assert zeros[0].labels["Atelectasis"] == 0.0
    ignore = ChexpertDataset(root, uncertain="ignore", blank="ignore", size=16)
    assert math.isnan(ignore[0].labels["Atelectasis"]) and math.isnan(ignore[0].labels["Edema"])
    assert ignore[0].labels["Cardiomegaly"] == 1.0 and ignore[0].image.shape == (16, 16)
    (root / "valid.csv").write_text((root / "train.csv").read_text())
    assert ChexpertDataset(root, csv="valid.csv")[0].split == "val"
    with pytest.raises(ValueError, match="uncertain"):
        ChexpertDataset(root, uncertain="maybe")


def test_chexpert_bad_csv(tmp_path: Path) -> None:
    root = _chexpert(tmp_path)
    text = (root / "train.csv").read_text()
    (root / "train.csv").write_text(text.replace("Pleural Effusion", "Effusion"))
    with pytest.raises(DataError, match=r"train\.csv: CSV lacks expected columns: Pleural Effusion"):
        ChexpertDataset(root)
    (root / "train.csv").write_text(text.replace("-1.0", "maybe", 1))
    kept = ChexpertDataset(root)  # the bad row is named and skipped; the good rows load
    assert [str(p) for p in kept.index_problems] == [
        f"{root / 'train.csv'}: line 2: Atelectasis = 'maybe' (expected 1, 0, -1 or blank; row skipped)"]
    assert len(kept) == len(ChexpertDataset(_chexpert(tmp_path / "again"))) - 1
    assert scan(kept) == kept.index_problems
    with pytest.raises(DataError, match=r"nothere\.csv: missing file"):
        ChexpertDataset(root, csv="nothere.csv")


# --------------------------------------------------------------------------- JSRT + SCR


def _write_img(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values.astype(">u2").tofile(path)
    return path


def _jsrt(tmp_path: Path) -> Path:
    root = tmp_path / "jsrt"
    raw = np.full((64, 64), 4095, np.uint16)
    raw[:, 32:] = 0  # JSRT stores 0 as white: the right half must read bright
    _write_img(root / "All247images" / "JPCLN001.IMG", raw)
    _write_img(root / "All247images" / "JPCNN002.IMG", raw)
    for key, fold in (("JPCLN001", "fold1"), ("JPCNN002", "fold2")):
        masks = root / "scratch" / fold / "masks"
        _grey(masks / "left lung" / f"{key}.gif", _half_mask(32, 32, image_right=True))
        _grey(masks / "right lung" / f"{key}.gif", _half_mask(32, 32, image_right=False))
        heart = np.zeros((32, 32), np.uint8)
        heart[18:28, 12:22] = 255
        _grey(masks / "heart" / f"{key}.gif", heart)
    return root


def test_jsrt_reader(tmp_path: Path) -> None:
    dataset = JsrtDataset(_jsrt(tmp_path), raw_shape=(64, 64))
    assert dataset.ids == ["JPCLN001", "JPCNN002"]
    sample = dataset[0]
    assert sample.image.shape == (32, 32)  # film averaged down to the SCR mask size
    assert np.allclose(sample.image[:, :16], 0.0) and np.allclose(sample.image[:, 16:], 1.0)
    assert set(sample.masks) == {"left_lung", "right_lung", "heart"}
    assert np.nonzero(sample.masks["left_lung"])[1].mean() > 16 > np.nonzero(sample.masks["right_lung"])[1].mean()
    assert sample.labels == {"nodule": 1.0} and dataset[1].labels == {"nodule": 0.0}
    assert [s.split for s in dataset] == ["train", "test"]
    resized = JsrtDataset(tmp_path / "jsrt", raw_shape=(64, 64), size=16)[0]
    assert resized.image.shape == (16, 16) and resized.masks["heart"].shape == (16, 16)


def test_jsrt_truncated_raw_and_missing_mask(tmp_path: Path) -> None:
    root = _jsrt(tmp_path)
    film = root / "All247images" / "JPCLN001.IMG"
    film.write_bytes(film.read_bytes()[:1000])
    (root / "scratch" / "fold2" / "masks" / "heart" / "JPCNN002.gif").unlink()
    dataset = JsrtDataset(root, raw_shape=(64, 64))
    with pytest.raises(DataError, match=r"JPCLN001\.IMG: truncated raw image: expected 8192 bytes.*found 1000"):
        dataset[0]
    with pytest.raises(DataError, match=r"heart.JPCNN002\.gif: missing file"):
        dataset[1]


# --------------------------------------------------------------------------- Montgomery, Shenzhen


def _montgomery(tmp_path: Path, left_on_image_right: bool) -> Path:
    base = tmp_path / "MontgomerySet"
    for name in ("MCUCXR_0001_0.png", "MCUCXR_0002_1.png"):
        _grey(base / "CXR_png" / name, _film(40, 36))
        _grey(base / "ManualMask" / "leftMask" / name, _half_mask(40, 36, image_right=left_on_image_right))
        _grey(base / "ManualMask" / "rightMask" / name, _half_mask(40, 36, image_right=not left_on_image_right))
    return tmp_path


@pytest.mark.parametrize("left_on_image_right", [True, False])
def test_montgomery_reader_orients_lungs_by_image_side(tmp_path: Path, left_on_image_right: bool) -> None:
    dataset = MontgomeryDataset(_montgomery(tmp_path, left_on_image_right))
    assert dataset.ids == ["MCUCXR_0001_0", "MCUCXR_0002_1"]
    sample = dataset[0]
    assert np.nonzero(sample.masks["left_lung"])[1].mean() > 18 > np.nonzero(sample.masks["right_lung"])[1].mean()
    assert [s.labels["Tuberculosis"] for s in dataset] == [0.0, 1.0]


def test_shenzhen_reader(tmp_path: Path) -> None:
    root = tmp_path / "shenzhen"
    _grey(root / "CXR_png" / "CHNCXR_0001_0.png", _film(30, 30), mode="RGB")  # some Shenzhen films are RGB
    _grey(root / "CXR_png" / "CHNCXR_0002_1.png", _film(30, 30))
    _grey(root / "CXR_png" / "CHNCXR_0003_1.png", _film(30, 30))  # no mask
    both = np.maximum(_half_mask(30, 30, True), _half_mask(30, 30, False))
    _grey(root / "mask" / "CHNCXR_0001_0_mask.png", both)
    _grey(root / "mask" / "CHNCXR_0002_1_mask.png", both)
    dataset = ShenzhenDataset(root)
    assert dataset.ids == ["CHNCXR_0001_0", "CHNCXR_0002_1"] and dataset.mask_names == ("lungs",)
    assert dataset[0].image.ndim == 2 and dataset[0].masks["lungs"].sum() > 0
    everything = ShenzhenDataset(root, require_masks=False)
    assert len(everything) == 3 and everything[2].masks == {}
    assert everything[2].labels == {"Tuberculosis": 1.0}


# --------------------------------------------------------------------------- casting


def test_casting_reader_both_layouts(tmp_path: Path) -> None:
    base = tmp_path / "kaggle" / "casting_data"
    for split in ("train", "test"):
        for folder in ("def_front", "ok_front"):
            for k in range(3):
                kind = folder.split("_")[0]
                _grey(base / split / folder / f"cast_{kind}_0_{k}.jpeg", _film(24, 24, k), mode="RGB")
    dataset = CastingDataset(tmp_path / "kaggle")
    assert len(dataset) == 12 and dataset.mask_names == () and dataset.label_names == ("defect",)
    sample = dataset[0]
    assert sample.id == "train_cast_def_0_0" and sample.labels == {"defect": 1.0} and sample.image.ndim == 2
    assert dataset.splits().count("test") == 6 and dataset.label_matrix().sum() == 6
    flat = tmp_path / "casting_512x512"
    for folder in ("def_front", "ok_front"):
        for k in range(5):
            _grey(flat / folder / f"cast_{folder[:3]}_0_{k}.jpeg", _film(16, 16, k))
    split_here = CastingDataset(flat, test_count=4)
    assert split_here.splits().count("test") == 4 and len(split_here) == 10
    assert CastingDataset(flat, test_count=4).splits() == split_here.splits()


def test_open_dataset_by_name(tmp_path: Path) -> None:
    assert len(open_dataset("casting", _casting_minimal(tmp_path))) == 1
    with pytest.raises(ValueError, match="unknown reader"):
        open_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="missing folder"):
        open_dataset("montgomery", tmp_path / "absent")
    with pytest.raises(DataError, match="no JSRT films"):
        open_dataset("jsrt", tmp_path)


def _casting_minimal(tmp_path: Path) -> Path:
    _grey(tmp_path / "cast" / "def_front" / "a.jpeg", _film(8, 8))
    return tmp_path / "cast"


# --------------------------------------------------------------------------- bad files and scans


def _broken_folder(tmp_path: Path) -> Path:
    """A folder dataset with one good sample and six bad ones (seven bad files)."""
    samples = []
    for i in range(7):
        image = np.full((16, 16), 0.5, np.float32)
        organ = np.zeros((16, 16), bool)
        organ[4:10, 4:10] = True
        samples.append(Sample(f"s{i}", image, {"organ": organ}, {"y": float(i % 2)}))
    root = write_folder_dataset(tmp_path / "broken", samples, {"kind": "toy"})
    (root / "images" / "s1.png").unlink()  # missing file
    (root / "images" / "s2.png").write_bytes(b"this is not a PNG")  # unreadable
    png = (root / "images" / "s3.png").read_bytes()
    (root / "images" / "s3.png").write_bytes(png[: len(png) // 2])  # truncated
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "organ" / "s4.png")  # empty mask
    Image.fromarray(np.full((8, 16), 255, np.uint8)).save(root / "masks" / "organ" / "s5.png")  # wrong size
    (root / "images" / "s6.png").write_bytes(b"")  # two bad files in one sample
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "organ" / "s6.png")
    return root


@pytest.mark.parametrize(
    ("index", "pattern"),
    [
        (1, r"images.s1\.png: missing file"),
        (2, r"images.s2\.png: unreadable or truncated image"),
        (3, r"images.s3\.png: unreadable or truncated image"),
        (4, r"organ.s4\.png: empty mask"),
    ],
)
def test_each_bad_file_raises_a_clear_error(tmp_path: Path, index: int, pattern: str) -> None:
    dataset = FolderDataset(_broken_folder(tmp_path))
    dataset[0]  # the good one loads
    with pytest.raises(DataError, match=pattern):
        dataset[index]


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    dataset = FolderDataset(_broken_folder(tmp_path))
    with pytest.raises(DataError, match=r"organ.s5\.png: mask size 16x8 differs from its image s5\.png \(16x16"):
        dataset[5]


def test_scan_reports_every_bad_file_at_once(tmp_path: Path) -> None:
    problems = scan(FolderDataset(_broken_folder(tmp_path)))
    found = sorted((p.sample_id, Path(p.path).parent.name, p.problem.split(" (")[0]) for p in problems)
    assert found == [
        ("s1", "images", "missing file"),
        ("s2", "images", "unreadable or truncated image"),
        ("s3", "images", "unreadable or truncated image"),
        ("s4", "organ", "empty mask"),
        ("s5", "organ", "mask size 16x8 differs from its image s5.png"),
        ("s6", "images", "unreadable or truncated image"),
        ("s6", "organ", "empty mask"),
    ]
    assert all(str(p).startswith(p.path) for p in problems)
    count, index_problems = scan_dataset("chexpert", tmp_path / "nowhere")
    assert count == 0 and "missing folder" in index_problems[0].problem


def test_scan_cli_exit_codes(tmp_path: Path, capsys) -> None:
    root = _broken_folder(tmp_path)
    assert spanlib_main(["data", "scan", "--reader", "folder", "--root", str(root), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.count("BAD ") == 7 and "s3.png" in out and "7 problem(s)" in out
    clean = write_folder_dataset(tmp_path / "clean", [FolderDataset(root)[0]], {"kind": "toy"})
    assert spanlib_main(["data", "scan", "--reader", "folder", "--root", str(clean), "--quiet"]) == 0
    chexpert = _chexpert(tmp_path)
    (chexpert / "train.csv").write_text((chexpert / "train.csv").read_text().replace("Edema", "Oedema"))
    assert spanlib_main(["data", "scan", "--reader", "chexpert", "--root", str(chexpert), "--quiet"]) == 1
    assert "CSV lacks expected columns: Edema" in capsys.readouterr().out

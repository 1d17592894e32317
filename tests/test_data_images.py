"""The generic images reader and ``data import``, on small files in every format the tests write."""

from __future__ import annotations

import csv
import re
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spanlib.data import DataError, FolderDataset, open_dataset
from spanlib.data.images import ImagesDataset, read_dicom, seeded_split
from spanlib.data.importer import import_dataset, safe_id

REPO = Path(__file__).resolve().parents[1]


def _film(size: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((size, size)).astype(np.float32)


def _mask(size: int = 40) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[8:30, 6:20] = 255
    return m


def write_dicom(path: Path, pixels: np.ndarray, monochrome1: bool = False) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@pytest.fixture
def films(tmp_path: Path) -> Path:
    """A folder in every format: 8-bit PNG, 16-bit PNG, JPEG, 16-bit TIFF, DICOM; masks for two organs."""
    root = tmp_path / "films"
    (root / "images").mkdir(parents=True)
    for organ in ("heart", "left_lung"):
        (root / "masks" / organ).mkdir(parents=True)
    img = _film()
    Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / "a8.png")
    Image.fromarray((img * 65535).astype(np.uint16)).save(root / "images" / "b16.png")
    Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / "c.jpg", quality=95)
    Image.fromarray((img * 65535).astype(np.uint16)).save(root / "images" / "d16.tif")
    write_dicom(root / "images" / "e.dcm", (img * 4095).round())
    for sid in ("a8", "b16", "c", "d16", "e"):
        for organ in ("heart", "left_lung"):
            Image.fromarray(_mask()).save(root / "masks" / organ / f"{sid}.png")
    return root


def test_every_format_reads_to_the_same_film(films: Path):
    ds = ImagesDataset(films, size=None)
    assert sorted(ds.ids) == ["a8", "b16", "c", "d16", "e"] and ds.mask_names == ("heart", "left_lung")
    truth = _film()
    by_id = {s.id: s for s in ds}
    np.testing.assert_allclose(by_id["a8"].image, np.floor(truth * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(by_id["b16"].image, np.floor(truth * 65535) / 65535, atol=1e-6)
    np.testing.assert_allclose(by_id["d16"].image, np.floor(truth * 65535) / 65535, atol=1e-6)
    np.testing.assert_allclose(by_id["e"].image, (truth * 4095).round() / 4095, atol=1e-6)
    assert np.abs(by_id["c"].image - truth).mean() < 0.05  # JPEG is lossy
    assert all(s.masks["heart"].sum() == 22 * 14 for s in ds)


def test_dicom_monochrome1_is_inverted(tmp_path: Path):
    pixels = np.array([[0, 4095], [1000, 2000]], np.uint16)
    write_dicom(tmp_path / "m1.dcm", pixels, monochrome1=True)
    np.testing.assert_allclose(read_dicom(tmp_path / "m1.dcm"), 1 - pixels / 4095, atol=1e-6)
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(DataError, match="bad.dcm: unreadable DICOM"):
        read_dicom(tmp_path / "bad.dcm")


def test_labels_and_splits_csv(films: Path):
    with (films / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["id", "Cardiomegaly", "Edema"], ["a8", "1", "0"], ["b16", "-1", ""], ["c", "0", "1"]])
    with (films / "splits.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["id", "split"], ["a8", "train"], ["b16", "train"], ["c", "val"], ["d16", "test"],
                                 ["e", "test"]])
    ds = open_dataset("images", films)
    assert ds.label_names == ("Cardiomegaly", "Edema") and ds.splits_from == "splits.csv"
    labels = {r.id: r.labels for r in ds.records}
    assert labels["a8"] == {"Cardiomegaly": 1.0, "Edema": 0.0}
    assert math.isnan(labels["b16"]["Cardiomegaly"]) and math.isnan(labels["b16"]["Edema"])  # -1 and empty: unknown
    assert labels["d16"] == {}  # no row: unknown
    assert [s.id for s in ImagesDataset(films, split="test")] == ["d16", "e"]


def test_bad_csvs_name_the_file_and_line(films: Path):
    (films / "labels.csv").write_text("name,Edema\na8,1\n")
    with pytest.raises(DataError, match=r"labels.csv: CSV lacks expected columns: id"):
        ImagesDataset(films)

    def problems(ds: ImagesDataset) -> list[str]:
        return [str(p) for p in ds.index_problems]

    # a bad row is named and skipped; its film keeps unknown labels, every other row loads
    (films / "labels.csv").write_text("id,Edema\na8,2\nb16,1\n")
    ds = ImagesDataset(films)
    assert len(ds) == 5 and any(re.search(r"labels.csv: line 2, column 'Edema': '2'", p) for p in problems(ds))
    assert {r.id: r.labels for r in ds.records}["b16"] == {"Edema": 1.0}
    (films / "labels.csv").write_text("id,Edema\nzz,1\na8,0\n")
    ds = ImagesDataset(films)
    assert problems(ds) == [f"{films / 'labels.csv'}: line 2: id 'zz' has no file in images/ (row skipped)"]
    assert {r.id: r.labels for r in ds.records}["a8"] == {"Edema": 0.0}
    (films / "labels.csv").unlink()
    (films / "splits.csv").write_text("id,split\na8,train\n")
    ds = ImagesDataset(films)
    assert ds.ids == ["a8"] and len(problems(ds)) == 4 and all("has no split (left out)" in p for p in problems(ds))
    (films / "splits.csv").write_text("id,split\na8,holdout\n")
    with pytest.raises(DataError, match=r"no image left \(5 image\(s\) left out"):
        ImagesDataset(films)
    (films / "splits.csv").write_text("id,split\na8,holdout\nb16,test\nc,train\nd16,train\ne,val\n")
    assert any(re.search(r"splits.csv: line 2: split 'holdout'", p) for p in problems(ImagesDataset(films)))


def test_seeded_split_is_stable_and_roughly_proportional():
    ids = [f"film{i:04d}" for i in range(2000)]
    splits = [seeded_split(i, 0) for i in ids]
    share = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.04 and abs(share["val"] - 0.1) < 0.03
    assert splits == [seeded_split(i, 0) for i in ids]
    assert splits != [seeded_split(i, 1) for i in ids]


def test_missing_masks_wrong_sizes_and_unlabelled_films(films: Path, tmp_path: Path):
    (films / "masks" / "heart" / "c.png").unlink()
    ds = ImagesDataset(films)
    assert "c" not in ds.ids and ds.skipped == {"c": "no mask for heart"}
    unlabelled = ImagesDataset(films, require_masks=False)
    assert "c" in unlabelled.ids and unlabelled.mask_names == () and unlabelled[0].masks == {}
    Image.fromarray(np.zeros((10, 10), np.uint8) + 255).save(films / "masks" / "heart" / "a8.png")
    with pytest.raises(DataError, match=r"heart/a8.png: mask size 10x10 differs from its image a8.png"):
        ImagesDataset(films)[0]
    (films / "images" / "a8.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="two files share the id 'a8'"):
        ImagesDataset(films)
    with pytest.raises(DataError, match="images: missing folder"):
        ImagesDataset(tmp_path / "nowhere")


def test_import_converts_resumes_and_records_bad_files(films: Path, tmp_path: Path):
    Image.fromarray(np.zeros((10, 10), np.uint8) + 255).save(films / "masks" / "heart" / "c.png")  # wrong size
    out = tmp_path / "folder"
    summary = import_dataset("images", films, out, size=32, progress=False)
    assert summary["written"] == 4 and summary["failed"] == 1
    assert summary["failures"][0]["id"] == "c" and "mask size 10x10" in summary["failures"][0]["problem"]
    assert json.loads((out / "import-report.json").read_text())["failed"] == 1
    ds = FolderDataset(out)
    assert sorted(ds.ids) == ["a8", "b16", "d16", "e"] and ds.mask_names == ("heart", "left_lung")
    assert ds[0].image.shape == (32, 32)
    # a killed import: the journal lost its last row and meta.json is gone; the rerun finishes the job
    journal = (out / "import-journal.csv").read_text().splitlines()
    (out / "import-journal.csv").write_text("\n".join(journal[:-1]) + "\n")
    (out / "meta.json").unlink()
    again = import_dataset("images", films, out, size=32, progress=False)
    assert again["resumed"] == 3 and again["written"] == 1
    assert sorted(FolderDataset(out).ids) == ["a8", "b16", "d16", "e"]


def test_safe_ids():
    assert safe_id("patient00001/study1/view1_frontal") == "patient00001_study1_view1_frontal"
    with pytest.raises(DataError):
        safe_id("///")


def test_scan_and_import_from_the_command_line(films: Path, tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spanlib", "data", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    scanned = cli("scan", "--reader", "images", "--root", str(films), "--quiet")
    assert scanned.returncode == 0 and "5 samples, 5 good, 0 problem(s)" in scanned.stdout
    out = tmp_path / "imported"
    done = cli("import", "--reader", "images", "--data", str(films), "--out", str(out), "--size", "24", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 written" in done.stdout and len(FolderDataset(out)) == 5
    bad = cli("import", "--reader", "images", "--data", str(tmp_path / "none"), "--out", str(out), "--quiet")
    assert bad.returncode == 2 and "missing folder" in bad.stdout

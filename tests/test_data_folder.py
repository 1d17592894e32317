"""The folder format: write/read round trip, splits, resizing, and what the writer refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from spanlib.data import DataError, FolderDataset, Sample, open_dataset, write_folder_dataset


def _samples(n: int = 6, size: tuple[int, int] = (20, 24)) -> list[Sample]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        image = rng.random(size).astype(np.float32)
        masks = {"organ": np.zeros(size, bool), "other": np.zeros(size, bool)}
        masks["organ"][2 : 8 + i, 3:10] = True
        masks["other"][10:15, 5 + i : 20] = True
        labels = {"a": float(i % 2), "b": math.nan if i == 3 else float(i % 3 == 0)}
        out.append(Sample(f"s{i:02d}", image, masks, labels, ("train", "val", "test")[i % 3]))
    return out


def test_round_trip(tmp_path: Path) -> None:
    samples = _samples()
    root = write_folder_dataset(tmp_path / "ds", samples, {"kind": "toy", "source": "test", "synthetic": True})
    assert (root / "images" / "s00.png").is_file() and (root / "masks" / "organ" / "s05.png").is_file()
    dataset = FolderDataset(root)
    assert len(dataset) == 6 and dataset.ids == [s.id for s in samples]
    assert dataset.mask_names == ("organ", "other") and dataset.label_names == ("a", "b")
    assert dataset.meta["kind"] == "toy" and dataset.meta["synthetic"] is True
    for original, loaded in zip(samples, dataset):
        assert loaded.image.dtype == np.float32 and loaded.image.shape == original.image.shape
        assert np.abs(loaded.image - original.image).max() <= 0.5 / 255 + 1e-6
        for name in original.masks:
            assert np.array_equal(loaded.masks[name], original.masks[name])
        assert loaded.split == original.split
        for name, value in original.labels.items():
            assert (math.isnan(value) and math.isnan(loaded.labels[name])) or loaded.labels[name] == value
    header = (root / "samples.csv").read_text().splitlines()[0]
    assert header == "id,split,a,b"
    assert np.isnan(dataset.label_matrix()[3, 1])


def test_sixteen_bit_and_colour_round_trip(tmp_path: Path) -> None:
    samples = _samples(2)
    write_folder_dataset(tmp_path / "deep", samples, {"kind": "toy"}, bit_depth=16)
    loaded = FolderDataset(tmp_path / "deep")[1]
    assert np.abs(loaded.image - samples[1].image).max() <= 0.5 / 65535 + 1e-7
    colour = Sample("rgb", np.random.default_rng(0).random((8, 9, 3)).astype(np.float32))
    write_folder_dataset(tmp_path / "rgb", [colour], {"kind": "toy", "mask_names": []})
    again = FolderDataset(tmp_path / "rgb")[0]
    assert again.image.shape == (8, 9, 3) and np.abs(again.image - colour.image).max() <= 0.5 / 255 + 1e-6


def test_split_filter_subset_slice_and_resize(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "ds", _samples(), {"kind": "toy"})
    train = FolderDataset(root, split="train")
    assert train.ids == ["s00", "s03"] and all(s.split == "train" for s in train)
    assert FolderDataset(root).subset("test").ids == ["s02", "s05"]
    assert [s.id for s in FolderDataset(root)[1:3]] == ["s01", "s02"]
    assert FolderDataset(root)[-1].id == "s05"
    with pytest.raises(IndexError):
        FolderDataset(root)[6]
    small = open_dataset("folder", root, size=(10, 12))
    sample = small[0]
    assert sample.image.shape == (10, 12) and sample.masks["organ"].shape == (10, 12)
    assert sample.masks["organ"].dtype == np.bool_ and sample.masks["organ"].any()
    assert small.subset("val").size == (10, 12)
    with pytest.raises(ValueError, match="split"):
        FolderDataset(root, split="holdout")


def test_writer_refuses_bad_samples(tmp_path: Path) -> None:
    good = _samples(2)
    with pytest.raises(DataError, match="duplicate sample id"):
        write_folder_dataset(tmp_path / "dup", [good[0], good[0]], {"kind": "toy"})
    bad_id = Sample("../escape", good[0].image, good[0].masks, good[0].labels)
    with pytest.raises(DataError, match="id must"):
        write_folder_dataset(tmp_path / "id", [bad_id], {"kind": "toy"})
    empty = Sample("e", good[0].image, {"organ": np.zeros((20, 24), bool), "other": good[0].masks["other"]})
    with pytest.raises(DataError, match="'organ' is empty"):
        write_folder_dataset(tmp_path / "empty", [empty], {"kind": "toy"})
    missing = Sample("m", good[1].image, {"organ": good[1].masks["organ"]}, good[1].labels)
    with pytest.raises(DataError, match="has masks"):
        write_folder_dataset(tmp_path / "masks", [good[0], missing], {"kind": "toy"})
    out_of_range = Sample("r", good[0].image * 2.0, good[0].masks)
    with pytest.raises(DataError, match=r"within \[0, 1\]"):
        write_folder_dataset(tmp_path / "range", [out_of_range], {"kind": "toy"})


def test_reader_rejects_broken_index_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"meta\.json: missing file"):
        FolderDataset(tmp_path)
    root = write_folder_dataset(tmp_path / "ds", _samples(3), {"kind": "toy"})
    csv = root / "samples.csv"
    text = csv.read_text()
    csv.write_text(text.replace("id,split,a,b", "id,split,a"))
    with pytest.raises(DataError, match=r"samples\.csv: CSV lacks expected columns: b"):
        FolderDataset(root)
    csv.write_text(text.replace("s01,val,1", "s01,val,7").replace("s02,test", "s02,later"))
    kept = FolderDataset(root)  # bad rows are named and skipped, the rest loads
    assert kept.ids == ["s00"] and [p.problem.split(":")[0] for p in kept.index_problems] == ["line 3", "line 4"]
    assert "'7'" in kept.index_problems[0].problem and "split 'later'" in kept.index_problems[1].problem
    csv.write_text(text.replace("s00,train", "s00,later").replace("s01,val,1", "s01,val,7").replace("s02,test", "s02,later"))
    with pytest.raises(DataError, match=r"no good row: line 2: .*line 3: .*'7'.*line 4: split 'later'"):
        FolderDataset(root)
    meta = json.loads((root / "meta.json").read_text())
    del meta["mask_names"]
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="mask_names"):
        FolderDataset(root)
    (root / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        FolderDataset(root)

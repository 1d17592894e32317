"""BYOL's two views of a grey image, with the crop box and flip of each kept for the masks.

BYOL's augmentations (random resized crop, horizontal flip, colour jitter,
Gaussian blur, solarization; blur and solarization probabilities differ
between the two views) through torchvision's v2 API. Colour saturation, hue
and grey-scale conversion do nothing to a grey film and are left out. The
crop box and the flip of every view are returned, so the object masks of the
original image can be carried into the view
(:func:`spanlib.byol.masks.carry_masks`).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from spanlib.pretrain.augment import Solarize01
from spanlib.byol.config import ByolConfig

__all__ = ["ByolViews", "normalize"]


def normalize(images: torch.Tensor, cfg: ByolConfig) -> torch.Tensor:
    """Grey images in [0, 1] to the network's input scale."""
    return (images - cfg.mean) / cfg.std


class ByolViews:
    """Makes BYOL's two views of a batch of grey images.

    Args:
        cfg: the run's config (crop scale, jitter, blur and solarization settings).

    Randomness comes from torch's global generator (as every v2 transform);
    the trainer seeds it per step, so a step's views do not depend on what
    ran before.
    """

    def __init__(self, cfg: ByolConfig) -> None:
        self.cfg = cfg
        self.crop = v2.RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, antialias=True)
        self.photometric = [
            v2.Compose(
                [
                    v2.RandomApply([v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast)], p=cfg.jitter_p),
                    v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)], p=blur_p),
                    Solarize01(solarize_p),
                ]
            )
            for blur_p, solarize_p in zip(cfg.blur_p, cfg.solarize_p)
        ]

    def view(self, image: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One view of one image ``[1, H, W]`` in [0, 1].

        Returns:
            ``(view [1, S, S] normalised, box (x1, y1, x2, y2) in pixels of the
            original, flipped)``.
        """
        params = self.crop.make_params([image])
        top, left, height, width = params["top"], params["left"], params["height"], params["width"]
        size = [self.cfg.image_size, self.cfg.image_size]
        out = TF.resized_crop(tv_tensors.Image(image), top, left, height, width, size, antialias=True)
        flipped = bool(torch.rand(()) < 0.5)
        if flipped:
            out = TF.horizontal_flip(out)
        out = self.photometric[index](out).clamp(0.0, 1.0)
        box = torch.tensor([left, top, left + width, top + height], dtype=torch.float32)
        return normalize(out.as_subclass(torch.Tensor), self.cfg), box, flipped

    def __call__(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Both views of a batch ``[B, 1, H, W]`` in [0, 1].

        Returns:
            For view 1 and view 2: ``(views [B, 1, S, S], boxes [B, 4], flips [B] bool)``.
        """
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be [B, 1, H, W] grey, got shape {tuple(images.shape)}")
        out = []
        for index in range(2):
            views, boxes, flips = zip(*(self.view(image, index) for image in images))
            out.append((torch.stack(views), torch.stack(boxes), torch.tensor(flips)))
        return out

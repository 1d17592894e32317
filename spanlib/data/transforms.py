"""The deterministic view of an image that evaluation and display use: channels, resize, normalise.

Training views (random crops that carry knowledge maps along) live in
:mod:`spanlib.pretrain.augment` and end with the same normalisation; this is
their fixed counterpart, kept here so that evaluation needs nothing of
pretraining.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from spanlib.core.configs import ViewConfig


def normalisation(cfg: ViewConfig, in_chans: int) -> v2.Normalize:
    """The normalisation every view ends with (the preset's mean and std on each channel)."""
    return v2.Normalize([cfg.mean] * in_chans, [cfg.std] * in_chans)


def as_image(image: torch.Tensor, in_chans: int) -> tv_tensors.Image:
    """``[H, W]`` or ``[C, H, W]`` in [0, 1] as a float image with ``in_chans`` channels (grey is repeated)."""
    if image.ndim == 2:
        image = image[None]
    if image.shape[0] == 1 and in_chans == 3:
        image = image.expand(3, -1, -1)
    return tv_tensors.Image(image.float())


class EvaluationView:
    """Resize to ``size x size`` and normalise: the view a frozen model is scored on.

    Args:
        cfg: the run's view configuration (for the normalisation).
        size: side of the model's input.
        in_chans: channels the model takes.
    """

    def __init__(self, cfg: ViewConfig, size: int, in_chans: int = 3):
        self.in_chans = in_chans
        self.transform = v2.Compose([v2.Resize((size, size), antialias=True), normalisation(cfg, in_chans)])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``[H, W]`` or ``[C, H, W]`` in [0, 1] -> ``[in_chans, size, size]``."""
        return self.transform(as_image(image, self.in_chans)).as_subclass(torch.Tensor)

    def of_array(self, image: np.ndarray) -> torch.Tensor:
        """The view of a sample's image array, ``[H, W]`` or ``[H, W, C]`` (channels last, as readers give them)."""
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return self(img.permute(2, 0, 1) if img.ndim == 3 else img)

    def stack(self, samples: Sequence) -> torch.Tensor:
        """The views of samples' images as one batch, ``[N, in_chans, size, size]``."""
        return torch.stack([self.of_array(s.image) for s in samples])

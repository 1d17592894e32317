"""Views that move knowledge maps with images.

Images travel as ``tv_tensors.Image`` and knowledge maps as
``tv_tensors.Mask``, so every geometric transform of torchvision's v2 API
(crop, rotation, translation) is applied to both with the same parameters,
maps with nearest-neighbour interpolation, while photometric transforms touch
the image only. A horizontal flip of a chest film also swaps the left and
right lung maps (:class:`HorizontalFlipSwap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from spanlib.core.configs import ViewConfig
from spanlib.data.transforms import EvaluationView, as_image, normalisation
from spanlib.pretrain.paper_views import paper_view

# Organ pairs that trade places under a horizontal flip.
MIRROR_PAIRS = (("left_lung", "right_lung"),)


def flip_permutation(organs: Sequence[str]) -> list[int]:
    """Channel order of the maps after a horizontal flip."""
    index = {name: i for i, name in enumerate(organs)}
    perm = list(range(len(organs)))
    for a, b in MIRROR_PAIRS:
        if a in index and b in index:
            perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


class HorizontalFlipSwap(v2.Transform):
    """Horizontal flip that also swaps mirrored organ channels of the maps."""

    def __init__(self, organs: Sequence[str], p: float = 0.5):
        super().__init__()
        self.p = p
        self.perm = flip_permutation(organs)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"flip": bool(torch.rand(()) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["flip"]:
            return inpt
        out = TF.horizontal_flip(inpt)
        if isinstance(inpt, tv_tensors.Mask) and out.ndim >= 3:
            out = tv_tensors.wrap(out[self.perm], like=inpt)
        return out


class Solarize01(v2.Transform):
    """Solarization of an image in [0, 1] with probability ``p`` (DINO's)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": bool(torch.rand(()) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["apply"] and isinstance(inpt, tv_tensors.Image):
            return TF.solarize(inpt, threshold=0.5)
        return inpt


def _finish(cfg: ViewConfig, in_chans: int) -> list[v2.Transform]:
    return [normalisation(cfg, in_chans)]


def _dino_photometric(blur_p: float, solarize_p: float) -> list[v2.Transform]:
    return [
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=blur_p) if blur_p > 0 else v2.Identity(),
        Solarize01(solarize_p),
    ]


class ViewMaker:
    """Makes the crops of one sample: global views with maps, local views.

    Args:
        cfg: the view configuration.
        size: side of the global views.
        organs: names of the map channels (for the flip swap).
        in_chans: channels the model takes (grey images are repeated).
    """

    def __init__(self, cfg: ViewConfig, size: int, organs: Sequence[str], in_chans: int = 3):
        self.cfg = cfg
        self.in_chans = in_chans
        self.n_local = cfg.local_crops_number if cfg.kind == "dino" else 0
        flip = HorizontalFlipSwap(organs)
        if cfg.kind == "dino":
            geo = [v2.RandomResizedCrop(size, scale=cfg.global_crop_scale, antialias=True), flip]
            self.global_views = [
                v2.Compose(geo + _dino_photometric(1.0, 0.0) + _finish(cfg, in_chans)),
                v2.Compose(geo + _dino_photometric(0.1, 0.2) + _finish(cfg, in_chans)),
            ]
            self.local_view = v2.Compose(
                [v2.RandomResizedCrop(cfg.local_crop_size, scale=cfg.local_crop_scale, antialias=True), flip]
                + _dino_photometric(0.5, 0.0)
                + _finish(cfg, in_chans)
            )
        elif cfg.kind == "cxr":
            view = v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=cfg.global_crop_scale, ratio=(0.9, 1.1), antialias=True),
                    flip,
                    v2.RandomAffine(degrees=cfg.rotation_degrees, translate=(cfg.translate, cfg.translate)),
                    v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
                    v2.RandomAdjustSharpness(cfg.sharpness, p=0.5),
                ]
                + _finish(cfg, in_chans)
            )
            self.global_views = [view, view]
            self.local_view = None
        elif cfg.kind == "paper":  # appendix Table A.2 (spanlib.pretrain.paper_views)
            view = paper_view(size, _finish(cfg, in_chans))
            self.global_views = [view, view]
            self.local_view = None
        else:
            raise ValueError(f"unknown view kind {cfg.kind!r}; use 'dino', 'cxr' or 'paper'")
        self.evaluation_view = EvaluationView(cfg, size, in_chans)

    def _as_image(self, image: torch.Tensor) -> tv_tensors.Image:
        return as_image(image, self.in_chans)

    def __call__(self, image: torch.Tensor, maps: torch.Tensor) -> dict[str, Any]:
        """Views of one sample.

        Args:
            image: ``[H, W]`` or ``[C, H, W]`` in [0, 1].
            maps: ``[O, H, W]`` knowledge maps in [0, 1] (``O`` may be 0).

        Returns:
            ``{"global": [2, C, S, S], "global_maps": [2, O, S, S],
            "local": [n_local, C, s, s]}``.
        """
        img = self._as_image(image)
        mask = tv_tensors.Mask(maps.float())
        globals_, gmaps = [], []
        for t in self.global_views:
            v, m = t(img, mask)
            globals_.append(v.as_subclass(torch.Tensor))
            gmaps.append(m.as_subclass(torch.Tensor))
        out = {"global": torch.stack(globals_), "global_maps": torch.stack(gmaps)}
        if self.n_local:
            out["local"] = torch.stack([self.local_view(img).as_subclass(torch.Tensor) for _ in range(self.n_local)])
        return out

"""The SPAN paper's own views (appendix Table A.2): the ``paper`` view kind.

Each augmentation is applied with a probability, its strength drawn
uniformly from a range:

| augmentation | probability | strength |
| --- | --- | --- |
| rotation | 0.2 | angle in [-30, 30] degrees |
| contrast | 0.1 | in [0, 0.2] |
| brightness | 0.1 | in [0, 0.2] |
| sharpness | 0.1 | in [0, 0.2] |
| random crop to 224 x 224 | 1 | |

Global views only: no local crops, no colour jitter, no random greyscale, no
flip (the table lists none). A strength ``s`` of contrast, brightness or
sharpness is the distance of torchvision's adjustment factor from 1 (the
factor is ``1 + s`` or ``1 - s``, each sign with probability one half), as
``ColorJitter(brightness=0.2)`` draws its factor from [0.8, 1.2]. The crop
takes ``size`` pixels out of the film resized to ``size * 8 / 7`` on its
short side (256 for 224, the usual ImageNet ratio; the table does not say
from what size it crops). Geometric steps (crop, rotation) move the
knowledge maps with the image (torchvision v2 ``Mask``, nearest neighbour);
photometric ones touch the image only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Augmentation:
    """One row of Table A.2: applied with ``probability``, strength uniform in ``[low, high]``."""

    probability: float
    low: float
    high: float


TABLE_A2 = {
    "rotation": Augmentation(0.2, -30.0, 30.0),
    "contrast": Augmentation(0.1, 0.0, 0.2),
    "brightness": Augmentation(0.1, 0.0, 0.2),
    "sharpness": Augmentation(0.1, 0.0, 0.2),
}
"""The paper's augmentations (rotation in degrees; the others as the distance of the factor from 1)."""

CROP_CONTEXT = 8 / 7
"""The film's short side before the random crop, in units of the crop (256 for a 224 crop)."""

ADJUSTMENTS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "contrast": TF.adjust_contrast,
    "brightness": TF.adjust_brightness,
    "sharpness": TF.adjust_sharpness,
}


class RandomAdjustment(v2.Transform):
    """A photometric adjustment with probability ``p`` and factor ``1 +- s``, ``s ~ U[low, high]`` (images only).

    Args:
        name: ``contrast``, ``brightness`` or ``sharpness`` (torchvision's adjustment of that name).
        row: its probability and strength range.
    """

    def __init__(self, name: str, row: Augmentation):
        super().__init__()
        if name not in ADJUSTMENTS:
            raise ValueError(f"unknown adjustment {name!r}; known: {sorted(ADJUSTMENTS)}")
        self.name, self.row, self.adjust = name, row, ADJUSTMENTS[name]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = bool(torch.rand(()) < self.row.probability)
        strength = float(torch.empty(()).uniform_(self.row.low, self.row.high))
        sign = 1.0 if bool(torch.rand(()) < 0.5) else -1.0
        return {"apply": apply, "factor": 1.0 + sign * strength}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["apply"] and isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(self.adjust(inpt.as_subclass(torch.Tensor), params["factor"]).clamp(0, 1),
                                   like=inpt)
        return inpt


def paper_steps(size: int) -> dict[str, v2.Transform]:
    """Table A.2's steps in the order they are applied, by name (the view composes them; tests draw each)."""
    rotation = TABLE_A2["rotation"]
    return {
        "crop": v2.Compose([v2.Resize(round(size * CROP_CONTEXT), antialias=True), v2.RandomCrop(size)]),
        "rotation": v2.RandomApply([v2.RandomRotation((rotation.low, rotation.high))], p=rotation.probability),
        **{name: RandomAdjustment(name, TABLE_A2[name]) for name in ("contrast", "brightness", "sharpness")},
    }


def paper_view(size: int, finish: list[v2.Transform]) -> v2.Compose:
    """One global view of Table A.2, ending with ``finish`` (the preset's normalisation)."""
    return v2.Compose(list(paper_steps(size).values()) + finish)

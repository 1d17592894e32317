"""Sizes of the embedded default data, per preset. Data, not code.

Each preset names, for each generated dataset, the number of samples per
split and any field of that dataset's config dataclass
(:class:`~spanlib.data.phantoms.ChestConfig`,
:class:`~spanlib.data.parts.PartConfig`,
:class:`~spanlib.data.digits.DigitsConfig`) to override.

* ``smoke``: seconds, for CI and notebook smoke runs; small images.
* ``book``: what the CPU book is built with (900 128-pixel films, 800 + 200
  cast parts, about 2,000 digit canvases).
* ``paper``: larger sets for GPU runs.
"""

from __future__ import annotations

import copy
from typing import Any

DATA_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "chest": {"image_size": 64, "splits": {"train": 32, "val": 8, "test": 8}},
        "parts": {"image_size": 64, "defect_scale": 3.0, "splits": {"train": 30, "test": 10}},
        "digits": {"canvas": 64, "splits": {"train": 40, "val": 10, "test": 10}},
    },
    "book": {
        # 128-pixel films: the models see 64 px; larger films only cost loading and scoring time.
        # 600 training films and 800 training parts: three seeds of every run fit the book's 30 minutes
        "chest": {"image_size": 128, "splits": {"train": 600, "val": 100, "test": 200}},
        # the models see a part at 64 px through 8 px patches: defects drawn 3x so that they span a patch
        "parts": {"image_size": 128, "defect_scale": 3.0, "splits": {"train": 800, "test": 200}},
        "digits": {"canvas": 100, "splits": {"train": 1600, "val": 200, "test": 200}},
    },
    "paper": {
        "chest": {"image_size": 256, "splits": {"train": 8000, "val": 1000, "test": 1000}},
        "parts": {"image_size": 256, "splits": {"train": 1100, "test": 200}},
        "digits": {"canvas": 100, "splits": {"train": 20000, "val": 2000, "test": 2000}},
    },
}
"""preset -> dataset kind -> {"splits": {split: count}, config field: value}."""

KINDS: tuple[str, ...] = ("chest", "parts", "digits")


def data_preset(name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of one preset's data sizes.

    Raises:
        ValueError: for an unknown preset name.
    """
    if name not in DATA_PRESETS:
        raise ValueError(f"unknown data preset {name!r}; known: {', '.join(DATA_PRESETS)}")
    return copy.deepcopy(DATA_PRESETS[name])

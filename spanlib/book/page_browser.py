"""What the static book's attention browser carries, computed during the build.

:func:`browser_data` reads, for the first films of a test set, the last
block's CLS attention of every head under every regimen at the preset's
evaluation size (the grid the headline scores are taken on: 16 x 16 patches
for the ``book`` preset, not the 8 x 8 of its training size), the true
organ outlines and each SPAN regimen's knowledge maps, and hands them to
:func:`spanlib.figures.page_browser.page_browser`, which draws them with
controls that run in the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spanlib.book.attention import scoring_sizes
from spanlib.book.browser import _knowledge_maps_by_head, _load_run
from spanlib.eval.evaluate import extract
from spanlib.figures.page_browser import BrowserData, PageBrowser, Polylines, outlines, page_browser, quantised
from spanlib.maps.store import resize_nearest


def _resized(array: np.ndarray, side: int) -> np.ndarray:
    """A ``[H, W]`` film resampled to ``side x side`` (bilinear, antialiased)."""
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))[None, None]
    if tensor.shape[-2:] == (side, side):
        return tensor[0, 0].numpy()
    return F.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def film_bytes(image: np.ndarray, side: int) -> np.ndarray:
    """A film in [0, 1] (``[H, W]`` or channels last) as ``uint8 [side, side]`` grey levels."""
    image = np.asarray(image, dtype=np.float32)
    grey = image.mean(axis=-1) if image.ndim == 3 else image
    return np.clip(np.rint(_resized(grey, side) * 255), 0, 255).astype(np.uint8)


def region_outlines(regions: Mapping[str, Any], side: int) -> dict[str, Polylines]:
    """Name -> the 0.5 outline of each ``[H, W]`` region resized to ``side x side`` by the maps' one nearest resize."""
    return {name: outlines(resize_nearest(np.asarray(region, dtype=np.float32), side, side))
            for name, region in regions.items()}


def _map_outlines(loaded: Any, sample: Any, side: int, missing: list[str]) -> dict[str, Polylines]:
    """Organ -> the outline of a run's knowledge map on one film; none (and the film named in ``missing``) when
    the map cannot be read, as the ipywidgets browser does."""
    try:
        maps = _knowledge_maps_by_head(loaded, sample)
    except (KeyError, ValueError, OSError) as error:
        missing.append(f"{sample.id}: {error}")
        return {}
    return region_outlines({loaded.organ_of_head[h]: m for h, m in maps.items()}, side)


def browser_data(runs: Mapping[str, str | Path], films: Sequence[Any], size: int | None = None,
                 n_films: int = 24) -> BrowserData:
    """Attention of every head of the last block under every regimen, on the first ``n_films`` films.

    Args:
        runs: regimen -> run directory (``checkpoint.pt``), in the order of the browser's regimen control.
        films: the films (samples with ``image`` and ``masks``), e.g. a test split.
        size: the input side attention is read at (the preset's evaluation size;
            None: each run's training size).
        n_films: how many films, from the first.

    Returns:
        A :class:`spanlib.figures.page_browser.BrowserData`.

    Raises:
        ValueError: no run, no film, or runs whose attention grids differ.
    """
    if not runs:
        raise ValueError("browser_data needs at least one run")
    chosen = [films[i] for i in range(min(int(n_films), len(films)))]
    if not chosen:
        raise ValueError("browser_data needs at least one film")
    attention, organ_of_head, map_outlines, map_of, missing = [], {}, {}, {}, []
    keys: dict[str, str] = {}  # a map spec -> its name in the page (its kind: no folder of this machine goes there)
    side = None
    for regimen, path in runs.items():
        loaded = _load_run(path, None)
        side = side or size or loaded.cfg.model.img_size
        attention.append(extract(loaded.model, loaded.cfg, chosen, img_size=side)["attention"].float().numpy())
        organ_of_head[regimen] = dict(loaded.organ_of_head)
        if loaded.maps is not None:
            spec = loaded.cfg.span.knowledge_maps
            kind = keys.setdefault(str(spec), f"{getattr(spec, 'kind', 'maps')}-{len(keys)}")
            map_of[regimen] = kind
            if kind not in map_outlines:
                map_outlines[kind] = [_map_outlines(loaded, s, side, missing) for s in chosen]
    shapes = {a.shape for a in attention}
    if len(shapes) != 1:
        raise ValueError(f"the runs give attention of different shapes {sorted(shapes)}: browse them separately")
    return BrowserData(
        film_ids=[str(s.id) for s in chosen],
        films=np.stack([film_bytes(s.image, side) for s in chosen]),
        regimens=list(runs),
        attention=quantised(np.stack(attention)),
        organ_of_head=organ_of_head,
        mask_outlines=[region_outlines(s.masks or {}, side) for s in chosen],
        map_outlines=map_outlines,
        map_of_regimen=map_of,
        note=(f"{len(chosen)} test films, the last block's CLS attention at {side} px "
              f"({attention[0].shape[-1]} x {attention[0].shape[-1]} patches), every head of {len(runs)} regimens."
              + (f" No knowledge map could be read for {len(missing)} film(s) ({missing[0]})." if missing else "")),
    )


def chapter_browser(preset: str, runs: Mapping[str, Any], films: Sequence[Any], n_films: int = 24,
                    regimen: str = "span_deformable") -> PageBrowser:
    """The attention chapter's page browser: every regimen's run, read at the preset's headline size.

    Args:
        preset: the preset (its evaluation size sets the grid).
        runs: regimen -> run handle (with ``.path``), in the chapter's order.
        films: the test films.
        n_films: how many films, from the first.
        regimen: the regimen shown first (the last one where absent).
    """
    size = scoring_sizes(preset)["headline"]
    data = browser_data({r: run.path for r, run in runs.items()}, films, size, n_films)
    return page_browser(data, regimen=regimen if regimen in data.regimens else None)


def weight_sentence(browser: PageBrowser) -> str:
    """What the browser adds to its page, in words: its whole size, and how much of it is data."""
    total, data = browser.size_bytes, browser.data_bytes
    return (f"The browser adds {total / 1e6:.2f} MB to this page: {data / 1e3:.0f} kB of films, attention and "
            f"outlines, the rest Bokeh's JavaScript, carried in the page so that it works offline.")

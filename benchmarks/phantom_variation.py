"""How far the fixed triangles and an averaged map miss the organs of the chest phantoms.

Draws films at the book's size with the generator at a given commit's
``spanlib/data/phantoms.py`` (default: this checkout's) and prints, per organ,
the Dice of the paper's fixed triangles against the true masks (mean and 10th
percentile over the films) and the Dice of the average mask of 100 other films
(the best any single map fixed across films can do about as well as this).

    python benchmarks/phantom_variation.py [path/to/phantoms.py ...]
"""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np

from spanlib.data.sample import CHEST_ORGANS
from spanlib.maps.heuristic import triangular_maps
from spanlib.maps.quality import dice


def _load(path: str):
    spec = importlib.util.spec_from_file_location(f"phantoms_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(module, films: int = 200) -> dict:
    start = time.perf_counter()
    samples = [module.make_chest_phantom(i, 0, module.ChestConfig()) for i in range(films)]
    seconds = time.perf_counter() - start
    size = samples[0].image.shape[0]
    triangles = triangular_maps(size, size, CHEST_ORGANS)
    half = films // 2
    average = {o: np.mean([s.masks[o] for s in samples[:half]], axis=0) >= 0.5 for o in CHEST_ORGANS}
    out = {"ms_per_film": 1000 * seconds / films, "size": size}
    for k, organ in enumerate(CHEST_ORGANS):
        tri = [dice(triangles[k], s.masks[organ]) for s in samples[half:]]
        avg = [dice(average[organ], s.masks[organ]) for s in samples[half:]]
        out[organ] = {"triangle": 100 * np.mean(tri), "triangle_p10": 100 * np.percentile(tri, 10),
                      "average": 100 * np.mean(avg)}
    return out


if __name__ == "__main__":
    import spanlib.data.phantoms

    for path in sys.argv[1:] or [spanlib.data.phantoms.__file__]:
        result = measure(_load(path))
        print(f"{path}: {result['size']} px, {result['ms_per_film']:.0f} ms per film")
        for organ in CHEST_ORGANS:
            r = result[organ]
            print(f"  {organ:10s} triangle {r['triangle']:.1f} (10th percentile {r['triangle_p10']:.1f}), "
                  f"average map {r['average']:.1f}")

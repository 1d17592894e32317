"""``python -m spanlib bench ap [--json]``: pixel AP against scikit-learn, speed and agreement.

:func:`measure` returns the result as a dict (the performance notebook calls
it); :func:`main` is the command line.

Three kinds of seeded 224x224 maps, each scored against random blob masks
(one to three ellipses):

* ``general``: continuous non-negative scores (a probability map);
* ``general_signed``: continuous scores of both signs (logits), which need
  the 64-bit sort key instead of the 32-bit one;
* ``attention``: 14x14 patch attention (a softmax) upsampled nearest to
  224x224, the shape of a ViT's CLS attention map.

scikit-learn's ``average_precision_score`` runs map by map on NumPy views of
the same arrays (it is single-threaded); ours runs batched. For attention
maps three of our paths are timed: the pixel path on the upsampled maps,
the patch path from the masks (``attention_average_precision``, the cost of
reducing the masks to per-patch counts included), and the patch path from
precomputed counts (``average_precision_patches`` alone). The upsampled
maps are given to scikit-learn and to our pixel path ready-made; making them
is not timed. On general maps the same algorithm is also timed with
``torch.sort`` in place of NumPy's sort (``ours_pixel_torch_sort``), the
path other devices take.

How it is measured (see DESIGN.md): the maps are split into ``--steps``
chunks; on each chunk every variant runs once, in an order that rotates from
chunk to chunk, after ``--warmup`` untimed chunks. Reported: the median over
chunks of each variant's time per map, and the median over chunks of the
per-chunk ratio scikit-learn / ours (the speed-up), with the torch thread
count and the load average, since these cores are shared.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from spanlib.eval import ap

KINDS = ("general", "general_signed", "attention")


def blob_masks(batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Union of one to three random ellipses per map, ``[batch, size, size]`` bool."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = coords[:, None], coords[None, :]
    count = torch.randint(1, 4, (batch,), generator=gen)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for k in range(3):
        centre = 0.2 + 0.6 * torch.rand(batch, 2, generator=gen)
        radii = 0.06 + 0.24 * torch.rand(batch, 2, generator=gen)
        angle = math.pi * torch.rand(batch, generator=gen)
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        dy = yy[None] - centre[:, 0, None, None]
        dx = xx[None] - centre[:, 1, None, None]
        u = (dx * cos + dy * sin) / radii[:, 0, None, None]
        v = (-dx * sin + dy * cos) / radii[:, 1, None, None]
        masks |= ((u * u + v * v) <= 1.0) & (k < count)[:, None, None]
    return masks


def make_chunk(kind: str, batch: int, size: int, grid: int, seed: int) -> dict[str, torch.Tensor]:
    """Scores and masks of one chunk; ``attention`` also carries the patch maps."""
    gen = torch.Generator().manual_seed(seed)
    masks = blob_masks(batch, size, gen)
    if kind == "general":
        scores = 0.7 * torch.rand(batch, size, size, generator=gen) + 0.3 * masks
        return {"scores": scores, "masks": masks}
    if kind == "general_signed":
        scores = torch.randn(batch, size, size, generator=gen) + masks
        return {"scores": scores, "masks": masks}
    if kind == "attention":
        inside = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]
        logits = 1.5 * torch.randn(batch, grid, grid, generator=gen) + 2.0 * inside
        attention = logits.flatten(1).softmax(dim=1).view(batch, grid, grid)
        return {"attention": attention, "scores": ap.upsample_nearest(attention, (size, size)), "masks": masks}
    raise ValueError(f"unknown kind {kind!r}")


def sklearn_loop(scores: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """scikit-learn's AP, one map at a time."""
    s = scores.flatten(1).numpy()
    t = masks.flatten(1).numpy()
    return np.array([average_precision_score(t[i], s[i]) for i in range(s.shape[0])])


def variants(kind: str, chunk: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """The timed calls of one kind on one chunk."""
    scores, masks = chunk["scores"], chunk["masks"]
    calls: dict[str, Callable[[], Any]] = {
        "sklearn": lambda: sklearn_loop(scores, masks),
        "ours_pixel": lambda: ap.average_precision(scores, masks),
    }
    if kind == "general":  # the same algorithm sorted by torch.sort instead of NumPy, for reference
        calls["ours_pixel_torch_sort"] = lambda: ap.average_precision(scores, masks, backend="torch")
    if kind == "attention":
        attention = chunk["attention"]
        grid = (attention.shape[1], attention.shape[2])
        pos, neg = ap.patch_counts(masks, grid)
        calls["ours_patch_with_counts"] = lambda: ap.attention_average_precision(attention, masks)
        calls["ours_patch_given_counts"] = lambda: ap.average_precision_patches(attention, pos, neg)
        calls["patch_counts_only"] = lambda: ap.patch_counts(masks, grid)
    return calls


def bench_kind(kind: str, maps: int, size: int, grid: int, steps: int, warmup: int, seed: int) -> dict[str, Any]:
    """Time every variant of one kind, chunk by chunk, alternating."""
    per_chunk = max(1, maps // steps)
    seconds: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    max_diff: dict[str, float] = {}
    timed_maps = 0
    for step in range(warmup + steps):
        chunk = make_chunk(kind, per_chunk, size, grid, seed=seed * 100_003 + step)
        calls = variants(kind, chunk)
        names = list(calls)
        shift = step % len(names)
        elapsed: dict[str, float] = {}
        results: dict[str, Any] = {}
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            results[name] = calls[name]()
            elapsed[name] = time.perf_counter() - start
        reference = results["sklearn"]
        for name, value in results.items():
            if name.startswith("ours"):
                diff = float(np.max(np.abs(np.asarray(value) - reference)))
                max_diff[name] = max(max_diff.get(name, 0.0), diff)
        if step < warmup:
            continue
        timed_maps += per_chunk
        for name, value in elapsed.items():
            seconds.setdefault(name, []).append(value / per_chunk)
            if name.startswith("ours"):
                ratios.setdefault(name, []).append(elapsed["sklearn"] / value)
    ms_per_map = {name: 1e3 * statistics.median(v) for name, v in seconds.items()}
    speedup = {name: statistics.median(v) for name, v in ratios.items()}
    return {
        "maps_timed": timed_maps,
        "chunks": steps,
        "maps_per_chunk": per_chunk,
        "ms_per_map_median": ms_per_map,
        "speedup_vs_sklearn": speedup,
        "speedup_range": {name: [min(v), max(v)] for name, v in ratios.items()},
        "max_abs_diff_vs_sklearn": max(max_diff.values()),
        "max_abs_diff_by_path": max_diff,
    }


def measure(maps: int = 1000, size: int = 224, grid: int = 14, steps: int = 10, warmup: int = 1,
            threads: int | None = None, kinds: tuple[str, ...] | list[str] = KINDS, seed: int = 0) -> dict[str, Any]:
    """Run the benchmark and return its result.

    Keys include ``speedup_attention_maps`` (scikit-learn's time over the
    patch path's on attention-shaped maps, the counting included),
    ``speedup_general`` (pixel path on general maps) and ``max_abs_diff``
    (the largest |ours - scikit-learn| over every map and path), besides one
    entry per kind with the times and speed-ups of every path.
    """
    if maps < 1 or steps < 1 or size < 1 or grid < 1 or warmup < 0:
        raise ValueError("maps, steps, size and grid must be positive, warmup non-negative")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        load_before = os.getloadavg()
        results = {kind: bench_kind(kind, maps, size, grid, steps, warmup, seed) for kind in kinds}
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    summary: dict[str, Any] = {
        "benchmark": "pixel average precision vs scikit-learn average_precision_score",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "maps_per_kind": maps,
        "map_size": [size, size],
        "attention_grid": [grid, grid],
        "seed": seed,
        "torch_threads": used_threads,
        "ap_sort_workers": used_threads,
        "sklearn_threads": 1,
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
        },
        **results,
        "max_abs_diff": max(k["max_abs_diff_vs_sklearn"] for k in results.values()),
    }
    summary["max_abs_diff_vs_sklearn"] = summary["max_abs_diff"]
    if "general" in results:
        summary["speedup_general"] = results["general"]["speedup_vs_sklearn"]["ours_pixel"]
        summary["goal_general_4x"] = summary["speedup_general"] >= 4
    if "attention" in results:
        speed = results["attention"]["speedup_vs_sklearn"]
        summary["speedup_attention_maps"] = speed["ours_patch_with_counts"]
        summary["speedup_attention_given_counts"] = speed["ours_patch_given_counts"]
        summary["speedup_attention_pixel_path"] = speed["ours_pixel"]
        summary["goal_attention_20x"] = summary["speedup_attention_maps"] >= 20
    summary["goal_max_abs_diff_1e-6"] = summary["max_abs_diff"] <= 1e-6
    return summary


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(prog="python -m spanlib bench ap", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--maps", type=int, default=1000, help="maps per kind (default 1000)")
    p.add_argument("--size", type=int, default=224, help="map side in pixels (default 224)")
    p.add_argument("--grid", type=int, default=14, help="attention grid side (default 14)")
    p.add_argument("--steps", type=int, default=10, help="timed chunks the maps are split into (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed chunks before them (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: leave torch's setting)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="map kinds to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the maps (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m spanlib bench ap [--json] ...``; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        summary = measure(args.maps, args.size, args.grid, args.steps, args.warmup, args.threads, args.kinds, args.seed)
    except ValueError as err:
        raise SystemExit(f"bench ap: {err}") from None
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return 0
    print(f"pixel AP vs scikit-learn: {args.maps} maps per kind, {args.size}x{args.size}, "
          f"torch threads {summary['torch_threads']}, load {summary['load_average_1min']['before']:.1f}")
    for kind in args.kinds:
        res = summary[kind]
        print(f"\n{kind} (max |ours - sklearn| = {res['max_abs_diff_vs_sklearn']:.2e})")
        for name, ms in res["ms_per_map_median"].items():
            speed = res["speedup_vs_sklearn"].get(name)
            tail = f"   {speed:7.1f}x vs sklearn" if speed is not None else ""
            print(f"  {name:26s} {ms:9.3f} ms/map{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def speed_table(result: dict[str, Any]) -> Any:
    """One row per kind of map and path of :func:`measure`'s result: median ms per map, speed-up, largest AP error.

    scikit-learn's own rows have no speed-up against itself and no error: they show a dash
    (:class:`spanlib.figures.tables.BookFrame`).
    """
    import pandas as pd

    from spanlib.figures.tables import book_frame

    kinds = [k for k, v in result.items() if isinstance(v, dict) and "ms_per_map_median" in v]
    return book_frame(pd.DataFrame(
        [{"maps": kind, "path": path, "ms per map (median)": ms,
          "speedup vs scikit-learn": result[kind]["speedup_vs_sklearn"].get(path, math.nan),
          "max |AP - sklearn AP|": result[kind]["max_abs_diff_by_path"].get(path, math.nan)}
         for kind in kinds for path, ms in result[kind]["ms_per_map_median"].items()]))

"""Benchmark of the BYOL training step: object-level vs plain BYOL, float32 vs bfloat16, one vs two threads.

``python -m spanlib bench byol [--json]`` draws a batch of chest phantoms
at the ``book`` preset's size, builds the networks of each variant and
alternates their training steps inside one run (the 2-core machines are
shared and noisy), reporting the median step time after warm-up. It also
times the parts of an object-level step: refinement (target C4 forward,
mask pooling, K-means), BYOL's views, and the masks carried into the views.

:func:`measure` returns the result as a dict; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from spanlib.byol.config import byol_config
from spanlib.byol.masks import carry_masks, one_hot, slic_priors
from spanlib.byol.model import update_target
from spanlib.byol.train import build_networks, byol_step, object_masks
from spanlib.byol.views import ByolViews
from spanlib.data import ChestConfig, make_chest_phantom


def _phantoms(n: int, size: int) -> np.ndarray:
    config = ChestConfig(image_size=size)
    return np.stack([make_chest_phantom(i, 0, config).image for i in range(n)])[:, None].astype(np.float32)


def _median(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:])


def measure(steps: int = 10, warmup: int = 2, batch_size: int | None = None) -> dict:
    """Median seconds per step of each variant, and of the parts of an object-level step."""
    base = byol_config("book")
    batch = batch_size or base.optim.batch_size
    images = torch.as_tensor(_phantoms(batch, base.image_size))
    priors = torch.as_tensor(slic_priors(images[:, 0].numpy(), base.n_segments, base.slic_compactness)).long()
    variants = {
        "global, bf16, 1 thread": (base.replace(pooling="global"), 1),
        "object K=8, bf16, 1 thread": (base, 1),
        "object K=8, fp32, 1 thread": (base.replace(bf16=False), 1),
        "object K=8, bf16, 2 threads": (base, 2),
    }
    states = {}
    for name, (cfg, threads) in variants.items():
        online, target = build_networks(cfg)
        opt = torch.optim.AdamW(online.parameters(), lr=1e-3)
        states[name] = (cfg, threads, online, target, opt, ByolViews(cfg))
    times: dict[str, list[float]] = {name: [] for name in variants}
    previous = torch.get_num_threads()
    try:
        for step in range(steps + warmup):
            for name, (cfg, threads, online, target, opt, views) in states.items():
                torch.set_num_threads(threads)
                start = time.perf_counter()
                loss, _ = byol_step(online, target, views, images, priors, cfg, torch.Generator().manual_seed(step))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                update_target(target, online, 0.99)
                times[name].append(time.perf_counter() - start)
        torch.set_num_threads(1)
        cfg, _, online, target, _, views = states["object K=8, bf16, 1 thread"]
        masks = one_hot(torch.zeros(batch, base.image_size, base.image_size, dtype=torch.long), base.k)
        made = views(images)
        parts: dict[str, Callable[[], object]] = {
            "refinement (C4 forward, pooling, K-means)": lambda: object_masks(target, images, priors, cfg),
            "views (v2, per image)": lambda: views(images),
            "masks carried into both views (roi_align)": lambda: [
                carry_masks(masks, box, flip, cfg.grid) for _, box, flip in made
            ],
        }
        part_times = {}
        for name, part in parts.items():
            measured = []
            for _ in range(steps + warmup):
                start = time.perf_counter()
                part()
                measured.append(time.perf_counter() - start)
            part_times[name] = _median(measured, warmup)
    finally:
        torch.set_num_threads(previous)
    step_times = {name: _median(t, warmup) for name, t in times.items()}
    reference = step_times["object K=8, bf16, 1 thread"]
    return {
        "batch_size": batch,
        "image_size": base.image_size,
        "steps": steps,
        "warmup": warmup,
        "seconds_per_step": step_times,
        "relative_to_object_bf16_1_thread": {name: t / reference for name, t in step_times.items()},
        "images_per_second": {name: batch / t for name, t in step_times.items()},
        "object_step_parts_seconds": part_times,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m spanlib bench byol [--json] ...``: print the measurements; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m spanlib bench byol", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per variant (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per variant")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    result = measure(args.steps, args.warmup, args.batch)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"batch {result['batch_size']} at {result['image_size']} px; "
          f"median of {args.steps} steps after {args.warmup} warm-up steps")
    for name, seconds in result["seconds_per_step"].items():
        ratio = result["relative_to_object_bf16_1_thread"][name]
        rate = result["images_per_second"][name]
        print(f"  {name:32s} {1000 * seconds:7.0f} ms/step  {rate:6.0f} images/s  x{ratio:.2f}")
    for name, seconds in result["object_step_parts_seconds"].items():
        print(f"  part: {name:45s} {1000 * seconds:6.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

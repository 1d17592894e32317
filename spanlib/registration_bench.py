"""Benchmark: fast batched b-spline registration vs a plain SimpleITK reference.

``python -m spanlib.registration_bench [--json]`` draws chest phantoms (the
book's 256-pixel films), registers one exemplar onto ``--n`` of them with the
batched torch method (one single-threaded worker process per core, batches
of images) and onto ``--ref-n`` of them with SimpleITK's multi-resolution
b-spline registration at full resolution (same worker layout), and scores
the warped masks against the phantoms' ground truth (Dice at the films'
256 pixels). The variants alternate inside one run for ``--rounds`` rounds
(the cores are shared and noisy); speeds are medians over rounds. It also
scores the triangular heuristic and the global average of a small
segmentation network on the same phantoms.

The timed region of each variant is the registration work only: worker
processes are started and warmed up before the first round (a real build
pays that once, a few seconds, for thousands of images).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import date
from typing import Any

import numpy as np

from spanlib.registration import RegistrationConfig, RegistrationResult, SitkConfig

ORGANS: tuple[str, ...] = ("left_lung", "right_lung", "heart")


def phantoms(indices: Sequence[int], seed: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and ``[3, H, W]`` ground-truth mask stacks of chest phantoms."""
    from spanlib.data import ChestConfig, make_chest_phantom

    config = ChestConfig(image_size=size)
    samples = [make_chest_phantom(i, seed, config) for i in indices]
    return [s.image for s in samples], [np.stack([s.masks[o] for o in ORGANS]) for s in samples]


def dice_per_organ(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Dice of each organ map (resized to its ground truth by nearest neighbour), per image."""
    from spanlib.templates import dice, resize_nearest

    out: dict[str, list[float]] = {o: [] for o in ORGANS}
    for stack, truth in zip(maps, truths):
        stack = resize_nearest(np.asarray(stack) >= 0.5, *truth.shape[-2:])
        for k, organ in enumerate(ORGANS):
            out[organ].append(dice(stack[k], truth[k]))
    return out


def _means(scores: dict[str, list[float]]) -> dict[str, float]:
    return {o: round(float(np.mean(v)), 4) for o, v in scores.items()}


def _overall(scores: dict[str, list[float]]) -> float:
    return round(float(np.mean([np.mean(v) for v in scores.values()])), 4)


# --------------------------------------------------------------------------- workers

_STATE: dict[str, Any] = {}


def _init(exemplar: np.ndarray, masks: np.ndarray, fallback: np.ndarray, threads: int) -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    _STATE.update(exemplar=exemplar, masks=masks, fallback=fallback)


def _torch_task(args: tuple[list[np.ndarray], RegistrationConfig]) -> list[RegistrationResult]:
    from spanlib.registration import register_batch

    images, config = args
    return register_batch(images, _STATE["exemplar"], _STATE["masks"], _STATE["fallback"], config)


def _sitk_task(args: tuple[list[np.ndarray], SitkConfig]) -> list[RegistrationResult]:
    from spanlib.registration import register_pair_sitk

    images, config = args
    return [register_pair_sitk(im, _STATE["exemplar"], _STATE["masks"], _STATE["fallback"], config) for im in images]


def _chunks(items: Sequence[np.ndarray], size: int) -> list[list[np.ndarray]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _timed(pool: ProcessPoolExecutor, task: Callable, images: Sequence[np.ndarray], config: Any, chunk: int
           ) -> tuple[list[RegistrationResult], float]:
    start = time.perf_counter()
    results = [r for done in pool.map(task, [(c, config) for c in _chunks(images, chunk)]) for r in done]
    return results, time.perf_counter() - start


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a summary (``--json``: one JSON object)."""
    parser = argparse.ArgumentParser(prog="python -m spanlib.registration_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="phantoms registered by the fast method per round")
    parser.add_argument("--ref-n", type=int, default=4, help="phantoms registered by the reference per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (speeds: median over rounds)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--image-size", type=int, default=256, help="phantom size (the book's films: 256)")
    parser.add_argument("--map-size", type=int, default=256, help="size the masks are warped to (Dice is scored "
                                                                   "at the phantom size)")
    parser.add_argument("--chunk", type=int, default=16, help="images per batch of the fast method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exemplar-index", type=int, default=10_000, help="phantom index of the exemplar")
    parser.add_argument("--variants", default="threads,sitk64",
                        help="extra variants, comma-separated: threads (1 process x N threads), "
                             "sitk64 (SimpleITK at 64 px); empty for none")
    parser.add_argument("--no-global", action="store_true", help="skip the global-average template")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    variants = {v for v in args.variants.split(",") if v}
    unknown = variants - {"threads", "sitk64"}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    from spanlib.templates import triangular_maps

    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    ex_images, ex_masks = phantoms([args.exemplar_index], args.seed, args.image_size)
    exemplar, masks = ex_images[0], ex_masks[0]
    n_ref_total = args.ref_n * args.rounds
    images, truths = phantoms(range(max(args.n, n_ref_total)), args.seed, args.image_size)
    fast_images, fast_truths = images[: args.n], truths[: args.n]
    fallback = triangular_maps(args.map_size, args.map_size)
    fast_config = RegistrationConfig()
    ref_config = SitkConfig()
    low_config = SitkConfig(size=64, shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["spanlib.registration"])
    timings: dict[str, list[float]] = {"fast": [], "reference": []}
    results: dict[str, list[RegistrationResult]] = {}
    ref_results: list[RegistrationResult] = []
    low_results: list[RegistrationResult] = []
    per_image = max(1, min(args.chunk, -(-args.n // args.workers)))
    init = (exemplar, masks, fallback)
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init, initargs=(*init, 1)) as pool, \
            ProcessPoolExecutor(1, mp_context=context, initializer=_init, initargs=(*init, args.workers)) as threaded:
        warm = [(fast_images[:2], replace(fast_config, bspline_levels=((32, 4, 2),), affine_levels=((32, 2),)))]
        list(pool.map(_torch_task, warm * args.workers))
        if "threads" in variants:
            list(threaded.map(_torch_task, warm))
        for round_ in range(args.rounds):
            results["fast"], seconds = _timed(pool, _torch_task, fast_images, fast_config, per_image)
            timings["fast"].append(args.n / seconds)
            log(f"round {round_}: fast {args.n / seconds:.1f} maps/s")
            if "threads" in variants:
                results["threads"], seconds = _timed(threaded, _torch_task, fast_images, fast_config, args.n)
                timings.setdefault("threads", []).append(args.n / seconds)
                log(f"round {round_}: 1 process x {args.workers} threads {args.n / seconds:.1f} maps/s")
            ref_slice = images[round_ * args.ref_n : (round_ + 1) * args.ref_n]
            done, seconds = _timed(pool, _sitk_task, ref_slice, ref_config, 1)
            ref_results += done
            timings["reference"].append(len(ref_slice) / seconds)
            log(f"round {round_}: SimpleITK 256 px {len(ref_slice) / seconds:.2f} maps/s")
            if "sitk64" in variants:
                done, seconds = _timed(pool, _sitk_task, ref_slice, low_config, 1)
                low_results += done
                timings.setdefault("sitk64", []).append(len(ref_slice) / seconds)
                log(f"round {round_}: SimpleITK 64 px {len(ref_slice) / seconds:.2f} maps/s")

    ref_truths = truths[:n_ref_total]
    fast_scores = dice_per_organ([r.maps for r in results["fast"]], fast_truths)
    fast_on_ref = dice_per_organ([r.maps for r in results["fast"][:n_ref_total]], ref_truths) \
        if args.n >= n_ref_total else None
    ref_scores = dice_per_organ([r.maps for r in ref_results], ref_truths)
    tri_scores = dice_per_organ([triangular_maps(args.map_size, args.map_size)] * args.n, fast_truths)
    median = {k: float(np.median(v)) for k, v in timings.items()}
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "workers": args.workers, "threads_per_worker": 1, "rounds": args.rounds,
        "n": args.n, "reference_n": len(ref_results), "image_size": args.image_size, "map_size": args.map_size,
        "maps_per_s": round(median["fast"], 2),
        "dice_mean": _overall(fast_scores),
        "dice_per_organ": _means(fast_scores),
        "dice_mean_on_reference_images": _overall(fast_on_ref) if fast_on_ref else None,
        "reference_maps_per_s": round(median["reference"], 3),
        "reference_dice_mean": _overall(ref_scores),
        "reference_dice_per_organ": _means(ref_scores),
        "speedup": round(median["fast"] / median["reference"], 1),
        "dice_gap_vs_reference": round(_overall(ref_scores) - _overall(fast_scores), 4),
        "methods": {name: _count_methods(res) for name, res in
                    (("fast", results["fast"]), ("reference", ref_results), ("sitk64", low_results)) if res},
        "maps_per_s_rounds": {k: [round(x, 3) for x in v] for k, v in timings.items()},
        "triangular_dice": _means(tri_scores),
        "deformable_dice": _means(fast_scores),
        "config": {"fast": fast_config.to_dict(), "reference": ref_config.to_dict(),
                   **({"sitk64": low_config.to_dict()} if low_results else {})},
    }
    if "threads" in variants:
        report["threads_variant_maps_per_s"] = round(median["threads"], 2)
    if low_results:
        low_scores = dice_per_organ([r.maps for r in low_results], ref_truths)
        report["sitk64_maps_per_s"] = round(median["sitk64"], 3)
        report["sitk64_dice_mean"] = _overall(low_scores)
    if not args.no_global:
        report["global_dice"], report["global_info"] = _global_dice(args, fast_images, fast_truths)
    if args.json:
        print(json.dumps(report))
    else:
        for key in ("maps_per_s", "dice_mean", "reference_maps_per_s", "reference_dice_mean", "speedup",
                    "triangular_dice", "global_dice", "deformable_dice"):
            if key in report:
                print(f"{key}: {report[key]}")
    return 0


def _count_methods(results: Sequence[RegistrationResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.method] = counts.get(result.method, 0) + 1
    return counts


def _global_dice(args: argparse.Namespace, images: Sequence[np.ndarray], truths: Sequence[np.ndarray]
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the segmenter on separate phantoms, average over ``images``, score the average."""
    import torch

    from spanlib.segmentation import SegConfig, predict_probabilities, train_segmenter
    from spanlib.templates import resize_nearest

    torch.set_num_threads(args.workers)
    config = SegConfig()
    train_images, train_masks = phantoms(range(20_000, 20_000 + config.n_train), args.seed, args.image_size)
    start = time.perf_counter()
    model, info = train_segmenter(train_images, train_masks, config, device=torch.device("cpu"))
    soft = predict_probabilities(model, list(images), config, device=torch.device("cpu")).mean(axis=0)
    seconds = time.perf_counter() - start
    binary = resize_nearest(soft >= config.threshold, args.map_size, args.map_size)
    return _means(dice_per_organ([binary] * len(images), truths)), {
        "train_images": config.n_train, "steps": config.steps, "seconds": round(seconds, 1),
        "train_dice": round(info["train_dice"], 4)}


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: fast batched b-spline registration vs a plain SimpleITK reference.

``python -m spanlib bench register [--json]`` draws chest phantoms
(256-pixel films by default), registers one exemplar onto ``--n`` of them with the
batched torch method (one single-threaded worker process per core, batches
of images) and onto ``--ref-n`` of them with SimpleITK's multi-resolution
b-spline registration at full resolution (same worker layout), and scores
the warped masks against the phantoms' ground truth (Dice at the films'
256 pixels). The variants alternate inside one run for ``--rounds`` rounds
(the cores are shared and noisy); speeds are medians over rounds. It also
scores the triangular heuristic and the global average of a small
segmentation network on the same phantoms.

The exemplar is chosen as the CLI does (:func:`spanlib.maps.registration.select_exemplar`
over ``--candidates`` annotated phantoms). The timed region of each variant
is the registration work only: worker processes are started and warmed up
before the first round (a real build pays that once, a few seconds, for
thousands of images). Besides maps per wall-clock second, the workers' CPU
time per map is reported: on shared cores it is the steadier number. From
it, ``hours_190k_films_16_cores`` extrapolates a CheXpert-sized build
(190,000 films) sharded over 16 single-thread workers
(``templates build --shard i/n``).

:func:`measure` returns the report as a dict; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import json
import math
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
import torch

from spanlib.data import ChestConfig, make_chest_phantom
from spanlib.maps.heuristic import triangular_maps
from spanlib.maps.quality import dice, resize_nearest
from spanlib.maps.registration import (
    RegistrationConfig,
    RegistrationResult,
    register_batch,
    select_exemplar,
    single_thread,
)
from spanlib.maps.registration_sitk import SitkConfig, register_pair_sitk
from spanlib.maps.segmentation import SegConfig, predict_probabilities, train_segmenter

ORGANS: tuple[str, ...] = ("left_lung", "right_lung", "heart")


def phantoms(indices: Sequence[int], seed: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and ``[3, H, W]`` ground-truth mask stacks of chest phantoms."""
    config = ChestConfig(image_size=size)
    samples = [make_chest_phantom(i, seed, config) for i in indices]
    return [s.image for s in samples], [np.stack([s.masks[o] for o in ORGANS]) for s in samples]


def dice_per_organ(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Dice of each organ map (resized to its ground truth by nearest neighbour), per image."""
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


def _init(exemplar: np.ndarray, masks: np.ndarray, fallback: np.ndarray) -> None:
    import SimpleITK as sitk  # imported where used, as spanlib.maps.registration_sitk does: a heavy import

    torch.set_num_threads(1)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    _STATE.update(exemplar=exemplar, masks=masks, fallback=fallback)


def _torch_task(args: tuple[list[np.ndarray], RegistrationConfig]) -> tuple[list[RegistrationResult], float]:
    images, config = args
    start = time.process_time()
    results = register_batch(images, _STATE["exemplar"], _STATE["masks"], _STATE["fallback"], config)
    return results, time.process_time() - start


def _sitk_task(args: tuple[list[np.ndarray], SitkConfig]) -> tuple[list[RegistrationResult], float]:
    images, config = args
    start = time.process_time()
    results = [register_pair_sitk(im, _STATE["exemplar"], _STATE["masks"], _STATE["fallback"], config) for im in images]
    return results, time.process_time() - start


def _chunks(items: Sequence[np.ndarray], size: int) -> list[list[np.ndarray]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _timed(pool: ProcessPoolExecutor, task: Callable, images: Sequence[np.ndarray], config: Any, chunk: int
           ) -> tuple[list[RegistrationResult], float, float]:
    """Results, wall seconds, and worker CPU seconds of one variant."""
    start = time.perf_counter()
    done = list(pool.map(task, [(c, config) for c in _chunks(images, chunk)]))
    wall = time.perf_counter() - start
    return [r for results, _ in done for r in results], wall, sum(cpu for _, cpu in done)


class _Variant:
    """Speeds of one variant over rounds: maps per wall second, worker CPU ms per map."""

    def __init__(self) -> None:
        self.maps_per_s: list[float] = []
        self.cpu_ms: list[float] = []
        self.results: list[RegistrationResult] = []

    def add(self, results: list[RegistrationResult], wall: float, cpu: float, keep: bool) -> str:
        self.maps_per_s.append(len(results) / wall)
        self.cpu_ms.append(1000.0 * cpu / len(results))
        self.results = self.results + results if keep else results
        return f"{self.maps_per_s[-1]:.2f} maps/s, {self.cpu_ms[-1]:.0f} CPU ms/map"

    def summary(self) -> dict[str, Any]:
        return {"maps_per_s": round(float(np.median(self.maps_per_s)), 3),
                "cpu_ms_per_map": round(float(np.median(self.cpu_ms)), 1),
                "maps_per_s_rounds": [round(x, 3) for x in self.maps_per_s],
                "cpu_ms_per_map_rounds": [round(x, 1) for x in self.cpu_ms]}


# --------------------------------------------------------------------------- main


CHEXPERT_FILMS = 190_000


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(prog="python -m spanlib bench register", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="phantoms registered by the fast method per round")
    parser.add_argument("--ref-n", type=int, default=4, help="phantoms registered by the reference per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (speeds: median over rounds)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--image-size", type=int, default=256, help="phantom size (default 256, a CheXpert film resized for registration)")
    parser.add_argument("--map-size", type=int, default=256,
                        help="size the masks are warped to (Dice is scored at the phantom size)")
    parser.add_argument("--chunk", type=int, default=32, help="images per batch of the fast method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=8,
                        help="annotated phantoms competing to be the exemplar (1: take the first)")
    parser.add_argument("--variants", default="one_worker,sitk64",
                        help="extra variants, comma-separated: one_worker (the fast method in one process), "
                             "sitk64 (SimpleITK at 64 px); empty for none")
    parser.add_argument("--no-global", action="store_true", help="skip the global-average template")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def measure(**options: Any) -> dict[str, Any]:
    """Run the benchmark with the command line's options as keywords (``n=8, workers=1``), quietly."""
    options = {"json": True, **options}  # no progress lines
    args = parser().parse_args([])
    unknown = set(options) - set(vars(args))
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    vars(args).update(options)
    return _report(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m spanlib bench register [--json] ...``; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        report = _report(args)
    except ValueError as err:
        raise SystemExit(f"bench register: {err}") from None
    if args.json:
        print(json.dumps(report))
    else:
        for key in ("maps_per_s", "dice_mean", "reference_maps_per_s", "reference_dice_mean", "speedup",
                    "cpu_ms_per_map", "reference_cpu_ms_per_map", "cpu_speedup", "maps_per_s_per_worker",
                    "hours_190k_films_16_cores", "triangular_dice", "global_dice", "deformable_dice"):
            if key in report:
                print(f"{key}: {report[key]}")
    return 0


def _report(args: argparse.Namespace) -> dict[str, Any]:
    given = args.variants.split(",") if isinstance(args.variants, str) else args.variants
    variants = {v for v in given if v}
    unknown = variants - {"one_worker", "sitk64"}
    if unknown:
        raise ValueError(f"unknown variants: {', '.join(sorted(unknown))}")

    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    n_ref_total = args.ref_n * args.rounds
    images, truths = phantoms(range(max(args.n, n_ref_total)), args.seed, args.image_size)
    fast_config, ref_config = RegistrationConfig(), SitkConfig()
    low_config = SitkConfig(size=64, shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0))
    exemplar = _exemplar(args, images[: args.n], fast_config, log)
    runs = _rounds(args, variants, images, exemplar["init"], fast_config, ref_config, low_config, log)
    report = _summary(args, runs, truths, exemplar["meta"])
    report["config"] = {"fast": fast_config.to_dict(), "reference": ref_config.to_dict(),
                        **({"sitk64": low_config.to_dict()} if "sitk64" in variants else {})}
    if "sitk64" in variants:
        report["sitk64_dice_mean"] = _overall(dice_per_organ([r.maps for r in runs["sitk64"].results],
                                                             truths[:n_ref_total]))
    if not args.no_global:
        report["global_dice"], report["global_info"] = _global_dice(args, images[: args.n], truths[: args.n])
    return report


def _exemplar(args: argparse.Namespace, fast_images: Sequence[np.ndarray], config: RegistrationConfig,
              log: Callable[[str], None]) -> dict[str, Any]:
    """The exemplar chosen as the CLI does, over ``--candidates`` annotated phantoms: the workers' ``init``, and what
    the report says of it."""
    cand_images, cand_masks = phantoms(range(10_000, 10_000 + args.candidates), args.seed, args.image_size)
    start = time.perf_counter()
    best, scores = select_exemplar(list(zip(cand_images, cand_masks)), fast_images[:16], config) \
        if args.candidates > 1 else (0, [math.nan])
    selection_s = time.perf_counter() - start
    log(f"exemplar: phantom {10_000 + best} of {args.candidates} candidates ({selection_s:.1f} s)")
    fallback = triangular_maps(args.map_size, args.map_size)
    return {"init": (cand_images[best], cand_masks[best], fallback),
            "meta": {"phantom": 10_000 + best, "candidates": args.candidates, "selection_s": round(selection_s, 2),
                     "scores": [round(x, 4) for x in scores]}}


def _rounds(args: argparse.Namespace, variants: set[str], images: Sequence[np.ndarray], init: tuple,
            fast_config: RegistrationConfig, ref_config: SitkConfig, low_config: SitkConfig,
            log: Callable[[str], None]) -> dict[str, _Variant]:
    """Every variant timed in turn for ``--rounds`` rounds, on workers started and warmed up beforehand."""
    fast_images = images[: args.n]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["spanlib.maps.registration"])
    runs = {name: _Variant() for name in ("fast", "reference", *sorted(variants))}
    per_image = max(1, min(args.chunk, -(-args.n // args.workers)))
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init, initargs=init) as pool, \
            ProcessPoolExecutor(1, mp_context=context, initializer=_init, initargs=init) as single:
        warm = [(fast_images[:2], replace(fast_config, bspline_levels=((32, 4, 2),), affine_levels=((32, 2),)))]
        list(pool.map(_torch_task, warm * args.workers))
        list(single.map(_torch_task, warm))
        for round_ in range(args.rounds):
            log(f"round {round_}: fast " + runs["fast"].add(
                *_timed(pool, _torch_task, fast_images, fast_config, per_image), keep=False))
            if "one_worker" in variants:
                log(f"round {round_}: fast, one worker " + runs["one_worker"].add(
                    *_timed(single, _torch_task, fast_images, fast_config, args.chunk), keep=False))
            ref_slice = images[round_ * args.ref_n : (round_ + 1) * args.ref_n]
            log(f"round {round_}: SimpleITK 256 px " + runs["reference"].add(
                *_timed(pool, _sitk_task, ref_slice, ref_config, 1), keep=True))
            if "sitk64" in variants:
                log(f"round {round_}: SimpleITK 64 px " + runs["sitk64"].add(
                    *_timed(pool, _sitk_task, ref_slice, low_config, 1), keep=True))
    return runs


def _summary(args: argparse.Namespace, runs: dict[str, _Variant], truths: Sequence[np.ndarray],
             exemplar: dict[str, Any]) -> dict[str, Any]:
    """Speeds and Dice of the fast and reference registrations and of the triangular heuristic."""
    n_ref_total = args.ref_n * args.rounds
    fast_truths, ref_truths = truths[: args.n], truths[:n_ref_total]
    fast_scores = dice_per_organ([r.maps for r in runs["fast"].results], fast_truths)
    fast_on_ref = dice_per_organ([r.maps for r in runs["fast"].results[:n_ref_total]], ref_truths) \
        if args.n >= n_ref_total else None
    ref_scores = dice_per_organ([r.maps for r in runs["reference"].results], ref_truths)
    tri_scores = dice_per_organ([triangular_maps(args.map_size, args.map_size)] * args.n, fast_truths)
    fast, ref = runs["fast"].summary(), runs["reference"].summary()
    return {
        "date": date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "workers": args.workers, "threads_per_worker": 1, "rounds": args.rounds,
        "n": args.n, "reference_n": n_ref_total, "image_size": args.image_size, "map_size": args.map_size,
        "exemplar": exemplar,
        "maps_per_s": fast["maps_per_s"],
        "dice_mean": _overall(fast_scores),
        "dice_per_organ": _means(fast_scores),
        "dice_mean_on_reference_images": _overall(fast_on_ref) if fast_on_ref else None,
        "reference_maps_per_s": ref["maps_per_s"],
        "reference_dice_mean": _overall(ref_scores),
        "reference_dice_per_organ": _means(ref_scores),
        "speedup": round(fast["maps_per_s"] / ref["maps_per_s"], 1),
        "cpu_ms_per_map": fast["cpu_ms_per_map"],
        "reference_cpu_ms_per_map": ref["cpu_ms_per_map"],
        "cpu_speedup": round(ref["cpu_ms_per_map"] / fast["cpu_ms_per_map"], 1),
        "maps_per_s_per_worker": round(fast["maps_per_s"] / args.workers, 3),
        "maps_per_cpu_s": round(1000.0 / fast["cpu_ms_per_map"], 2),
        "hours_190k_films_16_cores": round(CHEXPERT_FILMS * fast["cpu_ms_per_map"] / 1000.0 / 16 / 3600, 3),
        "dice_gap_vs_reference": round(_overall(ref_scores) - _overall(fast_scores), 4),
        "methods": {name: _count_methods(run.results) for name, run in runs.items()},
        "variants": {name: run.summary() for name, run in runs.items()},
        "triangular_dice": _means(tri_scores),
        "deformable_dice": _means(fast_scores),
    }


def _count_methods(results: Sequence[RegistrationResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.method] = counts.get(result.method, 0) + 1
    return counts


def _global_dice(args: argparse.Namespace, images: Sequence[np.ndarray], truths: Sequence[np.ndarray]
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the segmenter on separate phantoms, average over ``images``, score the average."""
    config = SegConfig()
    train_images, train_masks = phantoms(range(20_000, 20_000 + config.n_train), args.seed, args.image_size)
    start = time.perf_counter()
    with single_thread():
        model, info = train_segmenter(train_images, train_masks, config, device=torch.device("cpu"))
        soft = predict_probabilities(model, list(images), config, device=torch.device("cpu")).mean(axis=0)
    seconds = time.perf_counter() - start
    binary = resize_nearest(soft >= config.threshold, args.map_size, args.map_size)
    return _means(dice_per_organ([binary] * len(images), truths)), {
        "train_images": config.n_train, "steps": config.steps, "seconds": round(seconds, 1),
        "train_dice": round(info["train_dice"], 4)}


if __name__ == "__main__":
    raise SystemExit(main())

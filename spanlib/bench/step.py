"""Training-step benchmark: SPAN's overhead over DINO, and the step's efficiency.

``python -m spanlib bench step --json`` builds the ``book`` preset model twice
(``dino_cxr`` and ``span_triangular``: same model, batch and views, the only
difference being the SPAN term and its attention probe), alternates their
training steps on the same synthetic batch inside one run, and reports median
step times after warm-up. The step's floating-point operations are counted by
``torch.utils.flop_counter`` and compared with a large matmul measured in the
same run (the machine's ceiling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from spanlib.core.configs import parse_override, resolve
from spanlib.pretrain.train import Pretrainer, setup_runtime


def _batch(trainer: Pretrainer, batch_size: int, n_maps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = trainer.cfg
    s, c = cfg.model.img_size, cfg.model.in_chans
    batch = {
        "global": torch.randn(2, batch_size, c, s, s, generator=g),
        "global_maps": (torch.rand(2, batch_size, n_maps, s, s, generator=g) > 0.7).float(),
    }
    if trainer.views.n_local:
        ls = cfg.views.local_crop_size
        batch["local"] = torch.randn(trainer.views.n_local, batch_size, c, ls, ls, generator=g)
    return batch


def _schedules(trainer: Pretrainer, steps: int):
    lr = np.full(steps, 1e-4)
    return lr, np.full(steps, 0.04), np.full(steps, 0.996)


def matmul_gflops(n: int = 2048, repeats: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """Median GFLOP/s of an ``n x n`` matmul: the machine's ceiling."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_flops(trainer: Pretrainer, batch: dict[str, torch.Tensor], sched) -> int:
    with FlopCounterMode(display=False) as counter:
        trainer._train_step([batch], 0, *sched)
    return counter.get_total_flops()


def measure(preset: str, overrides: dict, steps: int, warmup: int) -> dict:
    threads = torch.get_num_threads()
    runtime = setup_runtime("auto", overrides.get("run.amp", "auto"))
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, regimen in (("dino", "dino_cxr"), ("span", "span_triangular")):
            cfg = resolve(preset, regimen, overrides)
            trainers[name] = Pretrainer(cfg, f"{tmp}/{name}", samples=[], runtime=runtime)
        cfg = trainers["span"].cfg
        bs = cfg.optim.batch_size
        batch = _batch(trainers["span"], bs, len(cfg.span.assigned_heads))
        sched = _schedules(trainers["span"], warmup + steps + 2)
        flops = {k: step_flops(t, batch, sched) for k, t in trainers.items()}
        times: dict[str, list[float]] = {"dino": [], "span": []}
        for i in range(warmup + steps):
            for name in ("dino", "span") if i % 2 == 0 else ("span", "dino"):
                t0 = time.perf_counter()
                trainers[name]._train_step([batch], 0, *sched)
                if runtime.device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
        ceiling = matmul_gflops(dtype=torch.bfloat16 if runtime.amp_dtype == torch.bfloat16 else torch.float32) if runtime.device.type == "cpu" else None
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "preset": preset,
        "device": str(runtime.device),
        "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off",
        "threads": threads,
        "batch_size": bs,
        "img_size": cfg.model.img_size,
        "steps_measured": steps,
        "dino_images_per_s": bs / med["dino"],
        "span_images_per_s": bs / med["span"],
        "span_overhead": med["span"] / med["dino"],
        "dino_step_s": med["dino"],
        "span_step_s": med["span"],
        "dino_step_gflop": flops["dino"] / 1e9,
        "span_step_gflop": flops["span"] / 1e9,
    }
    if ceiling:
        out["matmul_gflops"] = ceiling
        out["dino_step_gflops"] = flops["dino"] / 1e9 / med["dino"]
        out["share_of_matmul_ceiling"] = out["dino_step_gflops"] / ceiling
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spanlib bench step", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="book")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = measure(args.preset, dict(parse_override(s) for s in args.set), args.steps, args.warmup)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0

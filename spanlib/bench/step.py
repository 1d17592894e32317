"""Training-step benchmark: SPAN's overhead over DINO, and the step's efficiency.

``python -m spanlib bench step [--json]`` builds the ``book`` preset model twice
(``dino_cxr`` and ``span_triangular``: same model, batch and views, the only
difference being the SPAN term and its attention probe), alternates their
training steps on the same synthetic batch inside one run, and reports median
step times after warm-up. The step's floating-point operations are counted by
``torch.utils.flop_counter`` and compared with a large matmul measured in the
same run, at the same threads and dtype (the machine's ceiling):
``matmul_share`` is the step's GFLOP/s over the matmul's.

The shape flags (``--arch``, ``--img-size``, ``--batch``, ``--out-dim``,
``--local-crops``, ``--threads``, ``--amp``) time other configurations, e.g.
facebookresearch/dino's reference step::

    python -m spanlib bench step --json --arch vit_small_patch16_224 --img-size 224 \\
        --batch 16 --out-dim 65536 --local-crops 0 --threads 2 --steps 2 --warmup 1

:func:`measure` returns the result as a dict; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
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


def matmul_gflops(n: int = 2048, repeats: int = 8, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> float:
    """Median GFLOP/s of an ``n x n`` matmul: the machine's ceiling."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_flops(trainer: Pretrainer, batch: dict[str, torch.Tensor], sched) -> int:
    with FlopCounterMode(display=False) as counter:
        trainer._train_step([batch], 0, *sched)
    return counter.get_total_flops()


def step_overrides(arch: str | None = None, img_size: int | None = None, batch: int | None = None,
                   out_dim: int | None = None, local_crops: int | None = None, amp: str | None = None) -> dict:
    """Configuration overrides of the command line's shape flags.

    ``arch`` takes a timm ViT at its own dimensions (the preset's
    ``embed_dim``, ``depth``, ``num_heads`` and ``patch_size`` are dropped)
    with DINO's reference projection head (2,048 hidden, 256 bottleneck,
    no BatchNorm) and drop path 0.1, as facebookresearch/dino trains it.
    """
    out: dict = {}
    if arch is not None:
        out.update({"model.arch": arch, "model.patch_size": None, "model.embed_dim": None, "model.depth": None,
                    "model.num_heads": None, "model.drop_path_rate": 0.1, "dino.hidden_dim": 2048,
                    "dino.bottleneck_dim": 256, "dino.use_bn_in_head": False})
    for key, value in (("model.img_size", img_size), ("optim.batch_size", batch), ("dino.out_dim", out_dim),
                       ("views.local_crops_number", local_crops), ("run.amp", amp)):
        if value is not None:
            out[key] = value
    if local_crops:  # only DINO's views make local crops (the chest views make the two global ones)
        out["views.kind"] = "dino"
    return out


def measure(preset: str = "book", steps: int = 10, warmup: int = 3, *, arch: str | None = None,
            img_size: int | None = None, batch: int | None = None, out_dim: int | None = None,
            local_crops: int | None = None, threads: int | None = None, amp: str | None = None,
            overrides: dict | None = None) -> dict:
    """Alternate DINO and SPAN steps of one configuration; return speeds and efficiency.

    Keys include ``dino_images_per_s``, ``span_images_per_s``,
    ``span_overhead`` (SPAN step time / DINO step time) and ``matmul_share``
    (GFLOP/s of the DINO step over GFLOP/s of a 2048 x 2048 matmul, both
    medians over the timed rounds; the matmul is timed once a round, between
    the steps, at the same threads and dtype).
    """
    if steps < 1 or warmup < 0:
        raise ValueError("steps must be positive and warmup non-negative")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(preset, {**step_overrides(arch, img_size, batch, out_dim, local_crops, amp),
                                 **(overrides or {})}, steps, warmup)
    finally:
        torch.set_num_threads(previous)


def _measure(preset: str, overrides: dict, steps: int, warmup: int) -> dict:
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
        # on a GPU the loader's pinned batches arrive while the previous step runs: time the step, not a copy
        batch = {k: v.to(runtime.device) for k, v in batch.items()}
        sched = _schedules(trainers["span"], warmup + steps + 2)
        flops = {k: step_flops(t, batch, sched) for k, t in trainers.items()}
        times: dict[str, list[float]] = {"dino": [], "span": []}
        cpu = wall = 0.0
        dtype = runtime.amp_dtype if runtime.amp_dtype is not None else torch.float32
        ceilings: list[float] = []
        for i in range(warmup + steps):
            if i >= warmup:  # the ceiling, once a round: on shared cores it moves with the load as the steps do
                ceilings.append(matmul_gflops(repeats=4, dtype=dtype, device=runtime.device))
            for name in ("dino", "span") if i % 2 == 0 else ("span", "dino"):
                t0, c0 = time.perf_counter(), time.process_time()
                trainers[name]._train_step([batch], 0, *sched)
                if runtime.device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
                    wall += times[name][-1]
                    cpu += time.process_time() - c0
        ceiling = statistics.median(ceilings)
        backbone = trainers["span"].student.backbone
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "preset": preset,
        "device": str(runtime.device),
        "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off",
        "threads": threads,
        "arch": cfg.model.arch,
        "embed_dim": backbone.embed_dim,
        "depth": len(backbone.blocks),
        "num_heads": backbone.blocks[0].attn.num_heads,
        "params_m": sum(p.numel() for p in trainers["span"].student.parameters()) / 1e6,
        "batch_size": bs,
        "img_size": cfg.model.img_size,
        "global_crops": 2,
        "local_crops": trainers["span"].views.n_local,
        "out_dim": cfg.dino.out_dim,
        "head_hidden_dim": cfg.dino.hidden_dim,
        "head_bottleneck_dim": cfg.dino.bottleneck_dim,
        "cpu_share_of_threads": cpu / wall / threads,  # below 1: the cores were shared (or threads idled)
        "load_average_1min": os.getloadavg()[0],
        "steps_measured": steps,
        "warmup_steps": warmup,
        "dino_images_per_s": bs / med["dino"],
        "span_images_per_s": bs / med["span"],
        "span_overhead": med["span"] / med["dino"],
        "dino_step_s": med["dino"],
        "span_step_s": med["span"],
        "dino_step_s_all": times["dino"],
        "span_step_s_all": times["span"],
        "dino_step_gflop": flops["dino"] / 1e9,
        "span_step_gflop": flops["span"] / 1e9,
        "matmul_gflops": ceiling,
        "matmul_gflops_all": ceilings,
        "dino_step_gflops": flops["dino"] / 1e9 / med["dino"],
        "span_step_gflops": flops["span"] / 1e9 / med["span"],
    }
    out["matmul_share"] = out["dino_step_gflops"] / ceiling
    out["span_matmul_share"] = out["span_step_gflops"] / ceiling
    return out


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(prog="python -m spanlib bench step", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="book", help="configuration preset (default book)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per regimen, after warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per regimen first (default 3)")
    p.add_argument("--arch", help="timm ViT at its own size with DINO's reference head, e.g. vit_small_patch16_224")
    p.add_argument("--img-size", type=int, help="side of the global views in pixels")
    p.add_argument("--batch", type=int, help="images per step")
    p.add_argument("--out-dim", type=int, help="prototypes of the DINO head (DINO's reference: 65536)")
    p.add_argument("--local-crops", type=int, help="local crops per image (0: the 2 global crops only)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: leave torch's setting)")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="autocast (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other configuration key")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m spanlib bench step [--json] ...``; returns the exit status."""
    args = parser().parse_args(argv)
    result = measure(args.preset, args.steps, args.warmup, arch=args.arch, img_size=args.img_size, batch=args.batch,
                     out_dim=args.out_dim, local_crops=args.local_crops, threads=args.threads, amp=args.amp,
                     overrides=dict(parse_override(s) for s in args.set))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if not isinstance(v, list):
                print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU check of the paper's run, in one command: ``python -m spanlib bench gpu`` (or ``benchmarks/gpu_check.sh``).

On one CUDA device, with the ``paper`` preset (ViT-S/16 at 224 px, 65,536
prototypes, Table A.2's views) at bfloat16, it measures and writes to
``benchmarks/gpu.md``:

1. the training step, DINO (``dino_cxr``) and SPAN (``span_triangular``)
   alternated on one batch (:func:`spanlib.bench.step.measure`), images/s and
   peak memory, at the paper's batch of 28 a GPU and at larger batches;
2. the view loader (Table A.2's views of 256 px films, loader workers),
   images/s, since the step is only as fast as the views come;
3. evaluation: batched feature and attention extraction
   (:func:`spanlib.eval.extract.extract`) at 224 and at 480 px, images/s;
4. a one-GPU ``torchrun`` run of a few dozen steps, killed (SIGKILL) after its
   first checkpoint and resumed with ``--resume``, beside an uninterrupted
   run of the same steps: whether it finished and how far its losses are
   from the uninterrupted one's.

The goal on one H100: 1,000 images/s for the paper's SPAN step at bfloat16
(facebookresearch/dino's recipe: about 104 a V100). It takes a few minutes.
Without CUDA it refuses, unless ``--cpu-dry-run``: the same code at the
``smoke`` preset's size on the CPU, to prove the script runs (its figures
mean nothing for a GPU and are labelled so).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spanlib.bench.step import measure
from spanlib.core.configs import resolve
from spanlib.core.paths import project_root
from spanlib.data import ChestConfig, make_chest_phantom, write_folder_dataset

GOAL_IMAGES_PER_S = 1000.0
"""The paper's SPAN step at bfloat16 on one H100, images/s."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def step_rows(preset: str, batches: list[int], steps: int, warmup: int, device: torch.device) -> list[dict]:
    """The training step at each batch size: images/s of DINO and SPAN, SPAN's overhead, peak memory."""
    rows = []
    for batch in batches:
        _peak_reset(device)
        try:
            result = measure(preset, steps=steps, warmup=warmup, batch=batch, amp="bf16" if device.type == "cuda"
                             else "off")
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        rows.append({"batch": batch, "dino_images_per_s": result["dino_images_per_s"],
                     "span_images_per_s": result["span_images_per_s"], "span_overhead": result["span_overhead"],
                     "matmul_share": result["matmul_share"], "peak_gib": _peak_gib(device), "amp": result["amp"]})
    return rows


def _films(n: int, size: int) -> list:
    config = ChestConfig(image_size=size)
    return [make_chest_phantom(i, seed=11, config=config) for i in range(n)]


def loader_row(preset: str, films: list, workers: int, batch: int, batches: int) -> dict:
    """Table A.2's views through the training loader: images/s (two global views each)."""
    from torch.utils.data import DataLoader

    from spanlib.pretrain.augment import ViewMaker
    from spanlib.pretrain.loader import EpochBatchSampler, ViewDataset, collate, knowledge_map_source

    cfg = resolve(preset, "span_triangular")
    organs = tuple(cfg.span.assigned_heads)
    dataset = ViewDataset(films, ViewMaker(cfg.views, cfg.model.img_size, organs, cfg.model.in_chans),
                          knowledge_map_source(cfg.span.knowledge_maps, organs), seed=0)
    loader = DataLoader(dataset, batch_sampler=EpochBatchSampler(len(dataset), batch, 0), collate_fn=collate,
                        num_workers=workers, persistent_workers=False)
    seen, start = 0, None
    for i, b in enumerate(loader):
        if i == 1:  # the first batch pays for starting the workers
            start, seen = time.perf_counter(), 0
        seen += b["global"].shape[1]
        if i >= batches:
            break
    elapsed = time.perf_counter() - start if start else float("nan")
    return {"workers": workers, "batch": batch, "images_per_s": seen / elapsed, "films_side": films[0].image.shape[0],
            "views": cfg.views.kind}


def evaluation_rows(preset: str, films: list, device: torch.device, sizes: list[int], batch: int) -> list[dict]:
    """Feature and attention extraction of a frozen paper-size backbone at each input side: images/s."""
    from spanlib.eval.extract import extract
    from spanlib.model.vit import build_vit

    cfg = resolve(preset, "dino_start")
    model = build_vit(cfg.model).eval()
    rows = []
    for size in sizes:
        extract(model, cfg, films[:batch], batch_size=batch, img_size=size, device=device)  # warm-up
        _sync(device)
        _peak_reset(device)
        start = time.perf_counter()
        out = extract(model, cfg, films, batch_size=batch, img_size=size, device=device)
        _sync(device)
        elapsed = time.perf_counter() - start
        rows.append({"size": size, "grid": tuple(out["attention"].shape[-2:]), "images": len(films),
                     "images_per_s": len(films) / elapsed, "peak_gib": _peak_gib(device)})
    return rows


def _pretrain_cmd(preset: str, data: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29561",
            "-m", "spanlib", "pretrain", "--preset", preset, "--regimen", "span_triangular", "--data", str(data),
            "--maps", "triangular", "--out", str(out), *extra]


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def resume_row(preset: str, films: list, batch: int, epochs: int, work: Path, timeout: float) -> dict:
    """A one-process torchrun run killed by SIGKILL after its first checkpoint, resumed, beside an uninterrupted run."""
    data = write_folder_dataset(work / "films", films, {"kind": "chest", "description": "GPU check phantoms"})
    steps_per_epoch = len(films) // batch
    every = max(1, steps_per_epoch * epochs // 3)
    settings = ["--set", f"optim.batch_size={batch}", "--set", f"optim.epochs={epochs}", "--set", "run.log_every=1",
                "--set", f"run.checkpoint_every={every}", "--set", "run.num_workers=4"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    killed = work / "killed"
    proc = subprocess.Popen(_pretrain_cmd(preset, data, killed, settings), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not (killed / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    at_kill = max(_losses(killed), default=0) if (killed / "log.jsonl").is_file() else 0
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker, as a scheduler's kill would
    proc.wait()
    finished_before_kill = (killed / "done.json").is_file()
    resumed = subprocess.run(_pretrain_cmd(preset, data, killed, [*settings, "--resume"]), env=env,
                             capture_output=True, text=True, timeout=timeout)
    whole = subprocess.run(_pretrain_cmd(preset, data, work / "whole", settings), env=env, capture_output=True,
                           text=True, timeout=timeout)
    row: dict[str, Any] = {"steps": steps_per_epoch * epochs, "checkpoint_every": every, "killed_near_step": at_kill,
                           "killed_before_the_end": not finished_before_kill, "resumed_rc": resumed.returncode,
                           "uninterrupted_rc": whole.returncode}
    if resumed.returncode or whole.returncode:
        row["error"] = (resumed.stderr or whole.stderr)[-800:]
        return row
    a, b = _losses(killed), _losses(work / "whole")
    row["finished"] = json.loads((killed / "done.json").read_text())["steps"]
    row["max_loss_difference"] = max(abs(a[s] - b[s]) for s in b if s in a)
    return row


def check(cpu_dry_run: bool = False, quick: bool = False) -> dict[str, Any]:
    """Every measurement of the check, as one dict (see the module's docstring)."""
    if not torch.cuda.is_available() and not cpu_dry_run:
        raise RuntimeError("no CUDA device: the GPU check measures a GPU (--cpu-dry-run runs its code on the CPU at "
                           "the smoke preset's size, to test the script)")
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu_dry_run else "cpu")
    preset = "smoke" if cpu_dry_run else "paper"
    small = cpu_dry_run or quick
    side = 64 if cpu_dry_run else 256
    films = _films(32 if small else 512, side)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "preset": preset,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run: no GPU figures)",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "step": step_rows(preset, [8] if small else [28, 64, 128, 256], 2 if small else 20, 1 if small else 5,
                              device),
            "loader": [loader_row(preset, films, w, 8 if small else 64, 2 if small else 6)
                       for w in ([0] if cpu_dry_run else [8, 14])],
            "evaluation": evaluation_rows(preset, films, device, [32, 64] if cpu_dry_run else [224, 480],
                                          8 if small else 128),
            "resume": resume_row(preset, films[:16] if small else films[:224], 4 if small else 28,
                                 2 if small else 5, Path(tmp), 300.0),
        }
    result["seconds"] = time.perf_counter() - started
    return result


def report(result: dict[str, Any]) -> str:
    """``benchmarks/gpu.md``'s text for one check."""
    lines = [f"# GPU check: {result['device']}", "",
             f"`python -m spanlib bench gpu` (`benchmarks/gpu_check.sh`), preset `{result['preset']}`, torch "
             f"{result['torch']}, CUDA {result['cuda']}, {result['seconds']:.0f} s in all. Written by the check itself.",
             "", "## Training step (one batch, DINO and SPAN alternated; images/s; peak memory GiB with both "
             "trainers resident)", "",
             "| batch | DINO img/s | SPAN img/s | SPAN / DINO time | share of matmul ceiling | peak GiB | amp |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["step"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['error']} | | | | | |")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['batch']} | {r['dino_images_per_s']:.0f} | {r['span_images_per_s']:.0f} | "
                     f"{r['span_overhead']:.2f} | {r['matmul_share']:.2f} | {peak} | {r['amp']} |")
    best = max((r.get("span_images_per_s", 0.0) for r in result["step"]), default=0.0)
    verdict = ("a CPU dry run: not a measurement of the goal" if result["preset"] != "paper"
               else "met" if best >= GOAL_IMAGES_PER_S else "not met")
    lines += ["", f"Goal: {GOAL_IMAGES_PER_S:.0f} images/s for the SPAN step; best measured: {best:.0f} ({verdict}).",
              "", "## View loader (two views a film)", "", "| views | workers | batch | images/s |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {r['views']} | {r['workers']} | {r['batch']} | {r['images_per_s']:.0f} |" for r in result["loader"]]
    lines += ["", "## Evaluation (features and attention, frozen backbone)", "",
              "| input side | grid | images | images/s | peak GiB |", "| --- | --- | --- | --- | --- |"]
    for r in result["evaluation"]:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['size']} | {r['grid'][0]}x{r['grid'][1]} | {r['images']} | {r['images_per_s']:.0f} | {peak} |")
    r = result["resume"]
    lines += ["", "## torchrun, one GPU: killed and resumed", "",
              f"{r['steps']} steps, a checkpoint every {r['checkpoint_every']}; killed (SIGKILL) near step "
              f"{r['killed_near_step']}" + ("" if r.get("killed_before_the_end", True) else
                                               " (too late: the run had finished, so nothing was resumed)")
              + f"; resumed exit status {r['resumed_rc']}, uninterrupted {r['uninterrupted_rc']}."]
    if "error" in r:
        lines.append(f"Error: `{r['error'].strip().splitlines()[-1] if r['error'].strip() else 'none'}`")
    else:
        lines.append(f"The resumed run finished {r['finished']} steps; its largest loss difference from the "
                     f"uninterrupted run: {r['max_loss_difference']:.2e} (bfloat16 kernels are not bitwise "
                     "deterministic on a GPU).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m spanlib bench gpu [--out FILE] [--json] [--quick] [--cpu-dry-run]``."""
    p = argparse.ArgumentParser(prog="python -m spanlib bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="the report (default benchmarks/gpu.md; a dry run: none)")
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer steps and films (a minute)")
    p.add_argument("--cpu-dry-run", action="store_true", help="run the check's code on the CPU at smoke size")
    args = p.parse_args(argv)
    try:
        result = check(cpu_dry_run=args.cpu_dry_run, quick=args.quick)
    except RuntimeError as error:
        print(f"error: {error}")
        return 2
    out = args.out or (None if args.cpu_dry_run else project_root() / "benchmarks" / "gpu.md")
    if out is not None:
        Path(out).write_text(report(result), encoding="utf-8")
    print(json.dumps(result, default=str) if args.json else report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

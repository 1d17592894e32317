"""Training object-level (and plain) BYOL, with a checkpoint per epoch and a cache keyed by the config.

One step (:func:`byol_step`):

1. the masks (:func:`object_masks`): for object pooling, the target
   encoder's C4 map of the original images is mask-pooled under each SLIC
   superpixel and K-means merges the superpixels of the whole batch into
   ``K`` object masks (:func:`spanlib.byol.masks.refine_masks`); the
   superpixel ablation uses the SLIC priors unrefined; plain BYOL uses one
   mask, the whole image;
2. BYOL's two views of every image (:class:`spanlib.byol.views.ByolViews`)
   and the masks carried into each (:func:`spanlib.byol.masks.carry_masks`);
3. the C5 map of each view mask-pooled per object, projected (and, online,
   predicted); the symmetric loss over the masks present in both views
   (:func:`spanlib.byol.model.byol_loss`).

A run directory holds ``config.json``, ``checkpoint.pt`` (written atomically
after every epoch), ``log.jsonl`` and ``done.json``. A step's batch, views
and K-means seeding depend only on ``(seed, step)``, so a killed run resumed
from its checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spanlib.byol.config import ByolConfig
from spanlib.byol.masks import carry_masks, mask_pool, one_hot, refine_masks
from spanlib.byol.model import ByolNetwork, byol_loss, update_target
from spanlib.byol.views import ByolViews, normalize
from spanlib.core.checkpoint import JsonlLog, load_checkpoint, write_json
from spanlib.core.device import autocast, bf16_fast, default_device, resolve_device, torch_threads
from spanlib.model.dino import cosine_scheduler, param_groups
from spanlib.pretrain.engine import Schedules, StepResult, TrainingStep

__all__ = [
    "ByolRun",
    "build_networks",
    "byol_step",
    "default_device",
    "encoder_maps",
    "ensure_byol",
    "ensure_byol_runs",
    "load_run",
    "object_masks",
    "run_name",
    "train_byol",
]


def build_networks(cfg: ByolConfig) -> tuple[ByolNetwork, ByolNetwork]:
    """Online network (with predictor) and target (its copy, without predictor), seeded by ``cfg.seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        online = ByolNetwork(cfg.widths, cfg.proj_hidden, cfg.proj_dim)
    target = ByolNetwork(cfg.widths, cfg.proj_hidden, cfg.proj_dim, predictor=False)
    target.load_state_dict({k: v for k, v in online.state_dict().items() if not k.startswith("predictor.")})
    for p in target.parameters():
        p.requires_grad_(False)
    return online, target


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def encoder_maps(network: ByolNetwork, images: torch.Tensor, cfg: ByolConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c4, c5)`` of normalised images as float32, under bfloat16 autocast when ``cfg.bf16`` and the device has it."""
    use_bf16 = cfg.bf16 and bf16_fast(images.device.type)
    with autocast(images.device.type, torch.bfloat16 if use_bf16 else None):
        c4, c5 = network.encoder(images)
    return c4.float(), c5.float()


def object_masks(
    target: ByolNetwork, images: torch.Tensor, priors: torch.Tensor | None, cfg: ByolConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The masks a step pools under, ``[B, M, S, S]`` on the original images.

    ``object``: superpixels merged by K-means over the target's C4 features
    (``M = K``); ``superpixel``: the SLIC priors themselves (``M`` = most
    superpixels of an image in the batch); ``global``: one all-ones mask.
    """
    if cfg.pooling == "global":
        return torch.ones(images.shape[0], 1, *images.shape[-2:], device=images.device)
    if priors is None:
        raise ValueError(f"{cfg.pooling} pooling needs SLIC priors")
    if cfg.pooling == "superpixel":
        return one_hot(priors)
    with torch.no_grad():
        c4, _ = encoder_maps(target, normalize(images, cfg), cfg)
        labels = refine_masks(c4, priors, cfg.k, cfg.kmeans_iters, generator)
    return one_hot(labels, cfg.k)


def byol_step(
    online: ByolNetwork,
    target: ByolNetwork,
    views: ByolViews,
    images: torch.Tensor,
    priors: torch.Tensor | None,
    cfg: ByolConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (no optimiser step).

    Args:
        online: online network (gradients flow).
        target: target network (no gradients).
        views: the view maker.
        images: original images ``[B, 1, S, S]`` in [0, 1], on the networks' device.
        priors: SLIC label maps ``[B, S, S]`` (object and superpixel pooling), ``None`` for global pooling.
        cfg: the run's config.
        generator: random stream of the K-means seeding (CPU).

    Returns:
        ``(loss, stats)``; stats: ``masks`` (masks present in both views per
        image), ``objects`` (non-empty masks per image).
    """
    b = images.shape[0]
    masks = object_masks(target, images, priors, cfg, generator)
    (v1, box1, flip1), (v2, box2, flip2) = views(images.cpu())
    device = images.device
    v = torch.cat([v1, v2]).to(device)
    m1 = carry_masks(masks, box1.to(device), flip1.to(device), cfg.grid)
    m2 = carry_masks(masks, box2.to(device), flip2.to(device), cfg.grid)
    present = (m1.sum(dim=(-2, -1)) >= cfg.min_mask_area) & (m2.sum(dim=(-2, -1)) >= cfg.min_mask_area)
    stats = {"masks": float(present.sum()) / b, "objects": float((masks.sum(dim=(-2, -1)) > 0).sum()) / b}
    _, c5 = encoder_maps(online, v, cfg)
    p1 = online.heads(mask_pool(c5[:b], m1)[0][present])
    p2 = online.heads(mask_pool(c5[b:], m2)[0][present])
    with torch.no_grad():
        _, t5 = encoder_maps(target, v, cfg)
        z1 = target.heads(mask_pool(t5[:b], m1)[0][present])
        z2 = target.heads(mask_pool(t5[b:], m2)[0][present])
    return byol_loss(p1, p2, z1, z2), stats


def _engine(cfg: ByolConfig, online: ByolNetwork, target: ByolNetwork, out: Path, per_epoch: int,
            log: JsonlLog) -> TrainingStep:
    """The shared step skeleton with BYOL's schedules and its target's EMA; the optimiser as BYOL builds it."""
    optim = cfg.optim
    return TrainingStep(
        optimizer=torch.optim.AdamW(param_groups(online), lr=optim.lr, weight_decay=optim.weight_decay),
        schedules=Schedules(
            lr=cosine_scheduler(optim.lr, optim.min_lr, optim.epochs, per_epoch, optim.warmup_epochs),
            weight_decay=cosine_scheduler(optim.weight_decay, optim.weight_decay_end, optim.epochs, per_epoch),
            momentum=cosine_scheduler(cfg.momentum, 1.0, optim.epochs, per_epoch),
        ),
        modules={"online": online, "target": target},
        run=str(out),
        clip_module=online,
        clip_grad=optim.clip_grad,
        ema=lambda momentum: update_target(target, online, momentum),
        checkpoint=out / "checkpoint.pt",
        hint=f"Lower optim.lr (now {optim.lr}) or raise optim.warmup_epochs.",
        log=log,
    )


def _prepare(cfg: ByolConfig, images: np.ndarray, priors: np.ndarray | None,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The training images and priors on the device, and the batch size; bad input raises ``ValueError``."""
    images_t = torch.as_tensor(images[: cfg.n_train]).float()
    if images_t.dim() != 4 or images_t.shape[1] != 1 or images_t.shape[-1] != cfg.image_size:
        raise ValueError(f"images must be [N, 1, {cfg.image_size}, {cfg.image_size}], got {tuple(images_t.shape)}")
    if priors is None and cfg.pooling != "global":
        raise ValueError(f"{cfg.pooling} pooling needs SLIC priors")
    priors_t = torch.as_tensor(priors[: cfg.n_train]).long().to(device) if priors is not None else None
    images_t = images_t.to(device)
    batch = min(cfg.optim.batch_size, images_t.shape[0])
    if batch < 2:
        raise ValueError(f"need at least 2 training images, got {images_t.shape[0]}")
    return images_t, priors_t, batch


def _forward_backward(online: ByolNetwork, target: ByolNetwork, views: ByolViews, images: torch.Tensor,
                      priors: torch.Tensor | None, cfg: ByolConfig, step: int) -> StepResult:
    """BYOL's loss of one batch with the step's seeds, then its backward (when any mask is in both views)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_step_seed(cfg.seed, step))
        gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        loss, stats = byol_step(online, target, views, images, priors, cfg, gen)
    value = float(loss.detach())
    stepped = loss.requires_grad and math.isfinite(value)
    if stepped:
        loss.backward()
    return StepResult({"loss": value}, stats, stepped=stepped)


def train_byol(
    cfg: ByolConfig,
    images: np.ndarray,
    priors: np.ndarray | None,
    out: str | Path,
    resume: bool = True,
    max_steps: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train online and target networks; write the run directory.

    Args:
        cfg: the run's config.
        images: training images ``[N, 1, S, S]`` in [0, 1] (``cfg.n_train`` first ones used).
        priors: their SLIC label maps ``[N, S, S]`` (needed unless ``cfg.pooling == "global"``).
        out: the run directory.
        resume: continue from ``out/checkpoint.pt`` when present.
        max_steps: stop after this many steps in total (to test resuming);
            ``None`` trains to the end and writes ``done.json``.
        device: where to compute (default: CUDA when present, else CPU);
            views are always made on the CPU.

    Returns:
        The summary written to ``done.json`` (or the partial one).

    Raises:
        ValueError: images of the wrong shape, fewer than 2 images, missing priors.
        spanlib.pretrain.engine.DivergenceError: the loss became NaN or infinite (a
            ``FloatingPointError``; the last checkpoint is kept).
    """
    out = Path(out)
    device = resolve_device(device)
    images_t, priors_t, batch = _prepare(cfg, images, priors, device)
    n = images_t.shape[0]
    per_epoch = n // batch
    total = cfg.optim.epochs * per_epoch
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())

    with torch_threads(max(1, cfg.threads)):
        online, target = build_networks(cfg)
        online.to(device)
        target.to(device)
        log = JsonlLog(out / "log.jsonl")
        engine = _engine(cfg, online, target, out, per_epoch, log)
        start = 0
        if resume and (out / "checkpoint.pt").is_file():
            start = int(engine.restore(out / "checkpoint.pt")["step"])
        if start == 0 and (out / "log.jsonl").exists():
            (out / "log.jsonl").unlink()
        log.truncate_after(start)
        stop = total if max_steps is None else min(total, max_steps)
        began = time.perf_counter()
        _train_steps(cfg, engine, online, target, images_t, priors_t, batch, per_epoch, start, stop, log, out)
        seconds = time.perf_counter() - began
    summary = {"steps": stop, "total_steps": total, "seconds": seconds, "images": n, "batch_size": batch,
               "seconds_per_step": seconds / max(stop - start, 1), "resumed_from": start, "device": str(device),
               "threads": max(1, cfg.threads)}
    if stop == total:
        write_json(out / "done.json", summary)
    return summary


def _train_steps(cfg: ByolConfig, engine: TrainingStep, online: ByolNetwork, target: ByolNetwork,
                 images: torch.Tensor, priors: torch.Tensor | None, batch: int, per_epoch: int, start: int,
                 stop: int, log: JsonlLog, out: Path) -> None:
    """Steps ``start`` to ``stop`` through the shared skeleton; a checkpoint after every epoch and at the stop."""
    views = ByolViews(cfg)
    online.train()
    target.train()
    n = images.shape[0]
    order = None
    for step in range(start, stop):
        epoch, index = divmod(step, per_epoch)
        if order is None or index == 0:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_step_seed(cfg.seed, -1 - epoch)))
        rows = order[index * batch:(index + 1) * batch].to(images.device)
        result = engine(step, lambda: _forward_backward(online, target, views, images[rows],
                                                        priors[rows] if priors is not None else None, cfg, step))
        values = engine.schedules.values(step)
        log.write({"step": step + 1, "epoch": epoch, **result.losses, "lr": values["lr"],
                   "momentum": values["momentum"], **result.record})
        if index == per_epoch - 1 or step + 1 == stop:
            engine.save(out / "checkpoint.pt", step + 1)


def run_name(cfg: ByolConfig, data_key: str = "") -> str:
    """Folder name of a run: readable pooling, K and seed, plus a hash of the whole config and the data."""
    text = json.dumps(cfg.to_dict(), sort_keys=True) + data_key
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    what = f"object-k{cfg.k}" if cfg.pooling == "object" else cfg.pooling
    return f"{what}-seed{cfg.seed}-{digest}"


@dataclass
class ByolRun:
    """A finished run: its folder, config, networks (on the CPU, eval mode), log and summary."""

    path: Path
    config: ByolConfig
    online: ByolNetwork
    target: ByolNetwork
    log: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def encoder(self) -> torch.nn.Module:
        """The online encoder: what BYOL keeps for downstream tasks."""
        return self.online.encoder


def load_run(path: str | Path) -> ByolRun:
    """A finished run from its folder.

    Raises:
        FileNotFoundError: not a finished run (no ``done.json``).
    """
    from spanlib.core.checkpoint import read_log

    path = Path(path)
    if not (path / "done.json").is_file():
        raise FileNotFoundError(f"{path}: not a finished BYOL run (no done.json)")
    cfg = ByolConfig.from_dict(json.loads((path / "config.json").read_text()))
    online, target = build_networks(cfg)
    state = load_checkpoint(path / "checkpoint.pt")
    online.load_state_dict(state["online"])
    target.load_state_dict(state["target"])
    online.eval()
    target.eval()
    return ByolRun(path, cfg, online, target, read_log(path / "log.jsonl"),
                   json.loads((path / "done.json").read_text()))


def _run_folder(cfg: ByolConfig, root: Path, data_key: str) -> Path:
    """The run's folder; one whose saved config differs from ``cfg`` is removed (trained again)."""
    out = root / run_name(cfg, data_key)
    saved = out / "config.json"
    if saved.is_file() and ByolConfig.from_dict(json.loads(saved.read_text())) != cfg:
        shutil.rmtree(out)
    return out


def ensure_byol(cfg: ByolConfig, images: np.ndarray, priors: np.ndarray | None, root: str | Path,
                data_key: str = "", device: str | torch.device | None = None) -> ByolRun:
    """The run of ``cfg`` on these images: loaded when cached, trained (or resumed) otherwise.

    The run lives in ``root / run_name(cfg, data_key)``; pass a ``data_key``
    that identifies the images (e.g. :attr:`spanlib.byol.data.ByolData.key`)
    so that other data gets other runs.
    """
    out = _run_folder(cfg, Path(root), data_key)
    if not (out / "done.json").is_file():
        train_byol(cfg, images, priors, out, resume=True, device=device)
    return load_run(out)


def _train_job(cfg: ByolConfig, images: np.ndarray, priors: np.ndarray | None, out: Path, device: str | None) -> Path:
    train_byol(cfg, images, priors, out, resume=True, device=device)
    return out


def ensure_byol_runs(
    configs: dict[str, ByolConfig],
    images: np.ndarray,
    priors: np.ndarray | None,
    root: str | Path,
    data_key: str = "",
    workers: int = 1,
    device: str | torch.device | None = None,
) -> dict[str, ByolRun]:
    """Several runs on the same images, the missing ones trained ``workers`` at a time.

    With ``workers > 1`` each missing run trains in its own (spawned)
    process with ``cfg.threads`` threads: on a 2-core machine two
    single-thread processes do twice the work of one, where one process
    with two threads gains little and loses much when a core is busy.
    Results do not depend on ``workers``.

    Args:
        configs: name -> config.
        images: training images ``[N, 1, S, S]``.
        priors: their SLIC priors (``None`` only if every run pools globally).
        root: folder of the runs.
        data_key: identifies the images in the runs' names.
        workers: runs trained at once.
        device: where to compute (default: CUDA when present, else CPU).

    Returns:
        name -> finished run, in the order of ``configs``.
    """
    root = Path(root)
    folders = {name: _run_folder(cfg, root, data_key) for name, cfg in configs.items()}
    missing = [name for name, out in folders.items() if not (out / "done.json").is_file()]
    dev = str(device) if device is not None else None
    if workers > 1 and len(missing) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(missing)), mp_context=context) as pool:
            jobs = [
                pool.submit(_train_job, configs[name], images,
                            priors if configs[name].pooling != "global" else None, folders[name], dev)
                for name in missing
            ]
            for job in jobs:
                job.result()
    else:
        for name in missing:
            cfg = configs[name]
            _train_job(cfg, images, priors if cfg.pooling != "global" else None, folders[name], dev)
    return {name: load_run(out) for name, out in folders.items()}

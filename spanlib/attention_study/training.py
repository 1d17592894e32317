"""Training one variant (DINO with an EMA teacher, or SimCLR-style NCE), cached on disk by its configuration."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spanlib.model import dino as D
from spanlib.attention_study.config import StudyConfig
from spanlib.attention_study.losses import ProjectionHead, branch_dino_loss, branch_nce_loss, positive_top1
from spanlib.attention_study.views import CanvasRenderer, ViewStream
from spanlib.core.checkpoint import load_checkpoint, save_atomic, write_json
from spanlib.core.device import resolve_device, torch_threads
from spanlib.model.vit import build_vit
from spanlib.pretrain.engine import Schedules, StepResult, TrainingStep

CACHE_VERSION = 1
"""Bump when training changes in a way the configuration does not show, to retrain cached variants."""

Monitor = Callable[[nn.Module], Mapping[str, float]]
"""Called with the evaluated backbone (eval mode, no gradients); returns values to log."""


@dataclass
class TrainedVariant:
    """A trained (or loaded) variant.

    Attributes:
        name: the variant's name.
        config: its configuration.
        backbone: the ViT whose attention is evaluated (DINO: the teacher), in eval mode.
        log: one record per logged step (``step``, ``loss``, ...).
        seconds: training time (as recorded when it was trained).
        cached: whether it was loaded from the cache.
    """

    name: str
    config: StudyConfig
    backbone: nn.Module
    log: list[dict[str, Any]]
    seconds: float
    cached: bool = False


def train_variant(
    cfg: StudyConfig,
    renderer: CanvasRenderer,
    name: str = "variant",
    log_every: int = 25,
    monitor: Monitor | None = None,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    data_worker: bool | None = None,
    device: str | torch.device | None = None,
) -> TrainedVariant:
    """Train one variant from scratch; the caller's RNG state is left untouched.

    Every step draws ``batch_size`` digits from the renderer's pool, makes
    both branches' crops (:func:`spanlib.attention_study.views.make_views`)
    and takes one AdamW step with DINO's cosine schedules. DINO: an EMA
    teacher sees every crop, the student every crop, the loss pairs crops
    of different branches (:func:`branch_dino_loss`), the teacher is
    evaluated. NCE: one network, NT-Xent over pairs of crops of different
    branches (:func:`branch_nce_loss`).

    Args:
        cfg: the variant (``steps = 0`` returns the random initialisation).
        renderer: draws the training canvases (from the train digit pool).
        name: for messages and the result.
        log_every: log every this many steps (and the last step).
        monitor: called before the first step and at every logged step;
            its values join the log record.
        num_threads: cores to use (``None``: torch's current thread count).
            With a data worker, the model gets one thread fewer.
        progress: called with a one-line summary when done.
        data_worker: draw the batches in a worker process, so that one core
            makes canvases while another trains (default: when there are
            at least 2 cores to use and 20 steps to take). The batches are
            the same either way (:class:`~spanlib.attention_study.views.ViewStream`).
        device: where to train (default :func:`default_device`: CUDA when
            present, else the CPU).

    Returns:
        The trained variant; its backbone (on the CPU, in eval mode) is the
        one to evaluate.

    Raises:
        spanlib.pretrain.engine.DivergenceError: the loss became NaN or infinite (a ``RuntimeError``).
    """
    start = time.perf_counter()
    device = resolve_device(device)
    cores = int(num_threads or torch.get_num_threads())
    if data_worker is None:
        data_worker = cores >= 2 and cfg.steps >= 20
    with torch.random.fork_rng(devices=[]), torch_threads(cores - 1 if data_worker and cores > 1 else cores):
        torch.manual_seed(cfg.seed)
        student, teacher, loss_fn = _build(cfg, device)
        evaluated = teacher if teacher is not None else student
        log = _train_loop(cfg, renderer, name, student, teacher, loss_fn, device, log_every, monitor, data_worker) \
            if cfg.steps > 0 else []
        model = evaluated.backbone.eval().cpu()
    seconds = time.perf_counter() - start
    if progress is not None:
        last = f", last loss {log[-1]['loss']:.3f}" if log and "loss" in log[-1] else ""
        progress(f"{name}: trained {cfg.steps} steps in {seconds:.1f} s{last}")
    return TrainedVariant(name=name, config=cfg, backbone=model, log=log, seconds=seconds)


def _build(cfg: StudyConfig, device: torch.device) -> tuple[D.DinoNetwork, D.DinoNetwork | None, D.DINOLoss | None]:
    """Student, teacher and DINO loss (DINO), or the one network with a projection head (NCE)."""
    backbone = build_vit(cfg.model)
    if cfg.loss == "dino":
        head: nn.Module = D.DINOHead(backbone.num_features, cfg.dino)
    else:
        head = ProjectionHead(backbone.num_features, cfg.proj_hidden, cfg.proj_dim)
    student = D.DinoNetwork(backbone, head).to(device)
    teacher, loss_fn = None, None
    if cfg.loss == "dino":
        teacher = copy.deepcopy(student)
        for p in teacher.parameters():
            p.requires_grad = False
        loss_fn = D.DINOLoss(cfg.dino, n_crops=2, epochs=1).to(device)
    return student, teacher, loss_fn


def _engine(cfg: StudyConfig, name: str, student: D.DinoNetwork, teacher: D.DinoNetwork | None,
            loss_fn: D.DINOLoss | None) -> TrainingStep:
    """The shared step skeleton with DINO's schedules and hooks (one step per epoch); NCE has no EMA or centre."""
    optim, steps = cfg.optim, cfg.steps
    dino = teacher is not None and loss_fn is not None
    return TrainingStep(
        optimizer=torch.optim.AdamW(D.param_groups(student), foreach=True),
        schedules=Schedules(
            lr=D.cosine_scheduler(optim.lr, optim.min_lr, steps, 1, min(optim.warmup_epochs, steps)),
            weight_decay=D.cosine_scheduler(optim.weight_decay, optim.weight_decay_end, steps, 1),
            momentum=D.cosine_scheduler(cfg.dino.momentum_teacher, 1.0, steps, 1),
        ),
        modules={"student": student, **({"teacher": teacher} if teacher is not None else {})},
        run=name,
        clip_module=student,
        clip_grad=optim.clip_grad,
        grad_hook=lambda step: D.cancel_last_layer_gradients(step, student, cfg.dino.freeze_last_layer),
        ema=(lambda momentum: D.ema_update(teacher, student, momentum)) if dino else None,
        center=loss_fn.update_center if dino else None,
        hint=f"Lower optim.lr (now {optim.lr}) or raise optim.warmup_epochs (warm-up steps).",
    )


def _train_loop(cfg: StudyConfig, renderer: CanvasRenderer, name: str, student: D.DinoNetwork,
                teacher: D.DinoNetwork | None, loss_fn: D.DINOLoss | None, device: torch.device, log_every: int,
                monitor: Monitor | None, data_worker: bool) -> list[dict[str, Any]]:
    """Every step of one variant through the shared skeleton; the log records."""
    log: list[dict[str, Any]] = []
    engine = _engine(cfg, name, student, teacher, loss_fn)
    evaluated = teacher if teacher is not None else student
    batches = torch.utils.data.DataLoader(
        ViewStream(renderer, cfg),
        batch_size=None,
        num_workers=1 if data_worker else 0,
        prefetch_factor=2 if data_worker else None,
        pin_memory=device.type == "cuda",
    )
    if monitor is not None:
        log.append({"step": 0, **_observe(monitor, evaluated.backbone)})
    student.train()
    for step, (views_a, views_b) in enumerate(batches):
        views_a = [v.to(device, non_blocking=True) for v in views_a]
        views_b = [v.to(device, non_blocking=True) for v in views_b]
        result = engine(step, lambda: _forward_backward(cfg, student, teacher, loss_fn, views_a, views_b))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            record = {**result.losses, **result.record}
            if monitor is not None:
                record.update(_observe(monitor, evaluated.backbone))
            log.append({"step": step + 1, "lr": float(engine.schedules.lr[step]), **record})
    return log


def _observe(monitor: Monitor, backbone: nn.Module) -> dict[str, float]:
    """Run a monitor on the backbone in eval mode, without gradients and without touching the RNG."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return {k: float(v) for k, v in monitor(backbone).items()}
    finally:
        backbone.train(was_training)


def _forward_backward(
    cfg: StudyConfig,
    student: D.DinoNetwork,
    teacher: D.DinoNetwork | None,
    loss_fn: D.DINOLoss | None,
    views_a: list[torch.Tensor],
    views_b: list[torch.Tensor],
) -> StepResult:
    """Forward and backward of one step: the logged values and the teacher's outputs (DINO)."""
    n = cfg.crops
    logits, _, _ = student(views_a + views_b)
    chunks = logits.chunk(2 * n)
    if cfg.loss == "nce":
        loss = branch_nce_loss(chunks[:n], chunks[n:], cfg.temperature)
        loss.backward()
        with torch.no_grad():
            top1 = positive_top1(chunks[0], chunks[n])
        return StepResult({"loss": loss.item()}, {"positive_top1": top1})
    if teacher is None or loss_fn is None:
        raise ValueError("DINO needs a teacher and its loss")
    with torch.no_grad():
        teacher_logits, _, _ = teacher(views_a + views_b)
    t_chunks = teacher_logits.chunk(2 * n)
    loss = branch_dino_loss(loss_fn, chunks[:n], chunks[n:], t_chunks[:n], t_chunks[n:])
    loss.backward()
    entropy, mean_entropy = D.output_entropy(teacher_logits, loss_fn.center, loss_fn.teacher_temp(0))
    record = {"teacher_entropy": entropy, "teacher_mean_entropy": mean_entropy}
    return StepResult({"loss": loss.item()}, record, [teacher_logits.detach()])


def cache_key(cfg: StudyConfig, meta: Mapping[str, Any], monitor_key: Any = None) -> dict[str, Any]:
    """What a cached variant must match: its configuration, the data it was trained on, what was monitored."""
    data = {k: meta.get(k) for k in ("generator", "generator_version", "seed", "config", "source")}
    return json.loads(json.dumps(
        {"cache_version": CACHE_VERSION, "config": cfg.to_dict(), "data": data, "monitor": monitor_key}
    ))


def ensure_variant(
    name: str,
    cfg: StudyConfig,
    renderer: CanvasRenderer,
    meta: Mapping[str, Any],
    cache_dir: str | Path | None,
    monitor: Monitor | None = None,
    monitor_key: Any = None,
    log_every: int = 25,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainedVariant:
    """Load a variant from ``cache_dir`` when its key matches; train and cache it otherwise.

    The folder holds ``model.pt`` (the evaluated backbone), ``log.jsonl`` and
    ``key.json``, written last, so a folder without it is incomplete and is
    trained again.

    Args:
        name: the variant's name.
        cfg: its configuration.
        renderer: draws the training canvases.
        meta: the dataset's ``meta.json`` (part of the key).
        cache_dir: the variant's folder (``None``: no cache).
        monitor: see :func:`train_variant`.
        monitor_key: what identifies the monitor (part of the key).
        log_every: see :func:`train_variant`.
        num_threads: see :func:`train_variant`.
        progress: see :func:`train_variant`.
    """
    key = cache_key(cfg, meta, monitor_key)
    folder = Path(cache_dir) if cache_dir is not None else None
    if folder is not None and (folder / "key.json").is_file() and (folder / "model.pt").is_file():
        try:
            stored = json.loads((folder / "key.json").read_text())
        except json.JSONDecodeError:
            stored = {}
        if stored.get("key") == key:
            try:
                backbone = build_vit(cfg.model)
                backbone.load_state_dict(load_checkpoint(folder / "model.pt"))
                lines = (folder / "log.jsonl").read_text().splitlines() if (folder / "log.jsonl").is_file() else []
                log = [json.loads(line) for line in lines if line.strip()]
            except (ValueError, RuntimeError) as error:  # unreadable or mismatched files: train again
                if progress is not None:
                    progress(f"{name}: cached files in {folder} unusable ({error}); training again")
            else:
                if progress is not None:
                    progress(f"{name}: loaded from {folder}")
                return TrainedVariant(name, cfg, backbone.eval(), log, float(stored.get("seconds", 0.0)), cached=True)
    trained = train_variant(cfg, renderer, name, log_every, monitor, num_threads, progress)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").unlink(missing_ok=True)
        save_atomic(folder / "model.pt", trained.backbone.state_dict())
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trained.log))
        write_json(folder / "key.json", {"key": key, "seconds": round(trained.seconds, 2)})
    return trained

"""Pretraining: DINO, optionally with the SPAN regularizer, on CPU or GPUs.

``python -m spanlib pretrain --preset book --regimen span_deformable`` (one
process) or ``torchrun --nproc_per_node N -m spanlib pretrain ...`` (DDP).
A run directory holds ``config.yaml``, ``log.jsonl``, ``checkpoint.pt`` (the
latest, written atomically every ``run.checkpoint_every`` steps and at the
end) and ``done.json`` once finished. ``--resume`` continues from the last
checkpoint and gives the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spanlib.model import dino as D
from spanlib.pretrain.augment import ViewMaker
from spanlib.core.checkpoint import JsonlLog, load_checkpoint, write_json
from spanlib.core.configs import Config, load_config
from spanlib.core.device import Runtime, setup_runtime
from spanlib.pretrain.engine import DivergenceError, Schedules, StepResult, TrainingStep
from spanlib.pretrain.loader import EpochBatchSampler, ViewDataset, collate, knowledge_map_source
from spanlib.model.span import span_terms, uses_span
from spanlib.model.vit import build_vit

__all__ = ["DivergenceError", "PooledSamples", "Pretrainer", "Runtime", "load_samples", "param_checksum", "pretrain",
           "setup_runtime", "start_checkpoint"]


def load_samples(cfg: Config) -> Sequence:
    """The pretraining samples named by ``run.data``, ``run.reader`` and ``run.split``, read lazily.

    The folder and images readers keep only ``run.split``; another reader
    (CheXpert's ``train.csv``...) keeps the records of that split when it has
    any, else every record. Pretraining reads no masks. Films are read at
    most :func:`working_side` on their longer side, whatever their size.
    """
    if not cfg.run.data:
        raise ValueError("no data: set run.data (a dataset folder) or pass samples")
    if not isinstance(cfg.run.data, str):  # several folders pooled (the shared start)
        return PooledSamples([load_samples(cfg.replace(**{"run.data": d})) for d in cfg.run.data])
    from spanlib.data import open_dataset

    if cfg.run.reader == "folder":
        dataset = open_dataset("folder", cfg.run.data, split=cfg.run.split)
    elif cfg.run.reader == "images":
        dataset = open_dataset("images", cfg.run.data, split=cfg.run.split, require_masks=False)
    else:
        dataset = open_dataset(cfg.run.reader, cfg.run.data)
        kept = [r for r in dataset.records if r.split == cfg.run.split]
        if kept:
            dataset.records, dataset.ids = kept, [r.id for r in kept]
    dataset.max_side = working_side(cfg)
    return dataset


def working_side(cfg: Config) -> int:
    """The longest side a pretraining film is kept at: twice the model's input side.

    A global crop (at least 40% of the film's area in every preset) resized
    to the input side loses nothing when the film is twice that side, so a
    folder of 2048-pixel films is shrunk on reading (aspect kept) instead of
    held in memory at full size. Every generated set of the presets is at
    most this side already, so it is read unchanged.
    """
    return 2 * int(cfg.model.img_size)


class PooledSamples(Sequence):
    """Several datasets read as one pretraining set, in order (ids must not repeat)."""

    def __init__(self, parts: Sequence[Sequence]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.ids = [i for p in self.parts for i in (getattr(p, "ids", None) or [s.id for s in p])]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("pooled datasets share sample ids; give each set its own ids")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


def start_checkpoint(path: str | Path) -> Path:
    """The checkpoint of a finished run to start from: ``path`` itself or ``path/checkpoint.pt``.

    Raises:
        FileNotFoundError: no checkpoint there, or the run has not finished.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "done.json").is_file():
            raise FileNotFoundError(f"{path}: run.init_from names a run that has not finished (no done.json)")
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run.init_from checkpoint not found")
    return path


def param_checksum(module: torch.nn.Module) -> float:
    """A position-weighted sum of every parameter, to compare ranks."""
    total = 0.0
    for i, p in enumerate(module.parameters()):
        total += (i + 1) * p.detach().double().sum().item()
    return total


class Pretrainer:
    """One pretraining run.

    Args:
        cfg: the resolved configuration.
        out: the run directory.
        samples: pretraining samples; read from ``cfg.run.data`` when ``None``.
        runtime: device and process group; chosen automatically when ``None``.
    """

    def __init__(self, cfg: Config, out: str | Path, samples: Sequence | None = None, runtime: Runtime | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.rt = runtime or setup_runtime(cfg.run.device, cfg.run.amp)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % (2**32))
        self.organs = tuple(cfg.span.assigned_heads)
        self.head_index = [cfg.span.assigned_heads[o] for o in self.organs]
        self.use_span = uses_span(cfg.span)

        backbone = build_vit(cfg.model)
        heads = backbone.blocks[-1].attn.num_heads
        bad = [h for h in self.head_index if not 0 <= h < heads]
        if bad:
            raise ValueError(f"assigned heads {bad} do not exist: the last block has {heads} heads")
        self.student = D.DinoNetwork(backbone, D.DINOHead(backbone.num_features, cfg.dino)).to(self.rt.device)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad = False
        start_center = self._start_from(cfg.run.init_from) if cfg.run.init_from else None
        self.student_ddp: torch.nn.Module = self.student
        if self.rt.distributed:
            self.student_ddp = DistributedDataParallel(
                self.student, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None
            )

        self.views = ViewMaker(cfg.views, cfg.model.img_size, self.organs, cfg.model.in_chans)
        self.samples = samples
        self.n_crops = 2 + self.views.n_local
        self.loss_fn = D.DINOLoss(cfg.dino, self.n_crops, cfg.optim.epochs).to(self.rt.device)
        if start_center is not None:
            self.loss_fn.center.copy_(start_center.to(self.rt.device))
        scales = None
        if self.use_span and cfg.span.attention_lr_scale != 1.0:
            scales = {f"backbone.blocks.{len(backbone.blocks) - 1}.attn.qkv.": cfg.span.attention_lr_scale,
                      "backbone.pos_embed": cfg.span.attention_lr_scale}
        groups = D.param_groups(self.student, scales)
        # foreach: one fused kernel per group instead of a Python loop over
        # parameters (PyTorch only defaults to it on CUDA); on CUDA Adam's
        # whole update is one fused kernel
        kernel = {"fused": True} if self.rt.device.type == "cuda" else {"foreach": True}
        if cfg.optim.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, **kernel)
        elif cfg.optim.optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, **kernel)
        elif cfg.optim.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=0, momentum=0.9, foreach=True)
        else:
            raise ValueError(f"unknown optimizer {cfg.optim.optimizer!r}")
        self.step = 0
        self.log = JsonlLog(self.out / "log.jsonl", enabled=self.rt.main)
        self.engine = self._engine()

    def _engine(self) -> TrainingStep:
        """The shared step skeleton with DINO's hooks (schedules are set by :meth:`fit`)."""
        cfg = self.cfg
        return TrainingStep(
            optimizer=self.optimizer,
            schedules=Schedules(lr=np.zeros(0)),
            modules={"student": self.student, "teacher": self.teacher},
            run=cfg.name,
            clip_module=self.student,
            clip_grad=cfg.optim.clip_grad,
            grad_hook=lambda epoch: D.cancel_last_layer_gradients(epoch, self.student, cfg.dino.freeze_last_layer),
            ema=lambda momentum: D.ema_update(self.teacher, self.student, momentum),
            center=lambda outputs: self.loss_fn.update_center(outputs),
            checkpoint=self.out / "checkpoint.pt",
            hint="Lower optim.lr or raise optim.warmup_epochs.",
            runtime=self.rt,
            log=self.log,
            scaler=self.rt.grad_scaler(),
        )

    def _start_from(self, init_from: str) -> torch.Tensor:
        """Load student and teacher (backbone and head) of a finished run; return its DINO centre."""
        path = start_checkpoint(init_from)
        state = load_checkpoint(path)
        try:
            self.student.load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
        except (KeyError, RuntimeError) as error:
            raise ValueError(
                f"{path}: run.init_from does not fit this run's model and DINO head "
                f"(model and dino sections must match the start's): {str(error).splitlines()[0]}"
            ) from error
        return state["center"]

    # ----------------------------------------------------------------- data
    def _loader(self) -> tuple[DataLoader, EpochBatchSampler]:
        cfg = self.cfg
        samples = self.samples if self.samples is not None else load_samples(cfg)
        maps = knowledge_map_source(cfg.span.knowledge_maps if self.use_span else None, self.organs if self.use_span else ())
        dataset = ViewDataset(samples, self.views, maps, cfg.run.seed)
        if dataset.skipped and self.rt.main:
            shown = "; ".join(str(p) for p in dataset.skipped[:5])
            print(f"pretrain: {len(dataset.skipped)} bad file(s) or row(s) left out ({shown}"
                  f"{' ...' if len(dataset.skipped) > 5 else ''}); `python -m spanlib data scan` lists them all")
            write_json(self.out / "skipped.json", {"count": len(dataset.skipped),
                                                   "problems": [str(p) for p in dataset.skipped]})
        sampler = EpochBatchSampler(len(dataset), cfg.optim.batch_size, cfg.run.seed, self.rt.rank, self.rt.world)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=min(cfg.run.num_workers, sampler.batches_per_epoch()),  # no idle workers on a tiny set
            pin_memory=self.rt.device.type == "cuda",
            # the loader's own generator: iterating must not consume the global
            # RNG, or a resumed run would draw different drop-path masks
            generator=torch.Generator().manual_seed(cfg.run.seed),
        )
        return loader, sampler

    # ------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, Any]:
        return self.engine.state(
            self.step, center=self.loss_fn.center.detach().cpu(), config=self.cfg.to_dict(), rng=torch.get_rng_state()
        )

    def save(self) -> None:
        if self.rt.distributed:
            sums = [None] * self.rt.world
            dist.all_gather_object(sums, param_checksum(self.student))
            if len(set(sums)) != 1:
                raise RuntimeError(f"step {self.step}: ranks hold different parameters {sums}")
            self.log.write({"event": "checkpoint", "step": self.step, "param_checksums": sums})
        if self.rt.main:
            self.engine.save(
                self.out / "checkpoint.pt", self.step,
                center=self.loss_fn.center.detach().cpu(), config=self.cfg.to_dict(), rng=torch.get_rng_state(),
            )

    def restore(self, path: Path) -> None:
        state = self.engine.restore(path)
        self.loss_fn.center.copy_(state["center"].to(self.rt.device))
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"])
        self.log.truncate_after(self.step)

    # ------------------------------------------------------------- training
    def fit(self, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or stop early for tests).

        Returns:
            A summary: steps, epochs, seconds, last logged losses.
        """
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rt.main:
            (self.out / "config.yaml").write_text(cfg.to_yaml())
        if not cfg.run.train:
            self.save()
            return self._finish({"steps": 0, "note": "untrained (random init)"}, 0.0)
        if cfg.dino.freeze_last_layer >= cfg.optim.epochs:
            raise ValueError(
                f"{self.out}: dino.freeze_last_layer={cfg.dino.freeze_last_layer} freezes the head's prototype layer "
                f"for the whole of a {cfg.optim.epochs}-epoch run, so DINO's loss cannot leave log K; "
                "set it below optim.epochs (0 for a short run)"
            )
        loader, sampler = self._loader()
        accum = cfg.optim.accum_steps
        steps_per_epoch = sampler.batches_per_epoch() // accum
        if steps_per_epoch == 0:
            raise ValueError(f"{sampler.batches_per_epoch()} batches per epoch cannot fill {accum} accumulation steps")
        total_steps = cfg.optim.epochs * steps_per_epoch
        self.engine.schedules = self._schedules(steps_per_epoch)
        start = time.perf_counter()
        bar = tqdm(total=total_steps, initial=self.step, disable=not self.rt.main, desc=cfg.name, mininterval=5)
        record: dict[str, Any] = {}
        while self.step < total_steps:
            epoch = self.step // steps_per_epoch
            sampler.set_epoch(epoch, start_batch=(self.step % steps_per_epoch) * accum)
            batches = iter(loader)
            for _ in range(steps_per_epoch - self.step % steps_per_epoch):
                record = self._train_step([next(batches) for _ in range(accum)], epoch)
                self.step += 1
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == total_steps:
                    record.update(step=self.step, epoch=epoch, seconds=round(time.perf_counter() - start, 3))
                    self.log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                if self.step % cfg.run.checkpoint_every == 0 and self.step < total_steps:
                    self.save()
                if stop_after_steps is not None and self.step >= stop_after_steps:
                    bar.close()
                    return {"steps": self.step, "stopped": True}
            del batches
        bar.close()
        self.save()
        return self._finish({"steps": self.step, "epochs": cfg.optim.epochs, "last": record}, time.perf_counter() - start)

    def _schedules(self, steps_per_epoch: int) -> Schedules:
        """DINO's per-iteration schedules: learning rate (scaled by the total batch), weight decay, teacher momentum."""
        optim = self.cfg.optim
        total_batch = optim.batch_size * optim.accum_steps * self.rt.world
        peak = optim.lr * total_batch / 256 if optim.lr_batch_scaling else optim.lr
        return Schedules(
            lr=D.cosine_scheduler(peak, optim.min_lr, optim.epochs, steps_per_epoch,
                                  optim.warmup_epochs),
            weight_decay=D.cosine_scheduler(optim.weight_decay, optim.weight_decay_end, optim.epochs, steps_per_epoch),
            momentum=D.cosine_scheduler(self.cfg.dino.momentum_teacher, 1.0, optim.epochs, steps_per_epoch),
        )

    def _finish(self, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
        summary["seconds"] = round(seconds, 2)
        if self.rt.main:
            write_json(self.out / "done.json", summary)
        return summary

    def _train_step(self, micro_batches, epoch, *schedules) -> dict[str, Any]:
        """One optimiser step through the shared skeleton; ``schedules`` (lr, weight decay, momentum) replace the run's."""
        if schedules:
            self.engine.schedules = Schedules(*schedules)
        it = self.step
        result = self.engine(it, lambda: self._forward_backward(micro_batches, epoch), epoch=epoch)
        features, images = result.extras["features"], result.extras["images"]
        with torch.no_grad():
            feats = F.normalize(features[: images * 2].float(), dim=-1)
            embed_std = (feats.std(dim=0).mean() * math.sqrt(feats.shape[-1])).item()
        losses = self._mean_over_ranks(result.losses)
        teacher_outputs = result.teacher_outputs or []
        ent, ent_mean = D.output_entropy(teacher_outputs[-1], self.loss_fn.center, self.loss_fn.teacher_temp(epoch))
        return {
            **losses,
            **result.record,
            **self.engine.schedules.values(it),
            "teacher_temp": self.loss_fn.teacher_temp(epoch),
            "teacher_entropy": ent,
            "teacher_mean_entropy": ent_mean,
            "embed_std": embed_std,
        }

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """The step's losses averaged over the DDP ranks (each rank's are of its share of the batch), so that the
        log shows the loss of the whole batch, as one process would."""
        if not self.rt.distributed:
            return values
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(tensor)
        return {n: float(v) / self.rt.world for n, v in zip(names, tensor.tolist())}

    def _forward_backward(self, micro_batches, epoch) -> StepResult:
        """DINO (plus SPAN) forward and backward over the step's micro-batches, gradients synced once under DDP."""
        rt = self.rt
        teacher_outputs, totals = [], {"loss": 0.0, "dino_loss": 0.0, "span_loss": 0.0}
        diag: dict[str, float] = {}
        for m, batch in enumerate(micro_batches):
            global_crops = [c.to(rt.device, non_blocking=True) for c in batch["global"]]
            crops = global_crops + ([c.to(rt.device, non_blocking=True) for c in batch["local"]] if "local" in batch else [])
            sync = contextlib.nullcontext()
            if rt.distributed and m < len(micro_batches) - 1:
                sync = self.student_ddp.no_sync()
            with sync:
                with self.engine.autocast():
                    with torch.no_grad():
                        teacher_logits, _, _ = self.teacher(global_crops)
                    student_logits, features, attention = self.student_ddp(crops, n_attention=2 if self.use_span else 0)
                    dino_loss = self.loss_fn(student_logits, teacher_logits, epoch)
                    loss = dino_loss
                    if self.use_span:
                        terms = self._span_terms(attention, batch)
                        loss = loss + terms.loss
                        diag["inside_share"] = diag.get("inside_share", 0.0) + terms.inside_share.item() / len(micro_batches)
                self.engine.backward(loss / len(micro_batches))
            teacher_outputs.append(teacher_logits.detach())
            totals["loss"] += loss.item() / len(micro_batches)
            totals["dino_loss"] += dino_loss.item() / len(micro_batches)
            if self.use_span:
                totals["span_loss"] += terms.loss.item() / len(micro_batches)
        return StepResult(totals, diag, teacher_outputs,
                          extras={"features": features, "images": global_crops[0].shape[0]})

    def _span_terms(self, attention, batch):
        """SPAN's terms (the paper's inclusion and exclusion, the coverage extension where weighted) on the assigned
        heads of the two global views."""
        maps = batch["global_maps"].to(self.rt.device).flatten(0, 1)
        return span_terms(attention, maps, self.head_index, self.cfg.span)


def pretrain(
    cfg: Config,
    out: str | Path,
    samples: Sequence | None = None,
    resume: bool = False,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train one run; the library entry point behind ``python -m spanlib pretrain``.

    Args:
        cfg: the configuration (see :func:`spanlib.core.configs.resolve`).
        out: the run directory.
        samples: pretraining samples; ``cfg.run.data`` is read when ``None``.
        resume: continue from ``out/checkpoint.pt``. The saved config is used.
        stop_after_steps: stop after this many optimizer steps, as a kill would
            (for tests of resumption).

    Returns:
        The run summary (also written to ``out/done.json``).
    """
    out = Path(out)
    ckpt = out / "checkpoint.pt"
    if resume and (out / "done.json").exists():
        import json

        return json.loads((out / "done.json").read_text())
    if resume and (out / "config.yaml").exists():
        cfg = load_config(out / "config.yaml")
    elif not resume and ckpt.exists():
        raise FileExistsError(f"{out}: a run is already there; pass --resume to continue it or choose another --out")
    trainer = Pretrainer(cfg, out, samples)
    if resume and ckpt.exists():
        trainer.restore(ckpt)
    return trainer.fit(stop_after_steps=stop_after_steps)

"""The one training-step skeleton every trainer of the library uses (DINO/SPAN, the attention study, BYOL).

A trainer builds its networks and optimiser and supplies only its own
forward and loss, as a closure that runs forward and backward and returns a
:class:`StepResult`. :class:`TrainingStep` does the rest, in this order, the
same for every trainer:

1. the per-iteration schedules into the optimiser's parameter groups
   (:class:`Schedules`: learning rate of every group, weight decay of the
   first, the regularised one, :func:`spanlib.model.dino.param_groups`);
2. the trainer's forward and backward (under :meth:`TrainingStep.autocast`
   where the trainer asks for it);
3. the finite-loss check (:func:`check_finite`): one error type,
   :class:`DivergenceError`, with one message shape (run, step, the loss
   terms, where the last good checkpoint is), agreed across DDP ranks;
4. gradient clipping (DINO's per-parameter clip) and the trainer's gradient
   hook (DINO: the prototype layer's gradients cancelled while frozen);
5. the optimiser step, gradients set to ``None``;
6. the EMA hook with the step's momentum (DINO's teacher, BYOL's target)
   and the centre hook with the step's teacher outputs (DINO's centre).

Checkpoints (:meth:`TrainingStep.save`, :meth:`TrainingStep.restore`) hold
the named modules, the optimiser, the step and whatever the trainer adds,
written atomically through :func:`spanlib.core.checkpoint.save_atomic`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spanlib.core.checkpoint import JsonlLog, load_checkpoint, save_atomic
from spanlib.core.device import Runtime
from spanlib.model.dino import clip_gradients


class DivergenceError(FloatingPointError, RuntimeError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept.

    A ``FloatingPointError`` and a ``RuntimeError`` both, so that code that
    caught either from the trainers before they shared this skeleton still does.
    """


@dataclass
class StepResult:
    """What a trainer's forward and backward of one step gives the skeleton.

    Attributes:
        losses: the loss terms as floats, ``"loss"`` (the total) first; all
            are logged, the total is checked to be finite.
        record: other values of the step to log.
        teacher_outputs: the teacher's outputs for the centre hook (``None``: no centre update).
        stepped: whether a gradient was computed (``False``: the optimiser
            step is skipped, as BYOL's when no mask is in both views).
        extras: anything else the trainer wants back after the step (not logged).
    """

    losses: dict[str, float]
    record: dict[str, Any] = field(default_factory=dict)
    teacher_outputs: list[torch.Tensor] | None = None
    stepped: bool = True
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Schedules:
    """Per-iteration values: learning rate, weight decay (``None``: as built) and EMA momentum (``None``: no EMA)."""

    lr: np.ndarray
    weight_decay: np.ndarray | None = None
    momentum: np.ndarray | None = None

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> None:
        """Set iteration ``it``'s learning rate in every group (times its ``lr_scale``) and its weight decay in the
        regularised ones (the first, and any marked ``regularized``)."""
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(self.lr[it]) * group.get("lr_scale", 1.0)
            if (i == 0 or group.get("regularized")) and self.weight_decay is not None:
                group["weight_decay"] = float(self.weight_decay[it])

    def values(self, it: int) -> dict[str, float]:
        """Iteration ``it``'s scheduled values, for the log."""
        out = {"lr": float(self.lr[it])}
        if self.weight_decay is not None:
            out["weight_decay"] = float(self.weight_decay[it])
        if self.momentum is not None:
            out["momentum"] = float(self.momentum[it])
        return out


def divergence_message(run: str, step: int, losses: Mapping[str, float], checkpoint: Path | None, hint: str) -> str:
    """The one message of a diverged run: run, step, loss terms, where the last good checkpoint is, what to try."""
    if checkpoint is None:
        where = "this run keeps no checkpoint"
    elif Path(checkpoint).exists():
        where = f"the last good checkpoint is {checkpoint}"
    else:
        where = "no checkpoint was written yet"
    terms = ", ".join(f"{name} {value}" for name, value in losses.items())
    return f"{run}: loss is not finite at step {step} ({terms}); training stopped; {where}. {hint}".rstrip()


def check_finite(
    losses: Mapping[str, float],
    *,
    run: str,
    step: int,
    checkpoint: Path | None = None,
    hint: str = "",
    runtime: Runtime | None = None,
    log: JsonlLog | None = None,
) -> None:
    """Raise :class:`DivergenceError` when the total loss (``losses["loss"]``) is NaN or infinite.

    Under DDP every rank raises when any rank's loss is not finite. A
    ``log`` gets a ``diverged`` record first.
    """
    bad = torch.tensor([0.0 if math.isfinite(losses["loss"]) else 1.0])
    if runtime is not None and runtime.distributed:
        import torch.distributed as dist

        bad = bad.to(runtime.device)
        dist.all_reduce(bad)
    if bad.item() > 0:
        if log is not None:
            log.write({"event": "diverged", "step": step, **losses})
        raise DivergenceError(divergence_message(run, step, losses, checkpoint, hint))


@dataclass
class TrainingStep:
    """One optimiser step of any trainer; the trainer supplies its forward and loss.

    Attributes:
        optimizer: the trainer's optimiser.
        schedules: per-iteration learning rate, weight decay, momentum.
        modules: name -> module saved in checkpoints (``student``, ``teacher``; ``online``, ``target``).
        run: the run's name, for messages.
        clip_module: the module whose gradients are clipped (``None``: no clipping).
        clip_grad: DINO's per-parameter gradient norm clip (0: none).
        grad_hook: called with the epoch after clipping, before the optimiser step.
        ema: called with the step's momentum after the optimiser step.
        center: called with the step's teacher outputs after the EMA.
        checkpoint: where the trainer's checkpoint lives (``None``: it keeps none).
        hint: what to try when the loss diverges, appended to the message.
        runtime: device, autocast and DDP (``None``: one process, no autocast).
        log: the run's log, for the ``diverged`` record.
        scaler: a gradient scaler (float16 autocast; :meth:`spanlib.core.device.Runtime.grad_scaler`):
            the trainer's backward goes through :meth:`backward`, the gradients
            are unscaled before clipping, and a step whose gradients overflowed
            is skipped by the scaler. Saved in and restored from checkpoints.
    """

    optimizer: torch.optim.Optimizer
    schedules: Schedules
    modules: Mapping[str, nn.Module] = field(default_factory=dict)
    run: str = "run"
    clip_module: nn.Module | None = None
    clip_grad: float = 0.0
    grad_hook: Callable[[int], None] | None = None
    ema: Callable[[float], None] | None = None
    center: Callable[[Sequence[torch.Tensor]], None] | None = None
    checkpoint: Path | None = None
    hint: str = ""
    runtime: Runtime | None = None
    log: JsonlLog | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The runtime's autocast (a null context without a runtime)."""
        return self.runtime.autocast() if self.runtime is not None else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the gradient scaler where there is one."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def __call__(self, it: int, forward_backward: Callable[[], StepResult], epoch: int | None = None) -> StepResult:
        """Take optimiser step ``it`` (0-based) with the trainer's forward and backward.

        Args:
            it: the iteration, index into the schedules (and the step named by errors).
            forward_backward: runs the trainer's forward, loss and backward.
            epoch: passed to the gradient hook (default ``it``).

        Raises:
            DivergenceError: the loss is NaN or infinite.
        """
        self.schedules.apply(self.optimizer, it)
        result = forward_backward()
        check_finite(result.losses, run=self.run, step=it, checkpoint=self.checkpoint, hint=self.hint,
                     runtime=self.runtime, log=self.log)
        if result.stepped:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
            if self.clip_grad and self.clip_module is not None:
                clip_gradients(self.clip_module, self.clip_grad)
            if self.grad_hook is not None:
                self.grad_hook(it if epoch is None else epoch)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.schedules.momentum is not None:
            self.ema(float(self.schedules.momentum[it]))
        if self.center is not None and result.teacher_outputs is not None:
            self.center(result.teacher_outputs)
        return result

    # ------------------------------------------------------------ checkpoint
    def state(self, step: int, **extra: Any) -> dict[str, Any]:
        """The checkpoint's content: every module's state, the optimiser's, the step, and ``extra``."""
        state: dict[str, Any] = {name: module.state_dict() for name, module in self.modules.items()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return {**state, "optimizer": self.optimizer.state_dict(), "step": step, **extra}

    def save(self, path: Path, step: int, **extra: Any) -> None:
        """Write :meth:`state` to ``path`` atomically."""
        save_atomic(Path(path), self.state(step, **extra))

    def restore(self, path: Path) -> dict[str, Any]:
        """Load the modules and the optimiser from a checkpoint; return the whole state (``step`` and extras)."""
        state = load_checkpoint(Path(path))
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        return state

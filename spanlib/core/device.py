"""Where and how torch runs, chosen in one place: the device, autocast, DDP under torchrun, native bfloat16, threads."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch


def default_device() -> torch.device:
    """CUDA when present, else the CPU (which always works)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX, from ``/proc/cpuinfo``).

    Without it torch emulates bfloat16 on the CPU, about ten times slower than
    float32 for small convolutional nets (measured on an AVX2 machine:
    11 s a BYOL step against under 1 s). Unknown (no ``/proc/cpuinfo``): False.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_fast(device_type: str) -> bool:
    """Whether bfloat16 autocast pays on this device: CUDA, or a CPU with native bfloat16."""
    return device_type == "cuda" or (device_type == "cpu" and cpu_bf16_native())


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads inside the block (``None``: leave as is), then restore the previous count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` or ``"auto"``: :func:`default_device`."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return default_device()
    return torch.device(device)


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on a device type; ``None``: no autocast (a null context)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``amp`` setting -> autocast dtype (``off``: float32 throughout)."""


@dataclass
class Runtime:
    """Where and how this process computes: device, autocast dtype, rank and world size (DDP)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device.type, self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler where the autocast dtype needs one (float16), else None.

        float16 has five exponent bits: small gradients underflow to zero
        unless the loss is scaled up before the backward pass and the
        gradients scaled back before the optimiser step (and the step skipped
        when they overflow). bfloat16 keeps float32's range and needs none.
        """
        if self.amp_dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)


def amp_dtype(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting: ``auto`` is bf16 on CUDA and off elsewhere.

    ``fp16`` is accepted on CUDA only, where training runs it with a gradient
    scaler (:meth:`Runtime.grad_scaler`); on a CPU it is refused in favour of
    ``bf16``, which CPUs compute natively or not at all in half precision.

    Raises:
        ValueError: an unknown setting, or fp16 off CUDA.
    """
    if amp is False or amp is None:  # YAML reads a bare `off` as false
        amp = "off"
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be auto, off, bf16 or fp16, not {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp: fp16 runs on CUDA only (with a gradient scaler); on {device.type} use amp: bf16 "
                         "(same speed-up where the CPU has bfloat16, no scaler needed) or amp: off")
    return AMP_DTYPES[amp]


def setup_runtime(device: str | torch.device | None = "auto", amp: str | bool | None = "auto") -> Runtime:
    """Pick the device (CUDA when present, else CPU) and join DDP under torchrun.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes the CUDA device
    of its ``LOCAL_RANK`` and joins the process group (NCCL on CUDA, gloo on
    the CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, amp_dtype=amp_dtype(amp, dev), rank=rank, world=world)

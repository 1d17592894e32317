"""Where and how torch runs: the default device, native bfloat16, and the intra-op thread count inside a block."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
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

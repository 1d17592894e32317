"""Atomic file writes (any file, torch checkpoints, JSON) and JSON-lines logs."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_TMP_COUNTER = itertools.count()


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Readers never see half a file, and a run killed while writing leaves the
    previous file intact. The parent folder is created; the temporary file
    (``.<name>.<pid>.<n>.tmp``, created with the usual permissions) is removed
    whatever happens.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TMP_COUNTER)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_json(path: Path, payload: Any, *, indent: int = 2, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``payload`` as JSON (keys in insertion order, a final newline) atomically (see :func:`write_atomic`).

    Args:
        path: the file written.
        payload: anything ``json.dumps`` takes.
        indent: the indentation of ``json.dumps``.
        default: ``json.dumps``'s fallback for other objects (None: they raise ``TypeError``).
    """
    text = json.dumps(payload, indent=indent, default=default) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file.

    ``mmap``: map the file instead of reading it, so that only the tensors
    used are read (a paper-size run's checkpoint is 0.7 GB, most of it the
    optimiser's state, which evaluation never touches); for reading only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from exc


class JsonlLog:
    """Append-only JSON-lines log; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

"""The one atomic writer family (spanlib.core.checkpoint) that the map builder and the trainers share."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from spanlib.core.checkpoint import load_checkpoint, save_atomic, write_atomic, write_json


def test_write_json_writes_creates_folders_and_leaves_no_temp_file(tmp_path) -> None:
    path = tmp_path / "deep" / "folder" / "report.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1, 2]}
    assert path.read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"  # insertion order, final newline
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_json_formatting_options(tmp_path) -> None:
    path = tmp_path / "manifest.json"
    write_json(path, {"where": tmp_path}, indent=1, default=str)
    assert path.read_text() == json.dumps({"where": str(tmp_path)}, indent=1) + "\n"
    with pytest.raises(TypeError):
        write_json(tmp_path / "other.json", {"where": tmp_path})  # no default: not JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_write_json_replaces_atomically(tmp_path, monkeypatch) -> None:
    path = tmp_path / "done.json"
    write_json(path, {"version": 1})
    seen = []
    replace = os.replace

    def spy(src, dst):  # the target still holds the old file until the finished temp file is renamed onto it
        seen.append((json.loads(path.read_text()), json.loads(Path(src).read_text()), os.path.dirname(src)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_json(path, {"version": 2})
    assert seen == [({"version": 1}, {"version": 2}, str(tmp_path))]
    assert json.loads(path.read_text()) == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path) -> None:
    path = tmp_path / "maps.npz"
    path.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]


def test_save_atomic_takes_the_path_first(tmp_path) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    save_atomic(path, {"step": 3, "weights": torch.ones(2)})
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["weights"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]

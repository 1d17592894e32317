"""The ``pretrained`` start: a local checkpoint every regimen continues, ``dino_start`` that checkpoint frozen.

Runs are made in a copy of the book's layout under ``tmp_path`` (the library
linked), at the ``smoke`` preset's size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spanlib.book.runs import chapter_regimens, ensure_pretrained, run_key, start_note
from spanlib.core.configs import REGIMENS, resolve
from spanlib.model.export import load_backbone
from spanlib.model.vit import build_vit, load_pretrained

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def book(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "book"
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("root: intro\n")
    (root / "spanlib").symlink_to(REPO / "spanlib")
    monkeypatch.chdir(root / "notebooks")
    return root


def _checkpoint(path: Path, preset: str = "smoke", **wrap) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    state = build_vit(resolve(preset, "dino").model).state_dict()
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in state.items()}
    torch.save(state if not wrap else {"teacher": {f"module.backbone.{k}": v for k, v in state.items()}, **wrap},
               path)
    return state


def test_without_a_checkpoint_the_paper_preset_has_no_dino_row_and_says_so():
    assert "dino_start" not in chapter_regimens("paper") and "random" in chapter_regimens("paper")
    assert chapter_regimens("paper", "x.pth") == REGIMENS == chapter_regimens("book")
    with pytest.raises(ValueError, match="no `pretrained` checkpoint and no shared start: every regimen trains from "
                                         "scratch.*an untrained network is not DINO"):
        run_key("paper", "dino_start")
    assert "trains from scratch" in start_note("paper", None)
    assert "continues the checkpoint w.pth" in start_note("paper", "/weights/w.pth")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth: pretrained checkpoint not found"):
        run_key("paper", "span_deformable", pretrained=str(tmp_path / "nowhere.pth"))


def test_a_checkpoint_of_another_shape_is_refused_naming_the_file(tmp_path):
    _checkpoint(tmp_path / "small.pth")
    model = build_vit(resolve("book", "dino").model)  # a wider model than the smoke checkpoint's
    with pytest.raises(ValueError, match="small.pth: its weights do not fit this VisionTransformer"):
        load_pretrained(model, tmp_path / "small.pth")


def test_dino_start_is_the_checkpoint_frozen_and_every_regimen_continues_it(book, tmp_path):
    weights = tmp_path / "dino_release.pth"
    state = _checkpoint(weights, epoch=100)  # DINO's training checkpoint: teacher, module. and backbone. prefixes
    start = ensure_pretrained("smoke", "dino_start", pretrained=str(weights), epochs=1)
    _, backbone, info = load_backbone(start.path)
    assert info["step"] == 0 and start.path.name.endswith("-from-dino_release")
    for key, value in state.items():
        assert torch.equal(backbone.state_dict()[key], value), key
    span = ensure_pretrained("smoke", "span_triangular", pretrained=str(weights), epochs=1)
    assert span.config.model.pretrained_path == str(weights.resolve()) and span.config.run.init_from is None
    student = torch.load(span.path / "checkpoint.pt", weights_only=True)["student"]
    moved = max(float((student[f"backbone.{k}"] - v).abs().max()) for k, v in state.items())
    assert 0 < moved < 1.0  # trained from the checkpoint: moved, and not far, in a few steps
    random = ensure_pretrained("smoke", "random", pretrained=str(weights))
    assert random.config.model.pretrained_path is None  # the floor stays untrained

"""The shared pretrained start: pooled data, continuing a finished run, the run keys, the start's report."""

import math

import pytest
import torch

from spanlib.book.runs import RunKey
from spanlib.book.start import loss_below_log_k
from spanlib.core.checkpoint import load_checkpoint
from spanlib.core.configs import REGIMENS, resolve, resolve_start
from spanlib.pretrain.train import Pretrainer, PooledSamples, pretrain, start_checkpoint

from conftest import toy_samples


def _cfg(regimen="dino_cxr", **overrides):
    return resolve("smoke", regimen, {"span.knowledge_maps": "masks", "run.log_every": 1, **overrides})


def test_pooled_samples_read_every_set_in_order():
    a, b = toy_samples(5, seed=0), toy_samples(3, seed=1)
    for i, s in enumerate(b):
        s.id = f"other_{i}"
    pooled = PooledSamples([a, b])
    assert len(pooled) == 8
    assert [pooled[i].id for i in range(8)] == [s.id for s in a] + [s.id for s in b]
    assert pooled.ids == [pooled[i].id for i in range(8)]
    with pytest.raises(IndexError):
        pooled[8]


def test_pooled_samples_refuse_repeated_ids():
    with pytest.raises(ValueError, match="share sample ids"):
        PooledSamples([toy_samples(3), toy_samples(3)])


def test_run_continues_the_start_student_teacher_and_centre(tmp_path, toy):
    start = tmp_path / "start"
    pretrain(_cfg("dino"), start, samples=toy)
    saved = load_checkpoint(start / "checkpoint.pt")
    trainer = Pretrainer(_cfg("span_triangular", **{"run.init_from": str(start)}), tmp_path / "run", toy)
    for name, tensor in trainer.student.state_dict().items():
        assert torch.equal(tensor, saved["student"][name]), name
    for name, tensor in trainer.teacher.state_dict().items():
        assert torch.equal(tensor, saved["teacher"][name]), name
    assert torch.equal(trainer.loss_fn.center, saved["center"])
    fresh = Pretrainer(_cfg("span_triangular"), tmp_path / "fresh", toy)
    assert not torch.equal(fresh.student.state_dict()["backbone.pos_embed"], saved["student"]["backbone.pos_embed"])


def test_the_frozen_start_keeps_its_weights(tmp_path, toy):
    start = tmp_path / "start"
    pretrain(_cfg("dino"), start, samples=toy)
    pretrain(_cfg("dino_start", **{"run.init_from": str(start)}), tmp_path / "frozen", samples=toy)
    a, b = load_checkpoint(start / "checkpoint.pt"), load_checkpoint(tmp_path / "frozen" / "checkpoint.pt")
    assert all(torch.equal(a["teacher"][k], b["teacher"][k]) for k in a["teacher"])


def test_init_from_refuses_an_unfinished_run_and_a_model_of_another_shape(tmp_path, toy):
    start = tmp_path / "start"
    pretrain(_cfg("dino"), start, samples=toy, stop_after_steps=2)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        start_checkpoint(start)
    with pytest.raises(FileNotFoundError, match="not found"):
        start_checkpoint(tmp_path / "missing.pt")
    pretrain(_cfg("dino"), tmp_path / "done", samples=toy)
    other = _cfg("dino_cxr", **{"run.init_from": str(tmp_path / "done"), "dino.out_dim": 32})
    with pytest.raises(ValueError, match="does not fit this run's model"):
        Pretrainer(other, tmp_path / "run", toy)


def test_presets_name_their_start_and_the_frozen_start_regimen():
    assert "dino_start" in REGIMENS
    smoke = resolve_start("smoke")
    assert smoke.datasets == ("chest", "parts", "digits") and smoke.continued
    assert smoke.config.views.kind == "dino" and not smoke.config.span.assigned_heads
    book = resolve_start("book")
    assert book.continued  # every trained regimen continues the start, as the paper continues ImageNet DINO
    assert resolve_start("paper") is None  # the paper starts from DINO's ImageNet checkpoint
    assert not resolve("book", "dino_start").run.train


def test_run_keys_name_every_ablation_setting():
    base = RunKey("book", "span_deformable").path()
    names = {RunKey("book", "span_deformable", terms="inclusion").path().name,
             RunKey("book", "span_deformable", renormalize=False).path().name,
             RunKey("book", "span_deformable", renormalize=True).path().name,
             RunKey("book", "span_deformable", from_start=True).path().name,
             RunKey("book", "span_deformable", lambda_span=5.0, terms="exclusion", renormalize=False).path().name}
    assert names == {"seed0-inclusion", "seed0-raw", "seed0-renormalized", "seed0-from-start",
                     "seed0-lambda5-exclusion-raw"}
    assert base.name == "seed0"
    assert RunKey("book", "dino_start", from_start=True).path().name == "seed0"


def test_loss_below_log_k():
    assert loss_below_log_k({"dino_loss": math.log(64) - 1.5}, 64) == pytest.approx(1.5)

"""Mixed precision: fp16 only with a gradient scaler (CUDA), refused on the CPU with a message naming bf16.

The CPU has no float16 training worth the name, so the scaler's wiring is
tested here with torch's CPU gradient scaler, which does the same scaling,
unscaling and skipping as CUDA's; the real fp16 run is marked ``gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spanlib.core.checkpoint import load_checkpoint
from spanlib.core.configs import resolve
from spanlib.core.device import Runtime, amp_dtype
from spanlib.pretrain.engine import Schedules, StepResult, TrainingStep
from spanlib.pretrain.train import Pretrainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: fp16 training runs on CUDA only")


def test_fp16_is_refused_off_cuda_with_a_message_naming_bf16():
    with pytest.raises(ValueError, match="fp16 runs on CUDA only.*amp: bf16"):
        amp_dtype("fp16", torch.device("cpu"))
    assert amp_dtype("fp16", torch.device("cuda")) == torch.float16  # accepted where a scaler runs it
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_only_fp16_gets_a_gradient_scaler():
    cpu = torch.device("cpu")
    assert Runtime(cpu, None).grad_scaler() is None
    assert Runtime(cpu, torch.bfloat16).grad_scaler() is None  # bfloat16 has float32's range
    scaler = Runtime(cpu, torch.float16).grad_scaler()
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def _step(model, scaler, loss_of):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = TrainingStep(optimizer, Schedules(lr=np.full(4, 0.1)), modules={"model": model}, clip_module=model,
                          clip_grad=0.5, scaler=scaler)

    def forward_backward() -> StepResult:
        loss = loss_of(model)
        engine.backward(loss)
        return StepResult({"loss": float(loss.detach())})

    return engine, forward_backward


def test_a_scaled_step_equals_an_unscaled_one_and_an_overflow_is_skipped(tmp_path):
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 3)
    scaled = torch.nn.Linear(8, 3)
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(16, 8)

    def loss_of(model):
        return model(x).pow(2).mean() * 100  # gradients large enough to be clipped: clipping sees true gradients

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for model, s in ((plain, None), (scaled, scaler)):
        engine, fb = _step(model, s, loss_of)
        engine(0, fb)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)  # a power-of-two scale, unscaled before clipping: the same update
    assert scaler.get_scale() == 2.0 ** 12

    engine, fb = _step(scaled, scaler, lambda m: (m.weight * 1e36).sum())  # a finite loss, gradients of 1e36
    before = [p.detach().clone() for p in scaled.parameters()]
    engine(1, fb)  # 1e36 * 4096 overflows float32: the scaler skips the step and halves its scale
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert scaler.get_scale() == 2.0 ** 11
    engine.save(tmp_path / "c.pt", 2)
    restored = TrainingStep(torch.optim.SGD(scaled.parameters(), lr=0.1), Schedules(lr=np.zeros(1)),
                            modules={"model": scaled}, scaler=torch.amp.GradScaler("cpu"))
    restored.restore(tmp_path / "c.pt")
    assert restored.scaler.get_scale() == 2.0 ** 11


def test_the_pretrainer_backward_goes_through_the_scaler(tmp_path, toy):
    """The DINO/SPAN trainer with a float16 runtime: scaled backward, scaler in the checkpoint (CPU scaler)."""
    cfg = resolve("smoke", "span_triangular", {"span.knowledge_maps": "masks", "optim.epochs": 1,
                                               "run.checkpoint_every": 100})
    runtime = Runtime(torch.device("cpu"), None)  # float32 compute, the fp16 path's scaler: the wiring alone
    trainer = Pretrainer(cfg, tmp_path / "run", samples=toy, runtime=runtime)
    trainer.engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    scaled = []
    original = trainer.engine.scaler.scale
    trainer.engine.scaler.scale = lambda loss: scaled.append(float(loss.detach())) or original(loss)
    summary = trainer.fit()
    assert summary["steps"] == len(scaled) > 0  # one scaled backward per step
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["scaler"]["scale"] == 2.0 ** 8  # no overflow in a healthy run: the scale kept


@pytest.mark.gpu
@needs_cuda
def test_fp16_training_on_cuda_runs_with_an_enabled_scaler(tmp_path, toy):
    cfg = resolve("smoke", "span_triangular", {"span.knowledge_maps": "masks", "optim.epochs": 1, "run.amp": "fp16",
                                               "run.device": "cuda"})
    trainer = Pretrainer(cfg, tmp_path / "run", samples=toy)
    assert trainer.engine.scaler is not None and trainer.engine.scaler.is_enabled()
    summary = trainer.fit()
    assert np.isfinite(summary["last"]["loss"])
    assert "scaler" in load_checkpoint(tmp_path / "run" / "checkpoint.pt")

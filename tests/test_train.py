import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spanlib.core.checkpoint import load_checkpoint, read_log
from spanlib.core.configs import resolve
from spanlib.pretrain.train import DivergenceError, Pretrainer, pretrain

from conftest import toy_samples

REPO = Path(__file__).resolve().parents[1]


def _cfg(regimen="span_triangular", **overrides):
    base = {"span.knowledge_maps": "masks", "run.log_every": 1, "run.checkpoint_every": 2}
    return resolve("smoke", regimen, {**base, **overrides})


def test_span_moves_assigned_heads_into_their_maps(tmp_path, toy):
    cfg = _cfg(**{"optim.epochs": 10, "optim.lr": 0.05, "span.lambda_inclusion": 100.0, "span.lambda_exclusion": 100.0})
    pretrain(cfg, tmp_path / "run", samples=toy)
    share = [r["inside_share"] for r in read_log(tmp_path / "run" / "log.jsonl") if "inside_share" in r]
    assert len(share) == 40
    first, last = sum(share[:4]) / 4, sum(share[-4:]) / 4
    assert last > first + 0.1, f"inside-map attention share {first:.3f} -> {last:.3f}"


def test_dino_run_logs_diagnostics_and_checkpoints(tmp_path, toy):
    out = tmp_path / "dino"
    summary = pretrain(_cfg("dino"), out, samples=toy)
    assert summary["steps"] == 8
    log = read_log(out / "log.jsonl")
    for key in ("loss", "dino_loss", "lr", "momentum", "teacher_entropy", "teacher_mean_entropy", "embed_std"):
        assert all(key in r for r in log), key
    assert "inside_share" not in log[0]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 8 and (out / "config.yaml").exists() and (out / "done.json").exists()


def test_resume_matches_uninterrupted_run(tmp_path, toy):
    cfg = _cfg(**{"optim.epochs": 3, "model.drop_path_rate": 0.1, "run.checkpoint_every": 5})
    pretrain(cfg, tmp_path / "full", samples=toy)
    # "killed" after step 7: the last checkpoint is step 5, so steps 6-7 are redone
    pretrain(cfg, tmp_path / "cut", samples=toy, stop_after_steps=7)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 5
    pretrain(cfg, tmp_path / "cut", samples=toy, resume=True)
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert cut["step"] == full["step"] == 12
    for part in ("student", "teacher"):
        for key, value in full[part].items():
            torch.testing.assert_close(cut[part][key], value, atol=1e-6, rtol=0, msg=f"{part}.{key}")
    torch.testing.assert_close(cut["center"], full["center"], atol=1e-6, rtol=0)
    steps = [r["step"] for r in read_log(tmp_path / "cut" / "log.jsonl") if "loss" in r]
    assert steps == list(range(1, 13)), "the log has each step once after a resume"


def test_existing_run_is_not_overwritten(tmp_path, toy):
    pretrain(_cfg(), tmp_path / "r", samples=toy, stop_after_steps=2)
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(_cfg(), tmp_path / "r", samples=toy)


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, toy, monkeypatch):
    trainer = Pretrainer(_cfg(), tmp_path / "nan", samples=toy)
    calls = {"n": 0}
    original = trainer.loss_fn.forward

    def poisoned(s, t, epoch):
        calls["n"] += 1
        value = original(s, t, epoch)
        return value * float("nan") if calls["n"] > 3 else value

    monkeypatch.setattr(trainer.loss_fn, "forward", poisoned)
    with pytest.raises(DivergenceError, match="not finite at step 3.*last good checkpoint"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["step"] == 2
    assert read_log(tmp_path / "nan" / "log.jsonl")[-1]["event"] == "diverged"


def test_random_regimen_saves_untrained_model(tmp_path, toy):
    summary = pretrain(_cfg("random"), tmp_path / "rand", samples=toy)
    assert summary["steps"] == 0
    state = load_checkpoint(tmp_path / "rand" / "checkpoint.pt")
    assert state["step"] == 0


def test_gradient_accumulation_updates_teacher_once_per_step(tmp_path, toy):
    cfg = _cfg("dino_cxr", **{"optim.accum_steps": 2, "optim.batch_size": 4, "optim.epochs": 1})
    trainer = Pretrainer(cfg, tmp_path / "acc", samples=toy)
    updates = {"ema": 0, "center": 0}
    import spanlib.model.dino as D

    ema = D.ema_update
    center = trainer.loss_fn.update_center

    def count_ema(*a, **k):
        updates["ema"] += 1
        return ema(*a, **k)

    def count_center(outputs):
        updates["center"] += 1
        assert len(outputs) == 2, "the center sees every micro-batch of the step"
        return center(outputs)

    import spanlib.pretrain.train as T

    T.D.ema_update, trainer.loss_fn.update_center = count_ema, count_center
    try:
        summary = trainer.fit()
    finally:
        T.D.ema_update = ema
    assert summary["steps"] == 4  # 32 samples / (4 * 2)
    assert updates == {"ema": 4, "center": 4}


DDP_LOSS_TOLERANCE = 1e-5
"""Largest difference of a logged loss between two ranks of batch B and one process of batch 2B (float32 sums
taken in another order; the losses are about 4). Measured: 2.4e-7; one process of batch B instead: 0.15."""
DDP_PARAM_TOLERANCE = 1e-5
"""Largest difference of a parameter after the 8 steps. Measured: 1.5e-6; one process of batch B instead (the
wrong global batch): 6.7e-5, so this tolerance tells the two apart."""


@pytest.mark.slow
def test_ddp_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    """torchrun with 2 CPU processes (gloo), 4 films a rank, against one process with 8 films a step.

    The two ranks together see the films the single process sees at every step (the sampler deals the epoch's
    permutation out to the ranks), gradients are averaged by DDP, DINO's centre over both ranks: the loss
    curve and the parameters must agree within :data:`DDP_LOSS_TOLERANCE` / :data:`DDP_PARAM_TOLERANCE`.
    """
    from spanlib.data import write_folder_dataset

    data = write_folder_dataset(tmp_path / "toy", toy_samples(32), {"kind": "toy", "description": "test data"})
    # one learning rate for every weight: Adam turns a last-digit difference of a gradient into a step of up to the
    # learning rate, so a weight stepped at the smoke preset's 10x would differ 10x as much (the same sums either way)
    common = {"span.knowledge_maps": "masks", "run.checkpoint_every": 2, "run.log_every": 1, "run.data": str(data),
              "span.attention_lr_scale": 1.0}
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "spanlib", "pretrain", "--preset", "smoke", "--regimen", "span_triangular",
        "--data", str(data), "--maps", "masks", "--out", str(out), "--set", "optim.batch_size=4",
        "--set", "run.checkpoint_every=2", "--set", "run.log_every=1", "--set", "span.attention_lr_scale=1.0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = tmp_path / "one"
    pretrain(resolve("smoke", "span_triangular", {**common, "optim.batch_size": 8}), one)

    checks = [r for r in read_log(out / "log.jsonl") if r.get("event") == "checkpoint"]
    assert checks and all(len(set(r["param_checksums"])) == 1 for r in checks)  # ranks compared at checkpoints
    ddp_log = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    one_log = [r for r in read_log(one / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in ddp_log] == [r["step"] for r in one_log] == list(range(1, 9))  # 32 / 8 films x 2
    for a, b in zip(ddp_log, one_log):
        for term in ("loss", "dino_loss", "span_loss"):
            assert abs(a[term] - b[term]) <= DDP_LOSS_TOLERANCE, (a["step"], term, a[term], b[term])
    ddp_state, one_state = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(one / "checkpoint.pt")
    moved = 0.0
    for name, value in one_state["student"].items():
        assert torch.allclose(ddp_state["student"][name], value, rtol=0, atol=DDP_PARAM_TOLERANCE), name
        moved = max(moved, float((ddp_state["teacher"][name] - one_state["teacher"][name]).abs().max()))
    torch.testing.assert_close(ddp_state["center"], one_state["center"], rtol=0, atol=DDP_PARAM_TOLERANCE)
    assert moved <= DDP_PARAM_TOLERANCE


def test_a_prototype_layer_frozen_for_the_whole_run_is_refused(tmp_path, toy):
    """DINO freezes its last layer for the first epoch of 100; in a run that short it would never train."""
    cfg = _cfg("dino").replace(**{"dino.freeze_last_layer": 2, "optim.epochs": 2})
    with pytest.raises(ValueError, match="freeze_last_layer=2 freezes the head's prototype layer"):
        pretrain(cfg, tmp_path / "frozen", samples=toy)
    pretrain(cfg.replace(**{"dino.freeze_last_layer": 1}), tmp_path / "ok", samples=toy)


def test_a_conv_stem_trains_and_its_teacher_follows(tmp_path, toy):
    cfg = _cfg(**{"model.stem": "conv"})
    trainer = Pretrainer(cfg, tmp_path / "conv", samples=toy)
    first = trainer.student.backbone.patch_embed.proj[0].weight.detach().clone()
    trainer.fit()
    state = load_checkpoint(tmp_path / "conv" / "checkpoint.pt")
    key = "backbone.patch_embed.proj.0.weight"
    assert key in state["student"], sorted(state["student"])[:5]
    for part in ("student", "teacher"):  # the stem learns, and the teacher follows it by EMA
        assert not torch.allclose(state[part][key], first), part

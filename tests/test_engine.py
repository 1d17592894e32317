"""The one training-step skeleton (spanlib.pretrain.engine): one divergence error from every trainer, config round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spanlib import attention_study as A
from spanlib.byol import ByolConfig, ByolOptimConfig, slic_priors, train_byol
from spanlib.core.checkpoint import load_checkpoint, read_log
from spanlib.core.configs import ModelConfig, resolve
from spanlib.model.dino import param_groups
from spanlib.model.vit import build_vit
from spanlib.data.digits import DigitsConfig, DigitSource
from spanlib.pretrain.engine import DivergenceError, Schedules, divergence_message
from spanlib.pretrain.train import Pretrainer

from conftest import toy_samples

MESSAGE = r"loss is not finite at step {step} \(loss nan.*\); training stopped; {where}\. Lower optim\.lr"


def test_divergence_error_is_both_old_types_and_names_the_checkpoint(tmp_path):
    assert issubclass(DivergenceError, FloatingPointError) and issubclass(DivergenceError, RuntimeError)
    assert "this run keeps no checkpoint" in divergence_message("r", 3, {"loss": float("nan")}, None, "")
    assert "no checkpoint was written yet" in divergence_message("r", 3, {"loss": 1.0}, tmp_path / "c.pt", "")
    (tmp_path / "c.pt").write_text("x")
    assert f"the last good checkpoint is {tmp_path / 'c.pt'}" in divergence_message("r", 3, {"loss": 1.0},
                                                                                      tmp_path / "c.pt", "")


def test_schedules_set_lr_in_every_group_and_weight_decay_in_the_first():
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}])
    Schedules(lr=np.array([0.1, 0.2]), weight_decay=np.array([0.3, 0.4])).apply(opt, 1)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.4, 0.0]


def test_pretrainer_raises_the_shared_error_on_nan(tmp_path, monkeypatch):
    cfg = resolve("smoke", "dino", {"run.log_every": 1, "run.checkpoint_every": 2})
    trainer = Pretrainer(cfg, tmp_path / "run", samples=toy_samples())
    original = trainer.loss_fn.forward
    calls = {"n": 0}

    def poisoned(s, t, epoch):
        calls["n"] += 1
        return original(s, t, epoch) * (float("nan") if calls["n"] > 3 else 1.0)

    monkeypatch.setattr(trainer.loss_fn, "forward", poisoned)
    with pytest.raises(DivergenceError, match=MESSAGE.format(step=3, where="the last good checkpoint is .*")):
        trainer.fit()


def _digits() -> DigitSource:
    rng = np.random.default_rng(0)
    images = np.zeros((30, 28, 28), np.float32)
    for i in range(30):
        r, c = rng.integers(4, 14, 2)
        images[i, r : r + 10, c : c + 3] = 1.0
    return DigitSource(images, np.arange(30) % 10, "test strokes")


@pytest.mark.parametrize("loss", A.LOSSES)
def test_study_raises_the_shared_error_on_nan(monkeypatch, loss):
    import spanlib.attention_study.training as T

    renderer = A.CanvasRenderer(_digits(), np.arange(30), DigitsConfig(canvas=64))
    cfg = A.study_preset("smoke").base.replace(loss=loss, **{"optim.epochs": 3})
    name = "branch_dino_loss" if loss == "dino" else "branch_nce_loss"
    original = getattr(T, name)
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        return original(*args) * (float("nan") if calls["n"] > 1 else 1.0)

    monkeypatch.setattr(T, name, poisoned)
    with pytest.raises(DivergenceError, match="v: " + MESSAGE.format(step=1, where="this run keeps no checkpoint")):
        A.train_variant(cfg, renderer, name="v", data_worker=False)


def _byol_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = np.zeros((8, 1, 16, 16), np.float32)
    images[:, :, 4:12, 2:8] = 0.8
    images += 0.2 * rng.random(images.shape, dtype=np.float32)
    return images, slic_priors(images[:, 0], 6, 0.1)


TINY_BYOL = ByolConfig(image_size=16, widths=(4, 8), proj_hidden=8, proj_dim=4, n_segments=6, k=2, kmeans_iters=3,
                       optim=ByolOptimConfig(epochs=2, batch_size=4, warmup_epochs=0), threads=1)


def test_byol_raises_the_shared_error_on_nan(tmp_path, monkeypatch):
    import spanlib.byol.train as T

    original = T.byol_step
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss, stats = original(*args)
        return (loss * float("nan") if calls["n"] > 2 else loss), stats

    monkeypatch.setattr(T, "byol_step", poisoned)
    images, priors = _byol_data()
    with pytest.raises(DivergenceError, match=MESSAGE.format(step=2, where="the last good checkpoint is .*")):
        train_byol(TINY_BYOL, images, priors, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    assert read_log(tmp_path / "run" / "log.jsonl")[-1]["event"] == "diverged"


def test_byol_resumed_run_equals_an_uninterrupted_one_exactly(tmp_path):
    images, priors = _byol_data()
    train_byol(TINY_BYOL, images, priors, tmp_path / "full")
    train_byol(TINY_BYOL, images, priors, tmp_path / "cut", max_steps=3)  # killed mid-epoch: redone from step 2
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 3
    train_byol(TINY_BYOL, images, priors, tmp_path / "cut")
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("online", "target"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


def test_study_config_round_trips_through_yaml(tmp_path):
    for preset in ("smoke", "book", "paper"):
        study = A.study_preset(preset)
        for variant in study.variants:
            cfg = study.config(variant.name, seed=3)
            cfg.to_yaml(tmp_path / "c.yaml")
            assert A.StudyConfig.from_yaml(tmp_path / "c.yaml") == cfg
        assert A.StudyPreset.from_dict(study.to_dict()) == study
    partial = A.StudyConfig.from_dict({"model": {"img_size": 32}})  # a partial section keeps the study's defaults
    assert (partial.model.img_size, partial.model.in_chans, partial.model.drop_path_rate) == (32, 1, 0.0)
    TINY_BYOL.to_yaml(tmp_path / "b.yaml")
    assert ByolConfig.from_yaml(tmp_path / "b.yaml") == TINY_BYOL


def test_a_learning_rate_scale_moves_only_the_named_parameters_faster():
    """span.attention_lr_scale: the last block's qkv in groups of their own, stepped at lr x scale, decayed as before."""
    model = build_vit(ModelConfig(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                                  num_heads=6, drop_path_rate=0.0))
    plain = param_groups(model)
    assert len(plain) == 2 and "lr_scale" not in plain[0]
    groups = param_groups(model, {"blocks.1.attn.qkv.": 10.0})
    names = {id(p): n for n, p in model.named_parameters()}
    scaled = [g for g in groups if "lr_scale" in g]
    assert sorted(names[id(p)] for g in scaled for p in g["params"]) == ["blocks.1.attn.qkv.bias", "blocks.1.attn.qkv.weight"]
    assert sum(len(g["params"]) for g in groups) == sum(len(g["params"]) for g in plain)
    optimizer = torch.optim.AdamW(groups)
    Schedules(lr=np.array([0.01]), weight_decay=np.array([0.2])).apply(optimizer, 0)
    by_name = {names[id(g["params"][0])]: g for g in optimizer.param_groups}
    assert by_name["blocks.1.attn.qkv.weight"]["lr"] == pytest.approx(0.1)
    assert by_name["blocks.1.attn.qkv.weight"]["weight_decay"] == pytest.approx(0.2)
    assert by_name["blocks.1.attn.qkv.bias"]["weight_decay"] == 0.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01) and optimizer.param_groups[1]["weight_decay"] == 0.0


def test_a_span_run_with_an_attention_lr_scale_steps_its_last_qkv_and_position_embedding_faster(tmp_path):
    cfg = resolve("smoke", "span_coverage", {"span.knowledge_maps": {"kind": "masks"}})
    assert cfg.span.attention_lr_scale > 1
    trainer = Pretrainer(cfg, tmp_path / "run", samples=toy_samples())
    names = {id(p): n for n, p in trainer.student.named_parameters()}
    scaled = sorted(names[id(p)] for g in trainer.optimizer.param_groups if g.get("lr_scale") for p in g["params"])
    last = len(trainer.student.backbone.blocks) - 1
    assert scaled == sorted([f"backbone.blocks.{last}.attn.qkv.bias", f"backbone.blocks.{last}.attn.qkv.weight",
                             "backbone.pos_embed"])
    plain = Pretrainer(resolve("paper", "span_deformable", {"span.knowledge_maps": {"kind": "masks"},
                                                           "model": cfg.model, "dino": cfg.dino}),
                       tmp_path / "plain", samples=toy_samples())
    assert plain.cfg.span.attention_lr_scale == 1.0
    assert len(plain.optimizer.param_groups) == 2  # one rate (the paper preset): DINO's two groups, as before

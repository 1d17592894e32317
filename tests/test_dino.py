import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spanlib.model import dino as D
from spanlib.core.configs import DinoConfig


def _reference_loss(student, teacher, center, s_temp, t_temp, n_crops):
    """The DINO loss written out from the paper, pair by pair, sample by sample."""
    B = teacher.shape[0] // 2
    total, pairs = 0.0, 0
    for iq in range(2):
        for v in range(n_crops):
            if v == iq:
                continue
            per = []
            for b in range(B):
                p_t = torch.softmax((teacher[iq * B + b] - center[0]) / t_temp, -1)
                log_p_s = torch.log_softmax(student[v * B + b] / s_temp, -1)
                per.append(-(p_t * log_p_s).sum())
            total += torch.stack(per).mean()
            pairs += 1
    return total / pairs


def test_loss_matches_formula():
    cfg = DinoConfig(out_dim=16, teacher_temp=0.05, warmup_teacher_temp=0.05)
    loss = D.DINOLoss(cfg, n_crops=4, epochs=3)
    loss.center.copy_(torch.randn(1, 16))
    s, t = torch.randn(4 * 3, 16), torch.randn(2 * 3, 16)
    ref = _reference_loss(s, t, loss.center, 0.1, 0.05, 4)
    torch.testing.assert_close(loss(s, t, epoch=1), ref, atol=1e-5, rtol=1e-5)


def test_teacher_temperature_warmup():
    cfg = DinoConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    loss = D.DINOLoss(cfg, 2, epochs=10)
    temps = [loss.teacher_temp(e) for e in range(10)]
    assert temps[0] == pytest.approx(0.04) and temps[3] == pytest.approx(0.07) and temps[9] == pytest.approx(0.07)
    assert all(a <= b for a, b in zip(temps, temps[1:]))


def test_center_update_is_one_ema_over_all_micro_batches():
    cfg = DinoConfig(out_dim=4, center_momentum=0.9)
    loss = D.DINOLoss(cfg, 2, 1)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    loss.update_center([a, b])
    torch.testing.assert_close(loss.center, 0.1 * torch.cat([a, b]).mean(0, keepdim=True))


def test_cosine_scheduler_warmup_and_ends():
    s = D.cosine_scheduler(1.0, 0.1, epochs=5, niter_per_ep=4, warmup_epochs=1)
    assert len(s) == 20
    np.testing.assert_allclose(s[:4], np.linspace(0, 1, 4))
    assert s[4] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[4:]) <= 1e-12)


def test_param_groups_skip_norms_and_biases():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = D.param_groups(net)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_head_last_layer_is_weight_normed_and_frozen_norm():
    head = D.DINOHead(8, DinoConfig(out_dim=10, hidden_dim=16, bottleneck_dim=4))
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(10))
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 10)


def test_cancel_last_layer_gradients():
    head = D.DINOHead(8, DinoConfig(out_dim=10, hidden_dim=16, bottleneck_dim=4))
    head(torch.randn(5, 8)).sum().backward()
    D.cancel_last_layer_gradients(0, head, freeze_last_layer=1)
    assert head.last_layer.parametrizations.weight.original1.grad is None
    assert head.mlp[0].weight.grad is not None


def test_ema_update():
    t, s = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = t.weight.detach().clone()
    D.ema_update(t, s, 0.9)
    torch.testing.assert_close(t.weight, 0.9 * before + 0.1 * s.weight.detach())


def test_clip_gradients_per_parameter():
    lin = torch.nn.Linear(4, 4)
    lin.weight.grad = torch.full((4, 4), 10.0)
    lin.bias.grad = torch.full((4,), 0.01)
    D.clip_gradients(lin, 1.0)
    assert lin.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert lin.bias.grad.norm().item() == pytest.approx(0.02)


def test_entropy_diagnostics_detect_collapse():
    uniform = torch.zeros(8, 32)
    ent, ent_mean = D.output_entropy(uniform, torch.zeros(1, 32), 0.04)
    assert ent == pytest.approx(math.log(32), rel=1e-4)
    onehot = F.one_hot(torch.zeros(8, dtype=torch.long), 32).float() * 100
    ent, ent_mean = D.output_entropy(onehot, torch.zeros(1, 32), 0.04)
    assert ent < 1e-3 and ent_mean < 1e-3

"""DINO: projection head, loss with centering and sharpening, schedules.

Follows the DINO paper (Caron et al., 2021) and its reference code: a
weight-normalised last layer (optionally frozen in the first epoch), the
cross-entropy between the sharpened, centred teacher distribution and the
student's over every pair of different views, a teacher temperature warm-up,
an EMA teacher with a cosine momentum schedule and cosine learning-rate and
weight-decay schedules.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from spanlib.core.configs import DinoConfig
from spanlib.model.vit import AttentionProbe, patch_grid


class DINOHead(nn.Module):
    """MLP projector, L2 bottleneck, weight-normalised prototype layer."""

    def __init__(self, in_dim: int, cfg: DinoConfig):
        super().__init__()
        nlayers = max(cfg.nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, cfg.bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, cfg.hidden_dim)]
            if cfg.use_bn_in_head:
                layers.append(nn.BatchNorm1d(cfg.hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(cfg.hidden_dim, cfg.hidden_dim))
                if cfg.use_bn_in_head:
                    layers.append(nn.BatchNorm1d(cfg.hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(cfg.hidden_dim, cfg.bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(cfg.bottleneck_dim, cfg.out_dim, bias=False)
        )
        # g = 1 as in DINO; with norm_last_layer the magnitude is frozen.
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if cfg.norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class DinoNetwork(nn.Module):
    """Backbone + head over a list of crops (DINO's multi-crop wrapper).

    Crops of the same resolution go through the backbone together. When
    ``with_attention`` is set, the CLS attention of the last block is
    returned for the first ``n_attention`` crops (the global views).
    """

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, crops: list[torch.Tensor], n_attention: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run every crop.

        Returns:
            ``(logits [n_crops * B, out_dim], features [n_crops * B, D],
            attention [n_attention * B, heads, gh, gw] or None)``.
        """
        sizes = torch.tensor([c.shape[-1] for c in crops])
        boundaries = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        start, feats, attention = 0, [], None
        for end in boundaries:
            batch = torch.cat(crops[start:end])
            if start == 0 and n_attention:
                if n_attention > end:
                    raise ValueError("attention was asked for more crops than share the first resolution")
                with AttentionProbe(self.backbone) as probe:
                    out = self.backbone(batch)
                grid = patch_grid(self.backbone, *batch.shape[-2:])
                attention = probe.attention(grid)[: n_attention * crops[0].shape[0]]
            else:
                out = self.backbone(batch)
            feats.append(out)
            start = end
        features = torch.cat(feats)
        return self.head(features), features, attention


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher and student outputs.

    The center is a buffer updated by :meth:`update_center` once per optimizer
    step, from the teacher outputs of every micro-batch of that step (so
    gradient accumulation does not change the EMA), all-reduced over ranks.
    """

    def __init__(self, cfg: DinoConfig, n_crops: int, epochs: int):
        super().__init__()
        self.student_temp = cfg.student_temp
        self.center_momentum = cfg.center_momentum
        self.n_crops = n_crops
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        warm = min(cfg.warmup_teacher_temp_epochs, epochs)
        self.teacher_temp_schedule = np.concatenate(
            (
                np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warm),
                np.ones(max(epochs - warm, 0)) * cfg.teacher_temp,
            )
        )

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """Loss over all (teacher global view, different student view) pairs.

        Args:
            student_output: ``[n_crops * B, K]`` logits of every crop.
            teacher_output: ``[2 * B, K]`` logits of the two global crops.
            epoch: selects the teacher temperature.
        """
        student = (student_output.float() / self.student_temp).chunk(self.n_crops)
        teacher = F.softmax((teacher_output.float() - self.center) / self.teacher_temp(epoch), dim=-1)
        teacher = teacher.detach().chunk(2)
        total, pairs = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                pairs += 1
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_outputs: list[torch.Tensor]) -> None:
        """EMA of the batch center over all micro-batches of a step and all ranks."""
        summed = torch.stack([t.float().sum(dim=0) for t in teacher_outputs]).sum(dim=0, keepdim=True)
        count = torch.tensor([float(sum(t.shape[0] for t in teacher_outputs))], device=summed.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(summed)
            dist.all_reduce(count)
        batch_center = summed / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def cosine_scheduler(
    base_value: float, final_value: float, epochs: int, niter_per_ep: int, warmup_epochs: int = 0, start_warmup_value: float = 0.0
) -> np.ndarray:
    """Per-iteration cosine schedule with linear warm-up (DINO's ``cosine_scheduler``)."""
    warmup_iters = min(warmup_epochs, epochs) * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    if len(iters) > 1:
        schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / (len(iters) - 1)))
    else:
        schedule = np.full(len(iters), base_value, dtype=float)
    out = np.concatenate((warmup, schedule))
    assert len(out) == epochs * niter_per_ep
    return out


def param_groups(model: nn.Module, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """No weight decay on biases and norm parameters (DINO's ``get_params_groups``).

    Args:
        model: the network.
        lr_scales: parameter-name prefix -> learning-rate multiplier. Matching
            parameters go to groups of their own after the two plain ones,
            with ``lr_scale`` (read by :class:`spanlib.pretrain.engine.Schedules`)
            and ``regularized`` set; without it the two groups are DINO's.
    """
    regularized, not_regularized = [], []
    scaled: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (name.endswith(".bias") or param.ndim == 1)
        scale = next((s for prefix, s in (lr_scales or {}).items() if name.startswith(prefix)), None)
        if scale is not None:
            scaled.setdefault((float(scale), decays), []).append(param)
        elif decays:
            regularized.append(param)
        else:
            not_regularized.append(param)
    groups = [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]
    for (scale, decays), params in scaled.items():
        groups.append({"params": params, "lr_scale": scale, "regularized": decays,
                       **({} if decays else {"weight_decay": 0.0})})
    return groups


def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Per-parameter gradient norm clipping, as DINO's ``clip_gradients``.

    The norms and the scaling run as one fused kernel per list of tensors
    (``torch._foreach_norm``), with no copy to the host in between: a
    per-parameter ``.item()`` would stall a GPU about 150 times a step.

    Returns:
        The gradient norms before clipping, one per parameter with a gradient (a tensor on the gradients' device).
    """
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch._foreach_norm(grads, 2)
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    return torch.stack(norms)


def cancel_last_layer_gradients(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the prototype layer's gradients during the first epochs."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = m * teacher + (1 - m) * student`` for every parameter."""
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [s.detach() for s in s_params], alpha=1 - momentum)


def output_entropy(teacher_output: torch.Tensor, center: torch.Tensor, temp: float) -> tuple[float, float]:
    """Collapse diagnostics: mean per-sample entropy and entropy of the mean.

    A collapsed teacher has either both near zero (one prototype wins for
    every image) or per-sample entropy near ``log K`` (uniform output).
    """
    p = F.softmax((teacher_output.float() - center) / temp, dim=-1)
    per_sample = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
    mean_p = p.mean(0)
    of_mean = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
    return per_sample.item(), of_mean.item()


def max_entropy(out_dim: int) -> float:
    return math.log(out_dim)

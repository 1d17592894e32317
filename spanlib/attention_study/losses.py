"""The two losses compared: SimCLR's NT-Xent (with negatives) and DINO's cross-entropy, over branches of crops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spanlib.model.dino import DINOLoss


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE) loss over a batch of positive pairs.

    The ``2N`` embeddings are L2-normalised; for each, the positive is the
    other view of the same image and the negatives are the ``2N - 2`` views
    of the other images:

        l_i = -log( exp(s(i, p(i)) / T) / sum_{k != i} exp(s(i, k) / T) ),

    with ``s`` the cosine similarity; the loss is the mean of ``l_i`` over
    all ``2N`` anchors.

    Args:
        z_a: ``[N, D]`` embeddings of the first views.
        z_b: ``[N, D]`` embeddings of the second views (row ``i`` pairs with ``z_a[i]``).
        temperature: ``T > 0``.

    Returns:
        The scalar loss (in float32, or float64 for float64 input).

    Raises:
        ValueError: mismatched shapes, fewer than two pairs, or ``T <= 0``.
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"expected two [N, D] batches of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    n = z_a.shape[0]
    if n < 2:
        raise ValueError(f"NT-Xent needs at least 2 pairs (negatives come from other pairs), got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    dtype = torch.promote_types(z_a.dtype, torch.float32)
    z = F.normalize(torch.cat([z_a, z_b]).to(dtype), dim=1)
    logits = (z @ z.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, -math.inf)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def positive_top1(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Share of the ``2N`` anchors whose most similar other embedding is their positive (chance ``1 / (2N - 1)``)."""
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    sim = (z @ z.T).fill_diagonal_(-math.inf)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return (sim.argmax(1) == target).float().mean().item()


def branch_nce_loss(out_a: Sequence[torch.Tensor], out_b: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """NT-Xent averaged over every pair (crop ``i`` of branch a, crop ``j`` of branch b)."""
    return torch.stack([nt_xent(a, b, temperature) for a in out_a for b in out_b]).mean()


def branch_dino_loss(
    loss_fn: DINOLoss,
    student_a: Sequence[torch.Tensor],
    student_b: Sequence[torch.Tensor],
    teacher_a: Sequence[torch.Tensor],
    teacher_b: Sequence[torch.Tensor],
) -> torch.Tensor:
    """DINO's cross-entropy over every (teacher crop of one branch, student crop of the other) pair.

    Uses ``loss_fn``'s centre, first teacher temperature and student
    temperature. With one crop per branch this is exactly
    ``loss_fn(cat(student_a + student_b), cat(teacher_a + teacher_b), 0)``
    of a :class:`spanlib.model.dino.DINOLoss` over two crops.
    """
    temp = loss_fn.teacher_temp(0)

    def teacher_probs(logits: torch.Tensor) -> torch.Tensor:
        return F.softmax((logits.float() - loss_fn.center) / temp, dim=-1).detach()

    def student_log_probs(logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.float() / loss_fn.student_temp, dim=-1)

    probs_a, probs_b = [teacher_probs(t) for t in teacher_a], [teacher_probs(t) for t in teacher_b]
    logp_a, logp_b = [student_log_probs(s) for s in student_a], [student_log_probs(s) for s in student_b]
    terms = [torch.sum(-q * lp, dim=-1).mean() for q in probs_a for lp in logp_b]
    terms += [torch.sum(-q * lp, dim=-1).mean() for q in probs_b for lp in logp_a]
    return torch.stack(terms).mean()


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP: linear, BatchNorm, ReLU, linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

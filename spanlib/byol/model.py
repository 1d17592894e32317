"""Networks and loss of BYOL: a tiny ResNet encoder, projector and predictor MLPs, the symmetric loss.

The online network is encoder -> projector -> predictor; the target network
is an EMA copy of encoder -> projector (:func:`update_target`). Object-level
BYOL pools the encoder's last feature map under each object mask
(:func:`spanlib.byol.masks.mask_pool`) instead of over the whole map, and
sends each pooled vector through the heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spanlib.model.dino import ema_update

__all__ = ["BasicBlock", "ByolNetwork", "TinyResNet", "byol_loss", "mlp", "regression_loss", "update_target"]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, batch norm, identity or 1x1 shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class TinyResNet(nn.Module):
    """A small ResNet for grey images: a stride-2 stem, then one basic block per stage.

    The first stage keeps the stem's resolution, every later one halves it.

    Args:
        widths: channels per stage; with ``S`` stages the last map has
            stride ``2 ** S``.
        in_channels: input channels (1 for grey films).

    ``forward`` returns ``(c4, c5)``: the last two stages' maps (the paper
    clusters on ResNet-50's C4 and pools C5).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        c_prev = widths[0]
        self.stages = nn.ModuleList()
        for i, c in enumerate(widths):
            self.stages.append(BasicBlock(c_prev, c, 1 if i == 0 else 2))
            c_prev = c
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps[-2], maps[-1]


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """BYOL's projector / predictor: linear, batch norm, ReLU, linear."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out)
    )


class ByolNetwork(nn.Module):
    """Encoder with projector (online and target) and, on the online side, a predictor.

    Args:
        widths: stages of the :class:`TinyResNet`.
        proj_hidden: hidden width of both MLPs.
        proj_dim: output width of both MLPs.
        predictor: build the predictor (the online network); the target has none.
    """

    def __init__(self, widths: Sequence[int], proj_hidden: int, proj_dim: int, predictor: bool = True) -> None:
        super().__init__()
        self.encoder = TinyResNet(widths)
        self.projector = mlp(self.encoder.out_dim, proj_hidden, proj_dim)
        self.predictor = mlp(proj_dim, proj_hidden, proj_dim) if predictor else None

    def heads(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projection (target) or prediction (online) of pooled vectors ``[N, C]``."""
        z = self.projector(pooled)
        return self.predictor(z) if self.predictor is not None else z


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's per-row loss ``2 - 2 cos(p, z)`` (``[N]``); ``z`` is treated as a constant."""
    return 2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1, eps=1e-8)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised BYOL loss averaged over matched masks.

    Row ``i`` of every argument belongs to the same object mask of the same
    image (a mask present in both views): ``p_v`` are the online network's
    predictions from view ``v``, ``z_v`` the target's projections of view ``v``.
    The loss is ``mean_i [2 - 2 cos(p1_i, z2_i)] + mean_i [2 - 2 cos(p2_i, z1_i)]``
    (BYOL's ``L + L~``), so it lies in ``[0, 8]``; with one global mask per
    image it is plain BYOL. No rows (no mask present in both views) gives 0,
    still attached to the graph.

    Raises:
        ValueError: arguments of different shapes or not ``[N, D]``.
    """
    if not (p1.shape == p2.shape == z1.shape == z2.shape) or p1.dim() != 2:
        shapes = [tuple(t.shape) for t in (p1, p2, z1, z2)]
        raise ValueError(f"p1, p2, z1, z2 must share one [N, D] shape, got {shapes}")
    if p1.shape[0] == 0:
        return (p1.sum() + p2.sum()) * 0.0
    return regression_loss(p1, z2).mean() + regression_loss(p2, z1).mean()


@torch.no_grad()
def update_target(target: ByolNetwork, online: ByolNetwork, momentum: float) -> None:
    """EMA of the online encoder and projector into the target; buffers (batch-norm statistics) copied."""
    for name in ("encoder", "projector"):
        ema_update(getattr(target, name), getattr(online, name), momentum)
        for t, s in zip(getattr(target, name).buffers(), getattr(online, name).buffers()):
            t.copy_(s)

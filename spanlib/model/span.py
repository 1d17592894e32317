"""The SPAN regularizer: attention of assigned heads guided by knowledge maps.

For an assigned head ``h`` with knowledge map ``K_h`` (downsampled to the
patch grid as the fraction of each patch inside the map) and the head's
CLS-query attention ``a_h`` over the patches,

    inside_h  = sum_p a_h[p] * K_h[p]          (attention mass inside the map)
    outside_h = sum_p a_h[p] * (1 - K_h[p])    (attention mass outside it)
    L_span    = lambda_exclusion * outside - lambda_inclusion * inside

averaged over assigned heads, images and global views, and added to the DINO
loss. Minimising it penalises attention outside the map and rewards attention
inside, which is what the paper's text describes. The paper's printed
equations carry the opposite signs (and would push attention out of the
organs), and name the teacher's attention, which receives no gradient: here
the term acts on the student, and the teacher follows by EMA.

The CLS row, with CLS-to-CLS dropped, does not sum to one. On the raw row
(``renormalize=False``) the loss is ``T * (lambda_exclusion - (lambda_inclusion
+ lambda_exclusion) * s)`` with ``T`` the head's patch mass and ``s`` the
share inside the map: while ``s`` is below ``lambda_exclusion /
(lambda_inclusion + lambda_exclusion)`` the cheapest descent is to shrink
``T``, i.e. to move the head's attention onto the CLS token itself, an
escape rather than a look at the organ (small organs start far below that
share). With ``renormalize=True`` (the default) the head's patch attention
is renormalised to sum to one first, so inside + outside = 1 and the only
way down is to move attention into the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spanlib.core.configs import SpanConfig


def maps_to_grid(knowledge_maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch covered by the map: ``[B, O, H, W] -> [B, O, gh, gw]``."""
    return F.adaptive_avg_pool2d(knowledge_maps.float(), grid)


@dataclass
class SpanTerms:
    """The regularizer and its parts (means over heads, images, views)."""

    loss: torch.Tensor
    inside: torch.Tensor
    outside: torch.Tensor
    inside_share: torch.Tensor


def span_loss(
    attention: torch.Tensor,
    knowledge_maps: torch.Tensor,
    head_index: list[int] | tuple[int, ...],
    lambda_inclusion: float,
    lambda_exclusion: float,
    renormalize: bool = True,
) -> SpanTerms:
    """The SPAN regularizer for a batch.

    Args:
        attention: ``[B, heads, gh, gw]`` CLS attention over patches (student).
        knowledge_maps: ``[B, O, H, W]`` maps in [0, 1], one per organ, in the
            same geometry as the images the attention was computed on.
        head_index: for organ ``o`` (channel ``o`` of the maps), the head it
            is assigned to.
        lambda_inclusion: weight of the reward on mass inside the maps.
        lambda_exclusion: weight of the penalty on mass outside the maps.
        renormalize: renormalise each head's patch attention to sum to one.

    Returns:
        The loss to add and the diagnostics; ``inside_share`` is the share of
        a head's patch attention that falls inside its map.
    """
    if knowledge_maps.shape[1] != len(head_index):
        raise ValueError(f"{knowledge_maps.shape[1]} knowledge maps for {len(head_index)} assigned heads")
    if knowledge_maps.shape[0] != attention.shape[0]:
        raise ValueError(f"{knowledge_maps.shape[0]} map sets for {attention.shape[0]} attention maps")
    grid_maps = maps_to_grid(knowledge_maps, tuple(attention.shape[-2:]))
    heads = attention[:, list(head_index)].float()  # [B, O, gh, gw]
    if renormalize:
        heads = heads / heads.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    total = heads.sum(dim=(-2, -1))
    inside = (heads * grid_maps).sum(dim=(-2, -1))
    outside = total - inside
    loss = lambda_exclusion * outside.mean() - lambda_inclusion * inside.mean()
    share = (inside / total.clamp_min(1e-12)).mean()
    return SpanTerms(loss=loss, inside=inside.mean(), outside=outside.mean(), inside_share=share.detach())


def coverage_loss(
    attention: torch.Tensor,
    knowledge_maps: torch.Tensor,
    head_index: list[int] | tuple[int, ...],
    weight: float,
) -> SpanTerms:
    """The coverage term, an extension of the book (not the paper's method): KL from the normalised map to the head.

    For an assigned head with patch attention ``a`` (renormalised to sum to
    one over the patches) and map ``K`` on the patch grid, the target is the
    map normalised to a distribution, ``q = K / sum(K)``, and the term is

        L_cov = weight * KL(q || a) = weight * sum_p q[p] (log q[p] - log a[p]),

    averaged over assigned heads, images and views. Its only minimum is
    ``a = q``: the head spreads its attention over the whole map in
    proportion to it, where the paper's linear terms are met as well by a
    head that piles its mass on a few patches inside the map (and AP rewards
    covering the organ). A view whose crop holds none of a map has no target
    and adds nothing.

    Args:
        attention: ``[B, heads, gh, gw]`` CLS attention over patches (student).
        knowledge_maps: ``[B, O, H, W]`` maps in [0, 1], one per organ.
        head_index: for organ ``o``, the head it is assigned to.
        weight: the term's weight.

    Returns:
        :class:`SpanTerms`: the loss, the mean mass inside and outside the
        maps (of the renormalised attention) and the share inside.
    """
    if knowledge_maps.shape[1] != len(head_index):
        raise ValueError(f"{knowledge_maps.shape[1]} knowledge maps for {len(head_index)} assigned heads")
    if knowledge_maps.shape[0] != attention.shape[0]:
        raise ValueError(f"{knowledge_maps.shape[0]} map sets for {attention.shape[0]} attention maps")
    grid_maps = maps_to_grid(knowledge_maps, tuple(attention.shape[-2:]))
    heads = attention[:, list(head_index)].float()
    heads = heads / heads.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    mass = grid_maps.sum(dim=(-2, -1), keepdim=True)
    target = grid_maps / mass.clamp_min(1e-12)
    divergence = (torch.special.xlogy(target, target) - target * torch.log(heads.clamp_min(1e-12))).sum(dim=(-2, -1))
    has_map = mass[..., 0, 0] > 0  # [B, O]
    kl = (divergence * has_map).sum() / has_map.sum().clamp_min(1)
    inside = (heads * grid_maps).sum(dim=(-2, -1))
    return SpanTerms(loss=weight * kl, inside=inside.mean(), outside=(1 - inside).mean(),
                     inside_share=inside.mean().detach())


def uses_span(cfg: SpanConfig) -> bool:
    """Whether a run's SPAN section regularizes any head (assigned heads and a weight above zero)."""
    return bool(cfg.assigned_heads) and max(cfg.lambda_inclusion, cfg.lambda_exclusion, cfg.lambda_coverage) > 0


def span_terms(attention: torch.Tensor, knowledge_maps: torch.Tensor, head_index: list[int] | tuple[int, ...],
               cfg: SpanConfig) -> SpanTerms:
    """The regularizer a run's SPAN section asks for: the paper's terms, plus the coverage term when weighted.

    With ``lambda_coverage`` 0 this is :func:`span_loss` exactly (the paper's
    method); with the paper's weights 0 it is :func:`coverage_loss` alone.
    """
    paper = cfg.lambda_inclusion > 0 or cfg.lambda_exclusion > 0
    if paper:
        terms = span_loss(attention, knowledge_maps, head_index, cfg.lambda_inclusion, cfg.lambda_exclusion,
                          cfg.renormalize)
        if cfg.lambda_coverage <= 0:
            return terms
        extra = coverage_loss(attention, knowledge_maps, head_index, cfg.lambda_coverage)
        return SpanTerms(loss=terms.loss + extra.loss, inside=terms.inside, outside=terms.outside,
                         inside_share=terms.inside_share)
    return coverage_loss(attention, knowledge_maps, head_index, cfg.lambda_coverage)


def inside_share(attention: torch.Tensor, knowledge_maps: torch.Tensor, head_index: list[int]) -> torch.Tensor:
    """Per image and organ: share of the assigned head's attention inside its map ``[B, O]``."""
    grid_maps = maps_to_grid(knowledge_maps, tuple(attention.shape[-2:]))
    heads = attention[:, list(head_index)].float()
    return (heads * grid_maps).sum(dim=(-2, -1)) / heads.sum(dim=(-2, -1)).clamp_min(1e-12)

"""Masks of "Refine and Represent": SLIC priors, mask pooling, K-means refinement, masks carried into views.

The pipeline, per mini-batch:

1. :func:`slic_priors`: SLIC superpixels of each original image (computed
   once, cached): an integer label map ``[H, W]`` with labels ``0 .. n-1``.
2. :func:`mask_pool`: the target encoder's feature map of the original
   image averaged under each superpixel (masks downsampled to the feature
   grid by area, so a mask's weight in a cell is the share of the cell it
   covers).
3. :func:`kmeans` over the pooled vectors of every superpixel of the
   mini-batch, and :func:`refine_masks` gives each pixel the cluster of its
   superpixel: a refined label map ``[H, W]`` with values in ``0 .. K-1``,
   one label per pixel, covering the image. Object mask ``k`` of an image is
   ``label == k`` (empty when no superpixel of that image fell in cluster k).
4. :func:`carry_masks`: the one-hot object masks cropped (and flipped) like
   a view with :func:`torchvision.ops.roi_align`, straight onto the view's
   feature grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = [
    "best_iou",
    "carry_masks",
    "kmeans",
    "label_areas",
    "mask_pool",
    "one_hot",
    "refine_masks",
    "slic_priors",
]


def slic_priors(images: np.ndarray, n_segments: int, compactness: float = 0.1) -> np.ndarray:
    """SLIC superpixels of grey images, relabelled ``0 .. n-1`` per image.

    Args:
        images: grey images ``[N, H, W]`` in [0, 1].
        n_segments: superpixels asked for (SLIC returns about that many).
        compactness: SLIC's balance of intensity and space (grey images in
            [0, 1] want about 0.01-1).

    Returns:
        int32 ``[N, H, W]`` label maps; every label ``0 .. max`` occurs.

    Raises:
        ValueError: images not ``[N, H, W]``.
    """
    from skimage.segmentation import slic

    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be [N, H, W] grey, got shape {images.shape}")
    out = np.empty(images.shape, dtype=np.int32)
    for i, image in enumerate(images):
        labels = slic(
            image.astype(np.float64), n_segments=n_segments, compactness=compactness, channel_axis=None,
            start_label=0, enforce_connectivity=True,
        )
        out[i] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return out


def one_hot(labels: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Float one-hot masks ``[B, n, H, W]`` of integer label maps ``[B, H, W]``.

    Raises:
        ValueError: a negative label or one ``>= n``.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
    labels = labels.long()
    n = int(labels.max()) + 1 if n is None else n
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
        raise ValueError(f"labels must lie in 0 .. {n - 1}, got {int(labels.min())} .. {int(labels.max())}")
    return F.one_hot(labels, n).permute(0, 3, 1, 2).float()


def label_areas(labels: torch.Tensor, n: int, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each cell of a coarse grid covered by each label: ``[B, n, h, w]``.

    Equal to ``adaptive_avg_pool2d(one_hot(labels, n), grid)`` for sizes
    that divide, without building the full-resolution one-hot masks (one
    ``bincount``).

    Args:
        labels: integer label maps ``[B, H, W]`` in ``0 .. n-1``.
        n: number of labels.
        grid: ``(h, w)``, divisors of ``(H, W)``.
    """
    b, height, width = labels.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"label size {(height, width)} is not a multiple of the grid {grid}")
    cell = (torch.arange(height) // (height // h))[:, None] * w + (torch.arange(width) // (width // w))[None, :]
    index = (torch.arange(b)[:, None, None] * n + labels.long().cpu()) * (h * w) + cell
    counts = torch.bincount(index.flatten(), minlength=b * n * h * w).view(b, n, h, w)
    return counts.float().div_((height // h) * (width // w)).to(labels.device)


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average of a feature map under each (soft) mask.

    Masks larger than the feature map are first downsampled to it by area
    (:func:`torch.nn.functional.adaptive_avg_pool2d`), so a cell's weight is
    the share of the cell the mask covers.

    Args:
        features: ``[B, C, h, w]``.
        masks: ``[B, M, H, W]`` weights in [0, 1], with ``H, W`` equal to
            ``h, w`` or multiples of them.

    Returns:
        ``(pooled [B, M, C], area [B, M])``; ``area`` is the mask's weight in
        feature cells. An empty mask (area 0) pools to a zero vector: callers
        treat it as absent (``area > 0``, or a minimum area).

    Raises:
        ValueError: shapes that do not fit.
    """
    if features.dim() != 4 or masks.dim() != 4 or features.shape[0] != masks.shape[0]:
        raise ValueError(f"features [B, C, h, w] and masks [B, M, H, W] expected, got "
                         f"{tuple(features.shape)} and {tuple(masks.shape)}")
    h, w = features.shape[-2:]
    if masks.shape[-2:] != (h, w):
        if masks.shape[-2] % h or masks.shape[-1] % w:
            raise ValueError(f"mask size {tuple(masks.shape[-2:])} is not a multiple of the feature grid {(h, w)}")
        masks = F.adaptive_avg_pool2d(masks, (h, w))
    masks = masks.to(features.dtype)
    area = masks.sum(dim=(-2, -1))
    summed = torch.einsum("bmhw,bchw->bmc", masks, features)
    pooled = summed / area.clamp(min=1e-6).unsqueeze(-1)
    return pooled, area


def _kmeanspp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    dist = (x - x[first]).pow(2).sum(-1)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # fewer distinct points than k: take any not yet chosen
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial((dist / total).cpu(), 1, generator=generator))
        centres.append(x[idx])
        dist = torch.minimum(dist, (x - x[idx]).pow(2).sum(-1))
    return torch.stack(centres)


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None, spherical: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means of row vectors (k-means++ seeding, Lloyd iterations), in torch.

    Args:
        x: ``[N, D]`` vectors.
        k: clusters, ``1 <= k <= N``.
        iters: Lloyd iterations.
        generator: random stream of the seeding (deterministic given it).
        spherical: cluster directions (rows and centres L2-normalised,
            i.e. cosine similarity), as the paper's features are compared.

    Returns:
        ``(assignment [N] long in 0 .. k-1, centres [k, D])``. A cluster left
        empty by an iteration is re-seeded with the point farthest from its
        centre, so every cluster keeps at least one point when ``N >= k``
        distinct points exist.

    Raises:
        ValueError: ``k`` outside ``1 .. N``, non-finite input.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [N, D], got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} clusters need 1 <= k <= number of vectors ({n})")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x = x.float()
    if spherical:
        x = F.normalize(x, dim=1)
    centres = _kmeanspp(x, k, generator)
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(max(iters, 1)):
        dist = torch.cdist(x, centres).pow(2)
        assign = dist.argmin(dim=1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        new = sums / counts.clamp(min=1).unsqueeze(1).float()
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = dist.gather(1, assign[:, None]).squeeze(1).clone()
            for c in empty.tolist():
                idx = int(far.argmax())
                new[c] = x[idx]
                assign[idx] = c
                far[idx] = -1.0
        centres = F.normalize(new, dim=1) if spherical else new
    return assign, centres


@torch.no_grad()
def refine_masks(
    features: torch.Tensor,
    priors: torch.Tensor,
    k: int,
    iters: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge superpixels into ``k`` object masks by K-means over mask-pooled features.

    The superpixels of every image of the batch are pooled from ``features``
    (:func:`mask_pool`) and clustered together (:func:`kmeans`, cosine), as
    the paper clusters over the whole mini-batch; each pixel takes the
    cluster of its superpixel.

    Args:
        features: target-encoder features of the original images ``[B, C, h, w]``.
        priors: superpixel label maps ``[B, H, W]`` (``H, W`` multiples of
            ``h, w``), labels ``0 .. n_b - 1`` per image.
        k: object clusters.
        iters: K-means iterations.
        generator: random stream of the K-means seeding.

    Returns:
        long ``[B, H, W]`` refined label maps in ``0 .. k-1``: one label per
        pixel, so the ``k`` object masks cover the image without overlap (a
        mask may be empty in a given image).

    Raises:
        ValueError: ``k`` larger than the number of superpixels in the batch,
        or a negative prior label.
    """
    if priors.dim() != 3 or priors.shape[0] != features.shape[0]:
        raise ValueError(f"priors must be [B, H, W] with B = {features.shape[0]}, got {tuple(priors.shape)}")
    priors = priors.long()
    if int(priors.min()) < 0:
        raise ValueError("prior labels must be >= 0")
    weights = label_areas(priors, int(priors.max()) + 1, tuple(features.shape[-2:]))
    pooled, area = mask_pool(features.float(), weights)
    present = area > 0
    n_vectors = int(present.sum())
    if k > n_vectors:
        raise ValueError(
            f"k = {k} clusters but the batch has only {n_vectors} superpixels; lower k or raise n_segments"
        )
    assign, _ = kmeans(pooled[present], k, iters=iters, generator=generator)
    cluster = torch.zeros(area.shape, dtype=torch.long, device=area.device)
    cluster[present] = assign
    return cluster.gather(1, priors.flatten(1)).view_as(priors)


def carry_masks(masks: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, grid: int) -> torch.Tensor:
    """Masks of the original image as a view sees them, on the view's feature grid.

    ``roi_align`` (``aligned=True``, adaptive sampling) averages each mask
    over the part of the crop box that falls in each cell of a ``grid x
    grid`` view grid; a flipped view gets flipped masks.

    Args:
        masks: ``[B, M, H, W]`` masks of the original images (float in [0, 1]).
        boxes: crop boxes ``[B, 4]`` as ``(x1, y1, x2, y2)`` in pixels of the
            original image (continuous coordinates: pixel ``i`` spans ``[i, i+1]``).
        flips: bool ``[B]``, True where the view was flipped horizontally
            after the crop.
        grid: side of the view's feature map.

    Returns:
        ``[B, M, grid, grid]``: each cell's share covered by each mask.
    """
    if masks.dim() != 4 or boxes.shape != (masks.shape[0], 4) or flips.shape != (masks.shape[0],):
        raise ValueError(f"masks [B, M, H, W], boxes [B, 4], flips [B] expected, got {tuple(masks.shape)}, "
                         f"{tuple(boxes.shape)}, {tuple(flips.shape)}")
    rois = torch.cat([torch.arange(len(boxes), dtype=masks.dtype)[:, None], boxes.to(masks.dtype)], dim=1)
    out = roi_align(masks, rois, output_size=(grid, grid), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


def best_iou(labels: np.ndarray, target: np.ndarray) -> float:
    """Best intersection over union of one target mask with the segments of a label map.

    Args:
        labels: integer label map ``[H, W]`` (superpixels or refined masks).
        target: bool ``[H, W]`` (an organ).

    Returns:
        max over segments of IoU(segment, target); nan for an empty target.
    """
    target = np.asarray(target, bool)
    if not target.any():
        return float("nan")
    labels = np.asarray(labels).ravel()
    t = target.ravel()
    n = int(labels.max()) + 1
    inter = np.bincount(labels[t], minlength=n)
    size = np.bincount(labels, minlength=n)
    union = size + t.sum() - inter
    return float((inter / np.maximum(union, 1)).max())

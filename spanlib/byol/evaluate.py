"""Downstream checks of a BYOL encoder: frozen features, a segmentation probe, the quality of refined masks.

* :func:`encode`: the encoder's C5 maps of a split (eval mode, batched).
* :func:`linear_features`: global average of C5, the vector the linear
  probe (:func:`spanlib.eval.probe.linear_probe`) reads.
* :func:`segmentation_probe`: a linear classifier per C5 cell (a 1x1
  convolution on frozen, standardised features), one sigmoid channel per
  organ (organs overlap on a film), logits upsampled bilinearly to the
  image; IoU per organ on the test split.
* :func:`refined_labels` and :func:`mask_quality`: object masks of a batch
  as the target encoder refines them, and how well superpixels and object
  masks fit each organ (best IoU of one segment with the organ).
* :func:`mean_auc_standard_error` and :func:`paired_standard_error`: how
  large a difference between two encoders the test split can resolve.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spanlib.byol.config import ByolConfig
from spanlib.byol.data import ByolData
from spanlib.byol.masks import best_iou, refine_masks
from spanlib.byol.views import normalize
from spanlib.core.device import bf16_fast, torch_threads
from spanlib.eval.metrics import iou

__all__ = [
    "auc_standard_error",
    "encode",
    "linear_features",
    "mask_quality",
    "mean_auc_standard_error",
    "paired_standard_error",
    "probe_encoder",
    "refined_labels",
    "segmentation_probe",
]


@torch.no_grad()
def encode(encoder: torch.nn.Module, images: np.ndarray, cfg: ByolConfig, batch_size: int = 256,
           stage: str = "c5", num_threads: int | None = 1) -> torch.Tensor:
    """Feature maps ``[N, C, h, w]`` of images ``[N, 1, S, S]`` in [0, 1].

    The encoder (on the CPU) runs in eval mode, under bfloat16 autocast when
    ``cfg.bf16`` as in training; ``stage`` is ``"c5"`` or ``"c4"``; torch
    uses ``num_threads`` threads meanwhile (``None`` leaves the setting).
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        with torch_threads(num_threads):
            for chunk in torch.as_tensor(images).float().split(batch_size):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16 and bf16_fast("cpu")):
                    maps = encoder(normalize(chunk, cfg))
                out.append(maps[0 if stage == "c4" else 1].float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def linear_features(maps: torch.Tensor) -> torch.Tensor:
    """Global average pooling ``[N, C, h, w] -> [N, C]``."""
    return maps.mean(dim=(-2, -1))


def segmentation_probe(
    train_maps: torch.Tensor,
    train_masks: np.ndarray,
    test_maps: torch.Tensor,
    test_masks: np.ndarray,
    mask_names: Sequence[str],
    steps: int = 100,
    lr: float = 0.2,
    train_size: int = 16,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Linear per-cell segmentation probe on frozen feature maps; IoU per mask.

    Features are standardised per channel with the training maps'
    statistics; a 1x1 convolution (zero-initialised) gives one logit map per
    mask. It is trained by full-batch Adam with binary cross-entropy against
    the masks' area fractions on a ``train_size`` grid (logits upsampled
    bilinearly to it), which is much cheaper than full resolution and loses
    little for a linear head on a coarse map; test logits are upsampled
    bilinearly to the full mask size and thresholded at 0. Deterministic.

    Args:
        train_maps: ``[N, C, h, w]``.
        train_masks: bool ``[N, M, H, W]``.
        test_maps: ``[T, C, h, w]``.
        test_masks: bool ``[T, M, H, W]``.
        mask_names: ``M`` names.
        steps: Adam steps.
        lr: Adam learning rate.
        train_size: side of the training grid (``H`` and ``W`` must be multiples of it).
        num_threads: torch threads while training (restored after); ``None`` leaves them.

    Returns:
        ``{"iou": {name: mean IoU over test images, percent}, "mIoU": mean
        over masks, "final_loss", "per_image": IoU [T, M] in percent (nan
        where mask and prediction are both empty), "prediction": bool [T, M, H, W]}``.
    """
    if train_masks.shape[1] != len(mask_names) or test_masks.shape[1] != len(mask_names):
        raise ValueError(
            f"{len(mask_names)} mask names for {train_masks.shape[1]} / {test_masks.shape[1]} mask channels"
        )
    with torch_threads(num_threads):
        mean = train_maps.mean(dim=(0, 2, 3), keepdim=True)
        std = train_maps.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
        x_train = (train_maps - mean) / std
        x_test = (test_maps - mean) / std
        y_train = F.adaptive_avg_pool2d(torch.as_tensor(train_masks).float(), train_size)
        head = torch.nn.Conv2d(x_train.shape[1], len(mask_names), 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        opt = torch.optim.Adam(head.parameters(), lr=lr)

        def logits(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)

        grid = (train_size, train_size)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(logits(x_train, grid), y_train)
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = float(F.binary_cross_entropy_with_logits(logits(x_train, grid), y_train))
            pred = logits(x_test, tuple(test_masks.shape[-2:])) > 0
    truth = torch.as_tensor(test_masks)
    per_image = np.stack([100.0 * iou(pred[:, j], truth[:, j]).numpy() for j in range(len(mask_names))], axis=1)
    scores = {name: float(np.nanmean(per_image[:, j])) if np.isfinite(per_image[:, j]).any() else math.nan
              for j, name in enumerate(mask_names)}
    return {"iou": scores, "mIoU": float(np.nanmean(list(scores.values()))), "final_loss": final,
            "per_image": per_image, "prediction": pred.numpy()}


@torch.no_grad()
def refined_labels(target_encoder: torch.nn.Module, images: np.ndarray, priors: np.ndarray, cfg: ByolConfig,
                   k: int | None = None, seed: int = 0) -> np.ndarray:
    """Object masks of a batch as the target encoder refines them (one K-means over the whole batch).

    Args:
        target_encoder: the target network's encoder.
        images: ``[B, 1, S, S]`` in [0, 1].
        priors: SLIC label maps ``[B, S, S]``.
        cfg: the run's config (``k`` and K-means iterations).
        k: clusters (default ``cfg.k``).
        seed: seed of the K-means seeding.

    Returns:
        int ``[B, S, S]`` label maps in ``0 .. k-1``.
    """
    c4 = encode(target_encoder, images, cfg, stage="c4")
    gen = torch.Generator().manual_seed(seed)
    labels = refine_masks(c4, torch.as_tensor(priors).long(), k or cfg.k, cfg.kmeans_iters, gen)
    return labels.numpy()


def mask_quality(labels: np.ndarray, masks: np.ndarray, mask_names: Sequence[str]) -> dict[str, float]:
    """Mean over images of the best IoU of one segment with each mask, percent.

    Args:
        labels: segment label maps ``[N, S, S]`` (superpixels or object masks).
        masks: bool ``[N, M, S, S]``.
        mask_names: ``M`` names.
    """
    out = {}
    for j, name in enumerate(mask_names):
        values = [best_iou(labels[i], masks[i, j]) for i in range(len(labels))]
        out[name] = 100.0 * float(np.nanmean(values))
    return out


def probe_encoder(encoder: torch.nn.Module, train: ByolData, test: ByolData, cfg: ByolConfig,
                  seed: int = 0, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Both downstream checks of one frozen encoder, cached when ``cache_dir`` is given.

    The linear probe (:func:`spanlib.eval.probe.linear_probe`, the paper's
    settings) reads the global average of C5 and predicts ``train``'s
    labels; the segmentation probe (:func:`segmentation_probe`) reads the C5
    map and predicts ``train``'s masks. Both are scored on ``test``.

    Args:
        encoder: the frozen encoder.
        train: the probes' training split.
        test: their test split.
        cfg: the config the encoder was trained with (normalisation, autocast).
        seed: the linear probe's seed.
        cache_dir: a folder (e.g. the run's) where the scores are kept in
            ``probes-<hash>.json``, keyed by both splits and the seed; the
            caller makes sure the folder belongs to this encoder.

    Returns:
        ``{"mAUC", "auc": {label: AUC}, "mIoU", "iou": {mask: IoU}, "per_image": IoU [T, M]}``, in percent.
    """
    from spanlib.eval.probe import linear_probe

    cache = None
    if cache_dir is not None:
        digest = hashlib.sha1(f"{train.key}|{test.key}|{seed}".encode()).hexdigest()[:10]
        cache = Path(cache_dir) / f"probes-{digest}.json"
        if cache.is_file():
            saved = json.loads(cache.read_text())
            saved["per_image"] = np.asarray(saved["per_image"], dtype=float).reshape(len(test), -1)
            return saved
    train_maps, test_maps = encode(encoder, train.images, cfg), encode(encoder, test.images, cfg)
    linear = linear_probe(linear_features(train_maps), train.labels, linear_features(test_maps), test.labels,
                          list(train.label_names), seed=seed)
    segment = segmentation_probe(train_maps, train.masks, test_maps, test.masks, train.mask_names)
    result = {"mAUC": linear["mAUC"], "auc": linear["auc"], "mIoU": segment["mIoU"], "iou": segment["iou"],
              "per_image": segment["per_image"]}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({**result, "per_image": result["per_image"].tolist()}))
        tmp.replace(cache)
    return result


def auc_standard_error(auc: float, n_positive: int, n_negative: int) -> float:
    """Standard error of an AUC (Hanley and McNeil, 1982), in the units of ``auc`` (percent in, percent out).

    Raises:
        ValueError: no positives or no negatives.
    """
    if n_positive < 1 or n_negative < 1:
        raise ValueError(f"an AUC needs positives and negatives, got {n_positive} and {n_negative}")
    a = auc / 100.0
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)
    variance /= n_positive * n_negative
    return 100.0 * math.sqrt(max(variance, 0.0))


def mean_auc_standard_error(aucs: dict[str, float], labels: np.ndarray, label_names: Sequence[str]) -> float:
    """Standard error of a mean AUC over labels, treating the labels' errors as independent.

    Args:
        aucs: label -> AUC in percent (nan labels are skipped, as in the mean).
        labels: the test labels ``[T, L]`` (0, 1, nan).
        label_names: ``L`` names in column order.
    """
    errors = []
    for j, name in enumerate(label_names):
        if math.isnan(aucs.get(name, math.nan)):
            continue
        known = labels[~np.isnan(labels[:, j]), j]
        errors.append(auc_standard_error(aucs[name], int(known.sum()), int((1 - known).sum())))
    return math.sqrt(sum(e * e for e in errors)) / len(errors) if errors else math.nan


def paired_standard_error(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of ``mean(a - b)`` over rows (paired per test image), nan rows dropped.

    ``a`` and ``b`` are ``[T]`` or ``[T, M]`` (then averaged over ``M`` first, like mIoU).
    """
    diff = np.asarray(a, float) - np.asarray(b, float)
    if diff.ndim == 2:
        diff = np.nanmean(diff, axis=1)
    diff = diff[np.isfinite(diff)]
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan

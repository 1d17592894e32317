"""What a network learns *with* the labels: the ceiling a frozen-feature probe is read against.

When a linear probe on self-supervised features sits near chance, two
explanations differ in what they ask of the reader: the images do not hold
the label at the model's input size, or they hold it and the backbone does
not learn it. :func:`supervised_ceiling` tells them apart by training
networks end to end on every training label, from random weights, on the
same evaluation view the probe sees: the run's own ViT (its shape, no
weights), the same ViT with a convolutional stem (``model.stem: conv``) when
the run's has a patchify stem, and a small convolutional network. A CNN far
above chance says the label is in the images; the ViT beside it says whether
this backbone can learn it at all in the same data, and the conv-stem ViT
whether what it lacks is the locality of its first layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from spanlib.core.checkpoint import write_json
from spanlib.core.configs import Config
from spanlib.core.device import default_device, torch_threads
from spanlib.data import open_dataset
from spanlib.data.transforms import EvaluationView
from spanlib.eval.sets import test_set, training_set
from spanlib.model.vit import build_vit

NETWORKS = ("vit", "vit_conv_stem", "cnn")
"""The networks :func:`supervised_ceiling` trains: the run's ViT shape, the same with a convolutional
stem (only where the run's stem is not one already) and :func:`small_cnn`."""


CNN_WIDTHS = (32, 64, 96)
"""Channels of :func:`small_cnn`'s three convolutions (about 80,000 weights)."""


def small_cnn(in_chans: int, widths: Sequence[int] = CNN_WIDTHS) -> nn.Module:
    """Three 3x3 convolutions with ReLU, max pooling between them and over the image at the end.

    Returns:
        A module mapping ``[B, in_chans, H, W]`` to ``[B, widths[-1]]``.
    """
    layers: list[nn.Module] = []
    channels = in_chans
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.MaxPool2d(2) if i < len(widths) - 1 else nn.AdaptiveMaxPool2d(1))
        channels = width
    return nn.Sequential(*layers, nn.Flatten())


def _ids_digest(train: Sequence, test: Sequence) -> str:
    """A fingerprint of which samples train and test: a cached result is reused only for the same sets."""
    h = hashlib.blake2b(digest_size=8)
    for part in (train, test):
        h.update("|".join(s.id for s in part).encode() + b"#")
    return h.hexdigest()


def _labels(samples: Sequence, label: str) -> torch.Tensor:
    missing = [s.id for s in samples if label not in s.labels]
    if missing:
        raise ValueError(f"samples {missing[:3]} carry no label {label!r}")
    return torch.tensor([float(s.labels[label]) for s in samples])


def train_supervised(
    backbone: nn.Module,
    width: int,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    epochs: int,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 32,
    dihedral: bool = True,
) -> np.ndarray:
    """Train ``backbone`` and a linear head on a binary label with BCE; the test images' scores.

    Args:
        backbone: maps images to ``[B, width]`` features.
        width: the backbone's feature width.
        train_x, train_y: training views and their 0/1 labels.
        test_x: test views.
        epochs: passes over the training set (AdamW, weight decay 0.05).
        seed: seed of the head, the batch order and the augmentation.
        dihedral: augment by random rotations by 90 degrees and flips (a
            part seen from above has no up; a chest film has, pass False).

    Returns:
        The test images' logits, ``[N_test]``.
    """
    device = next(backbone.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(width, 1).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    for _ in range(epochs):
        backbone.train()
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = train_x[idx]
            if dihedral:
                x = torch.rot90(x, int(torch.randint(4, (1,), generator=generator)), (2, 3))
                if bool(torch.rand(1, generator=generator) < 0.5):
                    x = x.flip(3)
            logits = head(backbone(x.to(device))).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, train_y[idx].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"supervised ceiling: the loss became {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    backbone.eval()
    with torch.no_grad():
        return torch.cat([head(backbone(test_x[i:i + 256].to(device))).squeeze(1).cpu()
                          for i in range(0, len(test_x), 256)]).numpy()


def supervised_ceiling(
    cfg: Config,
    train: Sequence,
    test: Sequence,
    label: str,
    epochs: int = 30,
    seed: int = 0,
    dihedral: bool = True,
    out: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Test AUC of the run's ViT shape, its conv-stem twin and :func:`small_cnn`, each trained with every label.

    Args:
        cfg: the run's configuration (model shape, input size, normalisation);
            its ``model.pretrained_path`` is ignored: both start from random weights.
        train, test: samples carrying ``label``.
        label: the binary label (e.g. ``defect``).
        epochs: training epochs of each network.
        dihedral: see :func:`train_supervised`.
        out: a JSON file that caches the result for the same request.
        threads: torch threads while training (None: unchanged).

    Returns:
        ``{"auc": {"vit": %, "vit_conv_stem": %, "cnn": %}, "epochs", "train", "test", "label", "img_size",
        "stem"}``; ``vit_conv_stem`` is absent when the run's own ViT has the conv stem (``stem``).
    """
    request = {"networks": list(NETWORKS), "label": label, "epochs": epochs, "seed": seed, "dihedral": dihedral,
               "train": len(train), "test": len(test), "img_size": cfg.model.img_size, "model": cfg.model.to_dict(),
               "ids": _ids_digest(train, test)}
    if out is not None and Path(out).is_file():
        cached = json.loads(Path(out).read_text())
        if cached.get("request") == request:
            return cached["result"]
    train_y, test_y = _labels(train, label), _labels(test, label).numpy()
    if len(np.unique(test_y)) < 2:
        raise ValueError(f"the test samples hold one value of {label!r} only: no AUC")
    device = default_device()
    with torch_threads(threads):
        view = EvaluationView(cfg.views, cfg.model.img_size, cfg.model.in_chans)
        train_x, test_x = view.stack(train), view.stack(test)
        auc = {}
        for name in NETWORKS:
            if name == "vit_conv_stem" and cfg.model.stem == "conv":
                continue  # the run's own ViT is this one
            torch.manual_seed(seed)
            if name.startswith("vit"):
                stem = "conv" if name == "vit_conv_stem" else cfg.model.stem
                backbone = build_vit(cfg.model.replace(pretrained_path=None, stem=stem))
                width = backbone.num_features
            else:
                backbone, width = small_cnn(cfg.model.in_chans), CNN_WIDTHS[-1]
            scores = train_supervised(backbone.to(device), width, train_x, train_y, test_x, epochs, seed,
                                      dihedral=dihedral)
            auc[name] = 100.0 * float(roc_auc_score(test_y, scores))
    result = {"auc": auc, "epochs": epochs, "train": len(train), "test": len(test), "label": label,
              "img_size": cfg.model.img_size, "stem": cfg.model.stem}
    if out is not None:
        write_json(Path(out), {"request": request, "result": result})
    return result


def supervised_ceiling_on(cfg: Config, data: str | Path, reader: str, label: str, epochs: int = 30, seed: int = 0,
                          out: str | Path | None = None) -> dict[str, Any]:
    """:func:`supervised_ceiling` on a dataset, with the linear probe's sets: its train split and its test set."""
    whole = open_dataset(reader, data)
    test, test_how = test_set(whole, Path(data), None, reader, {})
    train, _ = training_set(whole, Path(data), None, reader, {}, test, test_how)
    return supervised_ceiling(cfg, train, test, label, epochs=epochs, seed=seed, out=out)

"""Evaluation of frozen features: linear probe, few-shot probe, weighted k-NN.

These functions take feature arrays (``[N, D]``, NumPy or torch) and labels,
never a model: extracting features is the caller's job, so the same maths
scores every regimen.

* :func:`linear_probe`: the paper's multi-label probe (one linear layer,
  binary cross-entropy per finding, 100 epochs, no augmentation), AUC per
  label and their mean (mAUC), in percent.
* :func:`fewshot`: the low-data quality-inspection probe: balanced labelled
  sets of 4, 8, 16, 32 images, many random draws per size, a logistic
  regression per draw, test AUC; mean and two 95% intervals per size.
* :func:`knn_classify` and :func:`knn_multilabel`: DINO's weighted k-NN
  (cosine similarity, ``exp(sim / T)`` votes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

__all__ = [
    "auc_per_label",
    "balanced_draws",
    "fewshot",
    "knn_classify",
    "knn_multilabel",
    "linear_probe",
]

ArrayLike = np.ndarray | torch.Tensor


def _features(x: ArrayLike, name: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
    if x.dim() != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.double()


def _multilabels(y: ArrayLike, n: int, name: str) -> np.ndarray:
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} must be [{n}, L], got shape {y.shape}")
    known = y[~np.isnan(y)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0, 1 or nan")
    return y


def auc_per_label(scores: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """ROC AUC per label in percent, skipping nan labels, and their mean.

    Args:
        scores: Scores ``[N, L]`` (higher = more likely positive).
        labels: 0/1 labels ``[N, L]``, nan where unknown.
        label_names: ``L`` names.

    Returns:
        ``{"auc": {name: AUC or nan}, "mAUC": mean over scored labels,
        "unscored": [names whose known test labels hold one class only]}``.
    """
    if scores.shape != labels.shape or scores.shape[1] != len(label_names):
        raise ValueError(
            f"scores {scores.shape}, labels {labels.shape} and {len(label_names)} label names do not agree"
        )
    auc: dict[str, float] = {}
    unscored: list[str] = []
    for j, name in enumerate(label_names):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        if y.size == 0 or y.min() == y.max():
            auc[name] = math.nan
            unscored.append(name)
            continue
        auc[name] = 100.0 * float(roc_auc_score(y, scores[known, j]))
    scored = [v for v in auc.values() if not math.isnan(v)]
    return {"auc": auc, "mAUC": float(np.mean(scored)) if scored else math.nan, "unscored": unscored}


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    label_names: list[str],
    epochs: int = 100,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Multi-label linear probe on frozen features; AUC per label and mAUC in percent.

    Features are standardised with the training set's mean and standard
    deviation. One linear layer (zero-initialised) is trained with binary
    cross-entropy on the logits; unknown (nan) labels drop out of the loss and
    out of the AUC. No augmentation. Deterministic for a given seed (the seed
    only orders the mini-batches; no global random state is touched).

    Args:
        train_x: Training features ``[N, D]``.
        train_y: Training labels ``[N, L]`` (0, 1 or nan).
        test_x: Test features ``[M, D]``.
        test_y: Test labels ``[M, L]`` (0, 1 or nan).
        label_names: ``L`` names, in column order.
        epochs: Passes over the training set (Adam), or the iteration budget
            of L-BFGS.
        optimizer: ``"adam"`` (mini-batches) or ``"lbfgs"`` (full batch,
            strong-Wolfe line search).
        lr: Learning rate (Adam; L-BFGS uses 1 with its line search).
        weight_decay: L2 penalty on the weights (not the bias).
        batch_size: Adam mini-batch size.
        seed: Seed of the mini-batch order.
        num_threads: torch intra-op threads while training, restored after;
            ``None`` leaves the setting alone. One is the default: a linear
            layer on a few thousand rows gains nothing from more, and on the
            shared 2-core machines two OpenMP threads made these tiny steps
            up to 60x slower whenever another process held a core.

    Returns:
        ``{"auc": {name: AUC}, "mAUC", "unscored", "final_loss", "epochs",
        "optimizer", "n_train", "n_test"}``.
    """
    if num_threads is None:
        return _linear_probe(
            train_x, train_y, test_x, test_y, label_names, epochs, optimizer, lr, weight_decay, batch_size, seed
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _linear_probe(
            train_x, train_y, test_x, test_y, label_names, epochs, optimizer, lr, weight_decay, batch_size, seed
        )
    finally:
        torch.set_num_threads(previous)


def _linear_probe(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike, label_names: list[str],
                  epochs: int, optimizer: str, lr: float, weight_decay: float, batch_size: int, seed: int
                  ) -> dict[str, Any]:
    """:func:`linear_probe` under the caller's thread setting."""
    x_train, y_train, x_test, y_test = _probe_inputs(train_x, train_y, test_x, test_y, label_names, epochs)
    known = torch.from_numpy(~np.isnan(y_train))
    target = torch.from_numpy(np.nan_to_num(y_train, nan=0.0)).float()

    layer = torch.nn.Linear(x_train.shape[1], len(label_names))
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)

    def loss_of(rows: torch.Tensor | slice) -> torch.Tensor:
        logits = layer(x_train[rows])
        mask = known[rows].float()
        per_entry = F.binary_cross_entropy_with_logits(logits, target[rows], reduction="none")
        loss = (per_entry * mask).sum() / mask.sum().clamp(min=1.0)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * layer.weight.pow(2).sum()
        return loss

    _fit_layer(layer, loss_of, x_train.shape[0], epochs, optimizer, lr, batch_size, seed)
    with torch.no_grad():
        final_loss = float(loss_of(slice(None)))
        test_scores = layer(x_test).double().numpy()
    result = auc_per_label(test_scores, y_test, list(label_names))
    result.update(
        final_loss=final_loss,
        epochs=epochs,
        optimizer=optimizer,
        n_train=int(x_train.shape[0]),
        n_test=int(x_test.shape[0]),
    )
    return result


def _probe_inputs(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike, label_names: list[str], epochs: int
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """Checked inputs of the linear probe, the features standardised with the training set's statistics (float32)."""
    x_train = _features(train_x, "train_x")
    x_test = _features(test_x, "test_x")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train_x has {x_train.shape[1]} features, test_x {x_test.shape[1]}")
    y_train = _multilabels(train_y, x_train.shape[0], "train_y")
    y_test = _multilabels(test_y, x_test.shape[0], "test_y")
    if y_train.shape[1] != len(label_names) or y_test.shape[1] != len(label_names):
        raise ValueError(f"{len(label_names)} label names for {y_train.shape[1]} / {y_test.shape[1]} label columns")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False).clamp(min=1e-8)
    return ((x_train - mean) / std).float(), y_train, ((x_test - mean) / std).float(), y_test


def _fit_layer(layer: torch.nn.Module, loss_of: Callable[[torch.Tensor | slice], torch.Tensor], n: int, epochs: int,
               optimizer: str, lr: float, batch_size: int, seed: int) -> None:
    """Train ``layer`` on ``loss_of(rows)``: Adam over seeded mini-batches of the ``n`` rows, or full-batch L-BFGS."""
    if optimizer == "adam":
        opt = torch.optim.Adam(layer.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for rows in torch.randperm(n, generator=gen).split(batch_size):
                opt.zero_grad(set_to_none=True)
                loss_of(rows).backward()
                opt.step()
    elif optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            layer.parameters(), lr=1.0, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_of(slice(None))
            loss.backward()
            return loss

        opt.step(closure)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")


def _binary_labels(y: ArrayLike, n: int, name: str) -> np.ndarray:
    """Float64 ``[n]`` labels holding 0, 1 or nan (unknown)."""
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    if y.shape != (n,):
        raise ValueError(f"{name} must be [{n}], got shape {y.shape}")
    if not np.isin(y[~np.isnan(y)], (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0, 1 or nan")
    return y


def balanced_draws(labels: ArrayLike, size: int, draws: int, seed: int) -> np.ndarray:
    """Index sets of ``size`` training items, ``size / 2`` of each class.

    The generator is seeded with ``(seed, size)``, so the draws for one size
    do not depend on which other sizes are asked for, and two models probed
    with the same seed see the same labelled sets (a paired comparison).

    Args:
        labels: 0/1 labels ``[N]``.
        size: Labelled set size, even.
        draws: Number of sets.
        seed: Seed.

    Returns:
        Int64 array ``[draws, size]``; each row holds ``size / 2`` indices of
        class 0 then ``size / 2`` of class 1, without repetition.
    """
    y = np.asarray(labels)
    if size < 2 or size % 2:
        raise ValueError(f"size must be even and at least 2, got {size}")
    per_class = size // 2
    members = [np.flatnonzero(y == c) for c in (0, 1)]
    for c, idx in enumerate(members):
        if idx.size < per_class:
            raise ValueError(f"class {c} has {idx.size} training items, {per_class} needed for size {size}")
    rng = np.random.default_rng([seed, size])
    out = np.empty((draws, size), dtype=np.int64)
    for d in range(draws):
        out[d, :per_class] = rng.choice(members[0], per_class, replace=False)
        out[d, per_class:] = rng.choice(members[1], per_class, replace=False)
    return out


def fewshot(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    sizes: tuple[int, ...] = (4, 8, 16, 32),
    draws: int = 100,
    seed: int = 0,
    C: float = 1.0,
) -> dict[str, Any]:
    """Few-shot linear probe: balanced labelled sets, many draws, test AUC in percent.

    For each size ``n`` and each of ``draws`` balanced sets (:func:`balanced_draws`),
    an L2-regularised logistic regression is fitted on the frozen features
    of the ``n`` labelled items and scored by ROC AUC on the whole test set.
    Features are standardised with the mean and standard deviation of all of
    ``train_x`` (unlabelled statistics: a handful of labels says nothing
    about scale). Items whose label is nan take no part in the draws or the
    AUC. A size the pool cannot fill (fewer than ``n / 2`` items of a class)
    is skipped and listed under ``skipped`` with the reason.

    Two 95% intervals are reported per size:

    * ``ci95``: Student-t interval of the *mean* AUC over draws
      (``mean +- t_{0.975, draws-1} * sd / sqrt(draws)``): how well the mean
      is known, the interval to compare regimens with.
    * ``spread95``: 2.5th and 97.5th percentiles of the AUC over draws: how
      much one labelled set can vary.

    Args:
        train_x: Pool of training features ``[N, D]``.
        train_y: Labels of the pool ``[N]``: 0, 1 or nan.
        test_x: Test features ``[M, D]``.
        test_y: Test labels ``[M]``: 0, 1 or nan; both classes present.
        sizes: Labelled set sizes (even).
        draws: Draws per size.
        seed: Seed of the draws.
        C: Inverse L2 strength of the logistic regression.

    Returns:
        ``{"sizes": {n: {"mean", "sd", "ci95": [lo, hi], "spread95": [lo, hi],
        "aucs": [...]}}, "skipped": {n: reason}, "draws", "seed",
        "interval": description}``.

    Raises:
        ValueError: If the test set lacks a class, ``draws < 2``, or no size
            can be drawn.
    """
    x_train, y_train, x_test, y_test = _fewshot_inputs(train_x, train_y, test_x, test_y, draws)
    per_size: dict[int, dict[str, Any]] = {}
    skipped: dict[int, str] = {}
    for size in sizes:
        try:
            index_sets = balanced_draws(y_train, size, draws, seed)
        except ValueError as err:
            skipped[int(size)] = str(err)
            continue
        per_size[int(size)] = _fewshot_size(x_train, y_train, x_test, y_test, index_sets, C)
    if not per_size:
        raise ValueError(f"no labelled-set size could be drawn: {skipped}")
    return {
        "sizes": per_size,
        "skipped": skipped,
        "draws": draws,
        "seed": seed,
        "interval": "ci95: Student-t 95% interval of the mean AUC over draws; "
        "spread95: 2.5-97.5 percentiles of the AUC over draws",
    }


def _fewshot_inputs(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike, draws: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked few-shot inputs: features standardised with all of ``train_x``, items with a nan label dropped."""
    x_train = _features(train_x, "train_x").numpy()
    x_test = _features(test_x, "test_x").numpy()
    y_train = _binary_labels(train_y, x_train.shape[0], "train_y")
    y_test = _binary_labels(test_y, x_test.shape[0], "test_y")
    if draws < 2:
        raise ValueError(f"draws must be at least 2 for an interval, got {draws}")
    mean = x_train.mean(axis=0)
    std = np.maximum(x_train.std(axis=0), 1e-8)
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    pool = ~np.isnan(y_train)
    x_train, y_train = x_train[pool], y_train[pool].astype(np.int64)
    scored = ~np.isnan(y_test)
    x_test, y_test = x_test[scored], y_test[scored].astype(np.int64)
    if y_test.size == 0 or y_test.min() == y_test.max():
        raise ValueError("test_y holds fewer than two classes; AUC is undefined")
    return x_train, y_train, x_test, y_test


def _fewshot_size(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, index_sets: np.ndarray, C: float
) -> dict[str, Any]:
    """One labelled-set size: a logistic regression per draw, the test AUCs, their mean and intervals."""
    draws = len(index_sets)
    aucs = np.empty(draws)
    # tiny fits: a second BLAS thread only adds synchronisation (with torch
    # loaded it made each fit about 50x slower on the shared 2-core machines)
    with threadpool_limits(limits=1, user_api="blas"):
        for d, rows in enumerate(index_sets):
            model = LogisticRegression(C=C, max_iter=1000)
            model.fit(x_train[rows], y_train[rows])
            aucs[d] = 100.0 * roc_auc_score(y_test, model.decision_function(x_test))
    mu, sd = float(aucs.mean()), float(aucs.std(ddof=1))
    half = float(stats.t.ppf(0.975, draws - 1)) * sd / math.sqrt(draws)
    return {
        "mean": mu,
        "sd": sd,
        "ci95": [mu - half, mu + half],
        "spread95": [float(v) for v in np.percentile(aucs, [2.5, 97.5])],
        "aucs": aucs.tolist(),
    }


def _knn_votes(
    train_x: torch.Tensor, test_x: torch.Tensor, k: int, temperature: float, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour indices ``[M, k]`` and weights ``exp(sim / T)`` by cosine similarity."""
    train = F.normalize(train_x.float(), dim=1)
    test = F.normalize(test_x.float(), dim=1)
    k = min(k, train.shape[0])
    indices, weights = [], []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T
        top, idx = sim.topk(k, dim=1, largest=True, sorted=True)
        indices.append(idx)
        weights.append((top / temperature).exp())
    return torch.cat(indices), torch.cat(weights)


def knn_classify(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's weighted k-NN classifier (single label).

    Features are L2-normalised; the ``k`` training items most cosine-similar
    to a test item vote for their class with weight ``exp(sim / T)``.

    Args:
        train_x: Training features ``[N, D]``.
        train_y: Class indices ``[N]`` in ``[0, num_classes)``.
        test_x: Test features ``[M, D]``.
        k: Neighbours (capped at ``N``).
        temperature: ``T`` of the vote weights.
        num_classes: Number of classes (default: ``max(train_y) + 1``).
        chunk_size: Test items per similarity block.

    Returns:
        ``(predictions [M] int64, class_scores [M, C] float32)``; the scores
        are the summed vote weights, predictions their argmax.
    """
    x_train = _features(train_x, "train_x")
    x_test = _features(test_x, "test_x")
    y = torch.as_tensor(np.asarray(train_y) if not isinstance(train_y, torch.Tensor) else train_y).long().cpu()
    if y.shape != (x_train.shape[0],):
        raise ValueError(f"train_y must be [{x_train.shape[0]}], got shape {tuple(y.shape)}")
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"train_y must lie in [0, {num_classes})")
    idx, weights = _knn_votes(x_train, x_test, k, temperature, chunk_size)
    scores = torch.zeros(x_test.shape[0], num_classes).scatter_add_(1, y[idx], weights)
    return scores.argmax(dim=1), scores


def knn_multilabel(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    label_names: list[str],
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """Weighted k-NN for multi-label findings, scored by AUC per label.

    The score of a label is the ``exp(sim / T)``-weighted mean of the
    neighbours' labels, over the neighbours whose label is known; a test item
    with no such neighbour gets the label's training prevalence.

    Args:
        train_x: Training features ``[N, D]``.
        train_y: Training labels ``[N, L]`` (0, 1 or nan).
        test_x: Test features ``[M, D]``.
        test_y: Test labels ``[M, L]`` (0, 1 or nan).
        label_names: ``L`` names.
        k: Neighbours.
        temperature: ``T`` of the weights.
        chunk_size: Test items per similarity block.

    Returns:
        ``{"auc": {name: AUC}, "mAUC", "unscored"}`` as :func:`auc_per_label`.
    """
    x_train = _features(train_x, "train_x")
    x_test = _features(test_x, "test_x")
    y_train = _multilabels(train_y, x_train.shape[0], "train_y")
    y_test = _multilabels(test_y, x_test.shape[0], "test_y")
    idx, weights = _knn_votes(x_train, x_test, k, temperature, chunk_size)
    labels = torch.from_numpy(y_train)[idx]  # [M, k, L]
    known = ~torch.isnan(labels)
    w = weights.double()[:, :, None] * known
    total = w.sum(dim=1)
    known_train = ~np.isnan(y_train)
    prevalence = torch.from_numpy(np.nan_to_num(y_train).sum(axis=0) / np.maximum(known_train.sum(axis=0), 1))
    scores = torch.where(total > 0, (w * labels.nan_to_num(0.0)).sum(dim=1) / total.clamp(min=1e-300), prevalence)
    return auc_per_label(scores.numpy(), y_test, list(label_names))

"""Tests of spanlib.eval.probe on synthetic features with known structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spanlib.eval import probe

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "No Finding"]


def planted(n: int, dim: int = 32, seed: int = 0, signal: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first six directions carry the six labels, plus noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < 0.4).astype(np.float64)
    x = rng.normal(size=(n, dim))
    x[:, : len(LABELS)] += signal * (y - 0.5)
    return x, y


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_linear_probe_finds_planted_signal(optimizer: str) -> None:
    train_x, train_y = planted(400, seed=0)
    test_x, test_y = planted(200, seed=1)
    train_y[::7, 2] = np.nan  # unknown labels are ignored
    test_y[::5, 3] = np.nan
    result = probe.linear_probe(train_x, train_y, test_x, test_y, LABELS, epochs=30, optimizer=optimizer, lr=1e-2)
    assert set(result["auc"]) == set(LABELS)
    assert result["mAUC"] > 90
    assert min(result["auc"].values()) > 85
    assert result["unscored"] == []


def test_linear_probe_on_noise_is_near_chance() -> None:
    rng = np.random.default_rng(2)
    train_x, test_x = rng.normal(size=(300, 16)), rng.normal(size=(1000, 16))
    train_y = (rng.random((300, 6)) < 0.5).astype(float)
    test_y = (rng.random((1000, 6)) < 0.5).astype(float)
    result = probe.linear_probe(train_x, train_y, test_x, test_y, LABELS, epochs=20)
    assert 43 < result["mAUC"] < 57


def test_linear_probe_is_deterministic_and_accepts_tensors() -> None:
    train_x, train_y = planted(120, seed=3)
    test_x, test_y = planted(60, seed=4)
    a = probe.linear_probe(train_x, train_y, test_x, test_y, LABELS, epochs=5, seed=7)
    b = probe.linear_probe(
        torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), test_y, LABELS, epochs=5, seed=7
    )
    assert a["auc"] == b["auc"] and a["final_loss"] == b["final_loss"]


def test_linear_probe_single_class_label_is_unscored() -> None:
    train_x, train_y = planted(100, seed=5)
    test_x, test_y = planted(50, seed=6)
    test_y[:, 5] = 0.0
    result = probe.linear_probe(train_x, train_y, test_x, test_y, LABELS, epochs=3)
    assert math.isnan(result["auc"]["No Finding"])
    assert result["unscored"] == ["No Finding"]
    assert result["mAUC"] == pytest.approx(np.mean([result["auc"][n] for n in LABELS[:5]]))


def test_linear_probe_rejects_bad_labels() -> None:
    train_x, train_y = planted(20, seed=0)
    with pytest.raises(ValueError, match="0, 1 or nan"):
        probe.linear_probe(train_x, train_y * 2, train_x, train_y, LABELS, epochs=1)
    with pytest.raises(ValueError, match="label names"):
        probe.linear_probe(train_x, train_y, train_x, train_y, LABELS[:3], epochs=1)


def test_balanced_draws_hold_half_of_each_class() -> None:
    labels = np.array([0] * 30 + [1] * 9)
    for size in (4, 8, 16):
        draws = probe.balanced_draws(labels, size, draws=50, seed=0)
        assert draws.shape == (50, size)
        for row in draws:
            assert len(set(row.tolist())) == size
            assert (labels[row] == 1).sum() == size // 2
    assert np.array_equal(probe.balanced_draws(labels, 8, 5, seed=1), probe.balanced_draws(labels, 8, 5, seed=1))
    with pytest.raises(ValueError, match="class 1"):
        probe.balanced_draws(labels, 20, 1, seed=0)
    with pytest.raises(ValueError, match="even"):
        probe.balanced_draws(labels, 5, 1, seed=0)


def test_fewshot_improves_with_labels_and_intervals_are_ordered() -> None:
    rng = np.random.default_rng(8)

    def parts(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 20))
        x[:, 0] += 2.5 * (y - 0.5)
        return x, y

    train_x, train_y = parts(300)
    test_x, test_y = parts(200)
    result = probe.fewshot(train_x, train_y, test_x, test_y, sizes=(4, 32), draws=20, seed=0)
    assert set(result["sizes"]) == {4, 32}
    for stats in result["sizes"].values():
        lo, hi = stats["ci95"]
        assert lo <= stats["mean"] <= hi
        assert stats["spread95"][0] <= stats["spread95"][1]
        assert hi - lo < stats["spread95"][1] - stats["spread95"][0]
        assert len(stats["aucs"]) == 20
    assert result["sizes"][32]["mean"] > result["sizes"][4]["mean"]
    assert result["sizes"][32]["mean"] > 75
    assert "Student-t" in result["interval"]


def test_knn_classify_separable_clusters() -> None:
    rng = np.random.default_rng(9)
    centres = np.eye(3, 10) * 5
    train_y = np.repeat(np.arange(3), 30)
    test_y = np.repeat(np.arange(3), 10)
    train_x = centres[train_y] + rng.normal(scale=0.3, size=(90, 10))
    test_x = centres[test_y] + rng.normal(scale=0.3, size=(30, 10))
    pred, scores = probe.knn_classify(train_x, train_y, test_x, k=20, chunk_size=7)
    assert torch.equal(pred, torch.from_numpy(test_y))
    assert scores.shape == (30, 3)
    pred_small_k, _ = probe.knn_classify(train_x, train_y, test_x, k=200, num_classes=4)
    assert torch.equal(pred_small_k, torch.from_numpy(test_y))


def test_knn_multilabel_planted_signal() -> None:
    train_x, train_y = planted(400, seed=10, signal=4.0)
    test_x, test_y = planted(200, seed=11, signal=4.0)
    train_y[::3, 0] = np.nan
    result = probe.knn_multilabel(train_x, train_y, test_x, test_y, LABELS, k=20)
    assert result["mAUC"] > 75


def test_fewshot_ignores_unknown_labels_and_skips_sizes_the_pool_cannot_fill() -> None:
    rng = np.random.default_rng(12)
    train_y = np.array([0.0] * 40 + [1.0] * 6 + [math.nan] * 10)
    train_x = rng.normal(size=(56, 8))
    train_x[:, 0] += 3 * np.nan_to_num(train_y)
    test_y = np.array([0.0, 1.0] * 20 + [math.nan] * 4)
    test_x = rng.normal(size=(44, 8))
    test_x[:, 0] += 3 * np.nan_to_num(test_y)
    result = probe.fewshot(train_x, train_y, test_x, test_y, sizes=(4, 8, 16), draws=5, seed=0)
    assert set(result["sizes"]) == {4, 8}
    assert set(result["skipped"]) == {16} and "class 1" in result["skipped"][16]
    with pytest.raises(ValueError, match="no labelled-set size"):
        probe.fewshot(train_x, train_y, test_x, test_y, sizes=(32,), draws=5)
    with pytest.raises(ValueError, match="two classes"):
        probe.fewshot(train_x, train_y, test_x, np.zeros(44), draws=5)

"""Shared fixtures: tiny models and toy samples written by the tests themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spanlib.config import ModelConfig


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(
        arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=6, drop_path_rate=0.0
    )


def toy_samples(n: int = 32, size: int = 32, seed: int = 0):
    """Noise images whose ground truth is an unmistakable band at the image's left."""
    from spanlib.data import Sample

    rng = np.random.default_rng(seed)
    band = np.zeros((size, size), bool)
    band[:, : size * 3 // 8] = True
    out = []
    for i in range(n):
        img = (rng.random((size, size)) * 0.5).astype(np.float32)
        out.append(
            Sample(
                id=f"toy{i:03d}",
                image=img,
                masks={"left_lung": band[:, ::-1].copy(), "right_lung": band.copy(), "heart": band.copy()},
            )
        )
    return out


@pytest.fixture
def toy() -> list:
    return toy_samples()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

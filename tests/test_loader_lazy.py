"""Large sets are read lazily, and give the same views as the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spanlib.core.configs import ViewConfig
from spanlib.pretrain.augment import ViewMaker
from spanlib.pretrain.loader import ViewDataset

from conftest import toy_samples

ORGANS = ("left_lung", "right_lung", "heart")


class CountingSamples:
    """A sequence that counts how often each sample is read (as a lazy reader would)."""

    def __init__(self, samples):
        self.samples, self.reads = samples, []
        self.ids = [s.id for s in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.samples[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def maps_of(sample):
    return np.stack([sample.masks[o].astype(np.float32) for o in ORGANS])


def test_lazy_and_in_memory_views_are_identical():
    samples = toy_samples(n=6, size=32)
    views = ViewMaker(ViewConfig(kind="cxr"), 24, ORGANS, in_chans=1)
    eager = ViewDataset(samples, views, maps_of, seed=3, in_memory=True)
    lazy_source = CountingSamples(samples)
    lazy = ViewDataset(lazy_source, views, maps_of, seed=3, in_memory=False)
    assert lazy_source.reads == [] and lazy.ids == eager.ids and not lazy.images
    for key in [(0, 0), (0, 5), (2, 3)]:
        a, b = eager[key], lazy[key]
        for name in ("global", "global_maps"):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert lazy_source.reads == [0, 5, 3], "a lazy set reads only the samples asked for"


def test_large_sets_default_to_lazy(monkeypatch):
    import spanlib.pretrain.loader as loader

    monkeypatch.setattr(loader, "IN_MEMORY_LIMIT", 4)
    views = ViewMaker(ViewConfig(kind="cxr"), 24, ORGANS, in_chans=1)
    assert not ViewDataset(CountingSamples(toy_samples(n=5)), views, None, seed=0).in_memory
    assert ViewDataset(toy_samples(n=4), views, None, seed=0).in_memory


def test_lazy_map_size_mismatch_names_the_sample():
    views = ViewMaker(ViewConfig(kind="cxr"), 24, ORGANS, in_chans=1)
    bad = ViewDataset(toy_samples(n=2, size=32), views, lambda s: np.zeros((3, 16, 16), np.float32), 0, in_memory=False)
    with pytest.raises(ValueError, match="sample toy001: knowledge maps"):
        bad[(0, 1)]

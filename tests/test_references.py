"""The references an attention mAP is read against (spanlib.eval.references), pinned on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spanlib.eval.ap import patch_counts, upsample_nearest
from spanlib.eval.evaluate import attention_scores
from spanlib.eval.references import attention_references, grid_pool, mean_grid, score_as_attention


def _masks(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Discs of random centre and radius: organ-like blobs that straddle patch borders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.1, 0.3) * size
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    return np.stack(out)


@pytest.mark.parametrize("size, grid", [(64, 8), (50, 8), (30, (4, 6)), (6, 8)])
def test_pooling_a_mask_gives_its_share_of_positive_pixels_per_cell(size, grid):
    masks = torch.from_numpy(_masks(3, size))
    pos, neg = patch_counts(masks, grid)
    share = torch.where(pos + neg > 0, pos / (pos + neg).clamp(min=1), 0.0).float()
    assert torch.allclose(grid_pool(masks, grid), share, atol=1e-6)


def test_a_head_equal_to_the_pooled_mask_scores_the_oracle():
    test = _masks(6, 64, seed=1)
    refs = attention_references({"heart": list(test)}, {"heart": list(_masks(4, 64, seed=2))}, 8)
    head = grid_pool(test, 8)
    attention = torch.stack([torch.rand_like(head), head], 1)  # head 1 is the pooled mask
    scored = attention_scores(attention, {"heart": torch.from_numpy(test)}, {"heart": 1})
    assert scored["heart"]["mAP"] == pytest.approx(refs["oracle"]["heart"], abs=1e-9)
    # and no head on this grid does better on these films than the pooled mask
    for trial in range(5):
        other = grid_pool(test, 8) + 0.3 * torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(trial))
        assert score_as_attention(other, list(test)) <= refs["oracle"]["heart"] + 1e-9


def test_a_constant_map_scores_what_scikit_learn_gives():
    test = _masks(5, 40, seed=3)
    constant = torch.full((5, 8, 8), 0.25)
    expected = np.mean([average_precision_score(m.ravel(), np.full(m.size, 0.25)) for m in test]) * 100
    assert score_as_attention(constant, list(test)) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(test.mean(axis=(1, 2)).mean() * 100)


def test_the_mean_mask_is_one_fixed_map_scored_as_scikit_learn_scores_it():
    train, test = _masks(7, 64, seed=4), _masks(5, 64, seed=5)
    refs = attention_references({"lung": list(test)}, {"lung": list(train)}, 8)
    prior = train.astype(np.float64).reshape(7, 8, 8, 8, 8).mean(axis=(2, 4)).mean(0)  # area mean per 8x8 cell
    assert torch.allclose(mean_grid(list(train), 8), torch.from_numpy(prior).float(), atol=1e-6)
    pixels = upsample_nearest(torch.from_numpy(prior).float()[None], (64, 64))[0].numpy()
    expected = np.mean([average_precision_score(m.ravel(), pixels.ravel()) for m in test]) * 100
    assert refs["mean_mask"]["lung"] == pytest.approx(expected, abs=1e-6)


def test_a_knowledge_map_equal_to_the_mask_scores_the_oracle_and_a_wrong_one_less():
    test = _masks(4, 64, seed=6)
    shifted = np.roll(test, 20, axis=2)
    refs = attention_references({"heart": list(test)}, {"heart": list(test)}, 8,
                                maps={"deformable": {"heart": list(test)}, "triangular": {"heart": list(shifted)}})
    assert refs["maps"]["deformable"]["heart"] == pytest.approx(refs["oracle"]["heart"])
    assert refs["maps"]["triangular"]["heart"] < refs["oracle"]["heart"] - 10


def test_films_of_different_sizes_and_films_without_the_organ():
    big, small = _masks(2, 64, seed=7), _masks(2, 48, seed=8)
    empty = np.zeros((48, 48), dtype=bool)
    films = [big[0], small[0], empty, big[1], small[1]]
    refs = attention_references({"lung": films}, {"lung": films}, 8, maps={"global": {"lung": films}})
    by_hand = np.mean([score_as_attention(grid_pool([m], 8), [m]) for m in films if m.any()])
    assert refs["oracle"]["lung"] == pytest.approx(by_hand)
    assert refs["maps"]["global"]["lung"] == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="3 maps for 5 test films"):
        attention_references({"lung": films}, {}, 8, maps={"global": {"lung": films[:3]}})


def test_references_of_written_sets_read_the_stored_maps_of_each_test_film(tmp_path):
    """dataset_references reads a folder set's masks and a map store by film id."""
    from types import SimpleNamespace

    from spanlib.eval.references import dataset_references

    masks = _masks(5, 32, seed=9)
    test = [SimpleNamespace(id=f"t{i}", image=np.zeros((32, 32)), masks={"heart": m}) for i, m in enumerate(masks)]
    test.append(SimpleNamespace(id="t5", image=np.zeros((32, 32)), masks={}))  # no heart mask: skipped
    train = [SimpleNamespace(id=f"r{i}", masks={"heart": m}) for i, m in enumerate(_masks(4, 32, seed=10))]

    class Store:
        organs = ("left_lung", "heart")

        def maps_for(self, sample_id):
            i = int(sample_id[1:])
            heart = masks[i] if i < 5 else np.zeros((32, 32), bool)
            return np.stack([np.zeros((32, 32)), heart]).astype(np.float32)

    refs = dataset_references(test, train, 4, {"deformable": Store()})
    by_hand = attention_references({"heart": list(masks)}, {"heart": [t.masks["heart"] for t in train]}, 4,
                                   maps={"deformable": {"heart": list(masks)}})
    assert refs["oracle"] == pytest.approx(by_hand["oracle"])
    assert refs["maps"]["deformable"]["heart"] == pytest.approx(refs["oracle"]["heart"])
    assert refs["mean_mask"]["heart"] == pytest.approx(by_hand["mean_mask"]["heart"])

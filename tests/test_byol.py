"""Object-level BYOL ("Refine and Represent"): masks, pooling, K-means, loss, views, training and its cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spanlib.byol import (
    BYOL_STUDIES,
    BYOL_PRESETS,
    ByolConfig,
    ByolOptimConfig,
    ByolNetwork,
    ByolViews,
    best_iou,
    byol_config,
    byol_loss,
    byol_step,
    carry_masks,
    ensure_byol,
    kmeans,
    mask_pool,
    one_hot,
    refine_masks,
    slic_priors,
    train_byol,
    update_target,
)
from spanlib.byol.evaluate import mask_quality, segmentation_probe
from spanlib.byol.masks import label_areas
from spanlib.byol.train import build_networks

TINY = dict(image_size=16, widths=(4, 8), proj_hidden=8, proj_dim=4, n_segments=6, k=2, kmeans_iters=3,
            optim=ByolOptimConfig(epochs=2, batch_size=4, warmup_epochs=0), threads=1)


def blobs(n_per: int = 20, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight clusters of directions (for cosine K-means)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:3] * 5
    x = torch.cat([c + 0.05 * torch.randn(n_per, d, generator=g) for c in centres])
    return x, torch.arange(3).repeat_interleave(n_per)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a[:, None] == a[None]) == (b[:, None] == b[None])).all())


# ---------------------------------------------------------------- K-means


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    x, truth = blobs()
    assign, centres = kmeans(x, 3, iters=10, generator=torch.Generator().manual_seed(1))
    assert same_partition(assign, truth)
    assert centres.shape == (3, 5)
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(3))  # spherical: unit centres
    again, _ = kmeans(x, 3, iters=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(assign, again)


def test_kmeans_keeps_every_cluster_non_empty():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    assign, _ = kmeans(x, 7, iters=5)
    assert sorted(assign.tolist()) == list(range(7))  # k = N: one point per cluster


def test_kmeans_rejects_bad_input():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="k = 5"):
        kmeans(x, 5)
    with pytest.raises(ValueError, match="k = 0"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.full((4, 2), math.nan), 2)


# ---------------------------------------------------------------- mask pooling


def test_mask_pool_is_the_weighted_average():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 4, generator=g)
    masks = torch.rand(2, 5, 4, 4, generator=g)
    pooled, area = mask_pool(feats, masks)
    for b in range(2):
        for m in range(5):
            w = masks[b, m]
            expected = (feats[b] * w).sum(dim=(1, 2)) / w.sum()
            torch.testing.assert_close(pooled[b, m], expected)
            torch.testing.assert_close(area[b, m], w.sum())


def test_mask_pool_full_mask_is_global_pooling_and_masks_are_downsampled_by_area():
    feats = torch.randn(2, 3, 4, 4)
    pooled, area = mask_pool(feats, torch.ones(2, 1, 16, 16))
    torch.testing.assert_close(pooled[:, 0], feats.mean(dim=(2, 3)))
    torch.testing.assert_close(area, torch.full((2, 1), 16.0))
    fine = torch.zeros(1, 1, 8, 8)
    fine[..., :2, :1] = 1.0  # a quarter of feature cell (0, 0)... times two rows: half of it
    _, area = mask_pool(torch.randn(1, 3, 4, 4), fine)
    torch.testing.assert_close(area, torch.tensor([[0.5]]))


def test_label_areas_is_area_pooling_of_one_hot_masks():
    labels = torch.randint(0, 5, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(label_areas(labels, 5, (4, 4)), F.adaptive_avg_pool2d(one_hot(labels, 5), 4))
    with pytest.raises(ValueError, match="multiple"):
        label_areas(labels, 5, (5, 5))


def test_mask_pool_empty_mask_has_zero_area_and_zero_vector():
    pooled, area = mask_pool(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    assert float(area) == 0.0
    assert torch.equal(pooled, torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="multiple"):
        mask_pool(torch.randn(1, 3, 4, 4), torch.ones(1, 1, 6, 6))


# ---------------------------------------------------------------- refinement


def two_region_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features that differ between the left and right half; superpixels are 4x4 blocks of a 16x16 image."""
    feats = torch.zeros(2, 4, 8, 8)
    feats[:, 0, :, :4] = 1.0
    feats[:, 1, :, 4:] = 1.0
    feats += 0.01 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    blocks = (rows // 4) * 4 + cols // 4
    priors = blocks.expand(2, 16, 16).clone()
    half = (cols < 8).long().expand(2, 16, 16)
    return feats, priors, half


def test_refine_masks_cover_the_image_with_one_label_per_pixel():
    feats, priors, _ = two_region_batch()
    labels = refine_masks(feats, priors, k=3, iters=5, generator=torch.Generator().manual_seed(0))
    assert labels.shape == priors.shape and labels.dtype == torch.long
    assert int(labels.min()) >= 0 and int(labels.max()) < 3
    masks = one_hot(labels, 3)
    assert torch.equal(masks.sum(dim=1), torch.ones(2, 16, 16))  # cover, no overlap
    for b in range(2):  # a superpixel is never split
        for s in priors[b].unique():
            assert labels[b][priors[b] == s].unique().numel() == 1


def test_refine_masks_merges_superpixels_into_the_objects_of_the_features():
    feats, priors, half = two_region_batch()
    labels = refine_masks(feats, priors, k=2, generator=torch.Generator().manual_seed(0))
    assert same_partition(labels.flatten(), half.flatten())


def test_refine_masks_rejects_k_above_the_number_of_superpixels():
    feats, priors, _ = two_region_batch()  # 2 images x 16 superpixels
    with pytest.raises(ValueError, match="only 32 superpixels"):
        refine_masks(feats, priors, k=33)


def test_slic_priors_are_contiguous_labels():
    rng = np.random.default_rng(0)
    images = np.zeros((2, 32, 32), np.float32)
    images[:, 8:24, 8:24] = 1.0
    images += 0.05 * rng.random(images.shape, dtype=np.float32)
    priors = slic_priors(images, n_segments=8, compactness=0.1)
    assert priors.shape == images.shape and priors.dtype == np.int32
    for p in priors:
        assert np.array_equal(np.unique(p), np.arange(p.max() + 1))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        slic_priors(images[0], 8)


def test_best_iou_and_mask_quality():
    labels = np.zeros((4, 4), int)
    labels[:, 2:] = 1
    target = np.zeros((4, 4), bool)
    target[:, 3:] = True
    assert best_iou(labels, target) == pytest.approx(0.5)
    assert math.isnan(best_iou(labels, np.zeros((4, 4), bool)))
    assert mask_quality(labels[None], target[None, None], ["x"]) == {"x": pytest.approx(50.0)}


# ---------------------------------------------------------------- masks carried into views


def test_carry_masks_full_box_is_area_pooling_and_flip_flips():
    masks = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    out = carry_masks(masks, boxes, torch.tensor([False, True]), grid=4)
    pooled = F.adaptive_avg_pool2d(masks, 4)
    torch.testing.assert_close(out[0], pooled[0])
    torch.testing.assert_close(out[1], pooled[1].flip(-1))


def test_carry_masks_matches_cropping_then_pooling():
    masks = one_hot(torch.randint(0, 4, (1, 32, 32), generator=torch.Generator().manual_seed(0)), 4)
    left, top, width, height = 8, 4, 16, 24  # cells of 4x6 pixels on a 4x4 grid
    out = carry_masks(masks, torch.tensor([[left, top, left + width, top + height]], dtype=torch.float32),
                      torch.tensor([False]), grid=4)
    expected = F.adaptive_avg_pool2d(masks[..., top:top + height, left:left + width], 4)
    torch.testing.assert_close(out, expected, atol=0.06, rtol=0)  # bilinear samples vs exact areas
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 4, 4))  # one-hot masks still partition each cell


def test_views_keep_the_box_and_flip_that_carry_the_masks():
    cfg = ByolConfig(**{**TINY, "image_size": 32, "widths": (4, 8)}, jitter_p=0.0, blur_p=(0.0, 0.0),
                     solarize_p=(0.0, 0.0), mean=0.0, std=1.0)
    image = torch.zeros(1, 1, 32, 32)
    image[..., 4:20, 6:14] = 1.0  # the image is its own mask
    torch.manual_seed(3)
    for view, box, flip in ByolViews(cfg)(image.expand(6, -1, -1, -1)):
        assert view.shape == (6, 1, 32, 32) and box.shape == (6, 4) and flip.dtype == torch.bool
        carried = carry_masks(image.expand(6, -1, -1, -1), box, flip, grid=8)
        torch.testing.assert_close(F.adaptive_avg_pool2d(view, 8), carried, atol=0.12, rtol=0)


# ---------------------------------------------------------------- the loss and the EMA


def test_byol_loss_is_symmetric_and_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(5, 4, generator=g) for _ in range(4))
    loss = byol_loss(p1, p2, z1, z2)
    expected = (2 - 2 * F.cosine_similarity(p1, z2)).mean() + (2 - 2 * F.cosine_similarity(p2, z1)).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(byol_loss(p2, p1, z2, z1), loss)  # the two views swapped
    assert 0.0 <= float(loss) <= 8.0
    torch.testing.assert_close(byol_loss(z2, z1, z1, z2), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(byol_loss(-z2, -z1, z1, z2), torch.tensor(8.0))


def test_byol_loss_sends_no_gradient_to_the_target_and_handles_no_masks():
    p1, p2 = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    z1, z2 = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    byol_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and z1.grad is None and z2.grad is None
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = byol_loss(empty, empty, empty, empty)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="one"):
        byol_loss(p1, p2[:2], z1, z2)


def test_object_loss_with_one_global_mask_is_plain_byol():
    """Global pooling is mask pooling with one all-ones mask: the loss equals BYOL's on pooled features."""
    torch.manual_seed(0)
    net = ByolNetwork((4, 8), 8, 4)
    target = ByolNetwork((4, 8), 8, 4, predictor=False)
    v1, v2 = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    _, a = net.encoder(v1)
    _, b = net.encoder(v2)
    _, ta = target.encoder(v1)
    _, tb = target.encoder(v2)
    ones = torch.ones(3, 1, 4, 4)
    via_masks = byol_loss(net.heads(mask_pool(a, ones)[0][:, 0]), net.heads(mask_pool(b, ones)[0][:, 0]),
                          target.heads(mask_pool(ta, ones)[0][:, 0]), target.heads(mask_pool(tb, ones)[0][:, 0]))
    p1, p2 = net.heads(a.mean(dim=(2, 3))), net.heads(b.mean(dim=(2, 3)))
    z1, z2 = target.heads(ta.mean(dim=(2, 3))), target.heads(tb.mean(dim=(2, 3)))
    plain = (2 - 2 * F.cosine_similarity(p1, z2)).mean() + (2 - 2 * F.cosine_similarity(p2, z1)).mean()
    torch.testing.assert_close(via_masks, plain)


def test_update_target_is_an_ema_and_copies_buffers():
    online, target = build_networks(ByolConfig(**TINY))
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.encoder.stem[1].running_mean.fill_(3.0)
    before = [p.clone() for p in target.encoder.parameters()]
    update_target(target, online, 0.9)
    for t, b, o in zip(target.encoder.parameters(), before, online.encoder.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert torch.equal(target.encoder.stem[1].running_mean, online.encoder.stem[1].running_mean)
    assert target.predictor is None and all(not p.requires_grad for p in target.parameters())


# ---------------------------------------------------------------- config


def test_presets_are_valid_configs_and_round_trip():
    for name in BYOL_PRESETS:
        cfg = byol_config(name)
        assert ByolConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert cfg.k in BYOL_STUDIES[name].ablation_k
    assert byol_config("smoke", k=3).k == 3
    with pytest.raises(ValueError, match="unknown BYOL preset"):
        byol_config("huge")
    with pytest.raises(ValueError, match="unknown ByolConfig fields"):
        ByolConfig.from_dict({"kk": 1})
    with pytest.raises(ValueError, match="pooling"):
        ByolConfig(pooling="mean")
    with pytest.raises(ValueError, match="divisible"):
        ByolConfig(image_size=60)


# ---------------------------------------------------------------- training


def tiny_data(n: int = 8, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 1, size, size), np.float32)
    images[:, :, 4:12, 2:8] = 0.8
    images += 0.2 * rng.random(images.shape, dtype=np.float32)
    return images, slic_priors(images[:, 0], 6, 0.1)


def test_byol_step_object_superpixel_and_global():
    images, priors = tiny_data(4)
    most = {"object": TINY["k"], "superpixel": int(priors.max()) + 1, "global": 1}
    for pooling in ("object", "superpixel", "global"):
        cfg = ByolConfig(**TINY, pooling=pooling)
        online, target = build_networks(cfg)
        loss, stats = byol_step(online, target, ByolViews(cfg), torch.as_tensor(images), torch.as_tensor(priors).long(),
                                cfg, torch.Generator().manual_seed(0))
        assert loss.requires_grad and 0.0 < float(loss.detach()) <= 8.0
        assert 1.0 <= stats["masks"] <= stats["objects"] <= most[pooling]
    with pytest.raises(ValueError, match="priors"):
        byol_step(online, target, ByolViews(cfg), torch.as_tensor(images), None, ByolConfig(**TINY))
    with pytest.raises(ValueError, match="priors"):
        train_byol(ByolConfig(**TINY, pooling="superpixel"), images, None, "unused")


def test_training_resumes_to_the_same_weights_and_the_cache_is_reused(tmp_path):
    images, priors = tiny_data()
    cfg = ByolConfig(**TINY)
    full = train_byol(cfg, images, priors, tmp_path / "full")
    assert full["steps"] == full["total_steps"] == 4
    train_byol(cfg, images, priors, tmp_path / "cut", max_steps=2)
    assert not (tmp_path / "cut" / "done.json").exists()
    resumed = train_byol(cfg, images, priors, tmp_path / "cut")
    assert resumed["resumed_from"] == 2
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for key in ("online", "target"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], msg=f"{key}.{name}")
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]

    run = ensure_byol(cfg, images, priors, tmp_path / "runs")
    stamp = (run.path / "done.json").stat().st_mtime_ns
    again = ensure_byol(cfg, images, priors, tmp_path / "runs")
    assert again.path == run.path and (again.path / "done.json").stat().st_mtime_ns == stamp
    other = ensure_byol(cfg.replace(pooling="global"), images, None, tmp_path / "runs")
    assert other.path != run.path and other.config.pooling == "global"


def test_segmentation_probe_learns_a_linearly_separable_map():
    g = torch.Generator().manual_seed(0)
    masks = np.zeros((12, 1, 16, 16), bool)
    for i in range(12):
        masks[i, 0, :, (i % 4) * 4:(i % 4) * 4 + 8] = True
    cells = torch.as_tensor(masks[:, :, ::4, ::4].copy()).float()
    maps = torch.cat([cells, torch.randn(12, 2, 4, 4, generator=g) * 0.1], dim=1)
    res = segmentation_probe(maps[:8], masks[:8], maps[8:], masks[8:], ["band"], steps=200)
    assert res["iou"]["band"] > 80.0
    assert res["prediction"].shape == (4, 1, 16, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_cuda(tmp_path):
    images, priors = tiny_data()
    summary = train_byol(ByolConfig(**TINY), images, priors, tmp_path / "cuda", device="cuda")
    assert summary["device"].startswith("cuda") and summary["steps"] == 4


def test_standard_errors():
    from spanlib.byol.evaluate import auc_standard_error, mean_auc_standard_error, paired_standard_error

    # Hanley and McNeil (1982): AUC 0.9 with 50 positives and 50 negatives has a standard error of about 0.032.
    assert auc_standard_error(90.0, 50, 50) == pytest.approx(3.2, abs=0.05)
    labels = np.array([[1, 0], [0, 1], [1, np.nan], [0, 0]] * 25, float)
    single = auc_standard_error(80.0, 50, 50)
    assert mean_auc_standard_error({"a": 80.0, "b": math.nan}, labels, ["a", "b"]) == pytest.approx(single)
    a = np.array([1.0, 2.0, 3.0, np.nan])
    assert paired_standard_error(a, np.zeros(4)) == pytest.approx(1.0 / math.sqrt(3))
    with pytest.raises(ValueError):
        auc_standard_error(80.0, 0, 5)


def test_probe_encoder_caches_its_scores(tmp_path):
    from spanlib.byol.data import ByolData
    from spanlib.byol.evaluate import probe_encoder

    rng = np.random.default_rng(0)
    images = rng.random((12, 1, 16, 16), dtype=np.float32)
    masks = np.zeros((12, 1, 16, 16), bool)
    masks[:, :, 4:12, 4:12] = True
    labels = np.array([[i % 2] for i in range(12)], float)
    split = ByolData(tuple(f"s{i}" for i in range(12)), images, masks, labels, ("organ",), ("finding",), "toy")
    cfg = ByolConfig(**TINY)
    encoder = build_networks(cfg)[0].encoder
    first = probe_encoder(encoder, split, split, cfg, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("probes-*.json"))) == 1
    again = probe_encoder(None, split, split, cfg, cache_dir=tmp_path)  # read back, the encoder is not touched
    assert again["mAUC"] == pytest.approx(first["mAUC"]) and again["iou"] == pytest.approx(first["iou"])
    np.testing.assert_allclose(again["per_image"], first["per_image"])


def test_the_chapter_steps_on_a_written_set(tmp_path, monkeypatch):
    """The Refine and Represent chapter's functions, on a small folder of phantoms (``data`` given)."""
    import spanlib.book.byol as chapter
    from spanlib.data import CHEST_ORGANS, ChestConfig, make_chest_phantom, write_folder_dataset

    films = [make_chest_phantom(i, seed=2, config=ChestConfig(image_size=64), split="train" if i < 8 else "test")
             for i in range(12)]
    root = write_folder_dataset(tmp_path / "films", films, {"kind": "chest", "mask_names": list(CHEST_ORGANS)})
    monkeypatch.setattr(chapter, "runs_dir", lambda preset: tmp_path / "runs" / preset)
    d = chapter.chapter_data("smoke", data=str(root))
    assert (len(d.train), len(d.test)) == (8, 4) and d.train_priors.shape[0] == 8
    assert d.cache == tmp_path / "runs" / "smoke" / "byol" / "cache"
    assert chapter.setup_table(d).loc["training images", "value"] == 8
    runs = chapter.chapter_runs(d)
    assert {"plain BYOL", "superpixels", d.main_run} <= set(runs)
    refined = chapter.refined_test_masks(d, runs)
    assert set(refined) == {n for n, r in runs.items() if r.config.pooling == "object"}
    batch = d.refine_batch
    assert all(labels.shape[0] == batch.stop for labels in refined.values())
    quality = chapter.mask_qualities(d, refined)
    assert set(quality) == {"SLIC priors", *refined}
    probes = chapter.chapter_probes(d, runs)
    assert {"random init", *runs} == set(probes)
    auc_se, iou_se = chapter.reading_errors(d, probes)
    assert set(iou_se) == {"plain BYOL", "random init", "superpixels"} and auc_se >= 0

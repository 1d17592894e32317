"""The attention study: NCE loss against a hand computation, views, training, scoring, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spanlib import attention_study as A
from spanlib.book.shapes import run_study
from spanlib.core.configs import DinoConfig
from spanlib.data.digits import STREAM, DigitsConfig, DigitSource, make_cluttered_digit
from spanlib.model.dino import DINOLoss


def _source(n: int = 30, seed: int = 0) -> DigitSource:
    """Digit-like images: a random thick stroke in the 20 x 20 box of a 28 x 28 image."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        r, c = rng.integers(4, 14, 2)
        images[i, r : r + 10, c : c + 3] = 1.0
        images[i, r + 8 : r + 11, c : c + 9] = rng.uniform(0.6, 1.0)
    return DigitSource(images, np.arange(n) % 10, "test strokes")


CONFIG = DigitsConfig(canvas=64)


@pytest.fixture
def renderer() -> A.CanvasRenderer:
    return A.CanvasRenderer(_source(), np.arange(30), CONFIG)


FLAT = {"steps": "optim.epochs", "img_size": "model.img_size", "patch_size": "model.patch_size",
        "lr": "optim.lr", "batch_size": "optim.batch_size"}


def _tiny(**changes) -> A.StudyConfig:
    return A.study_preset("smoke").base.replace(**{FLAT.get(k, k): v for k, v in changes.items()})


# ---------------------------------------------------------------------------- NCE


def test_nt_xent_matches_hand_computation_on_two_pairs():
    # views a0 = b0 = e1, a1 = b1 = e2, T = 1: every anchor sees its positive at
    # cosine 1 and the two other embeddings at cosine 0, so each term is
    # -log(e / (e + 1 + 1)) = log(1 + 2 / e).
    eye = torch.eye(2)
    loss = A.nt_xent(eye, eye.clone(), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


def test_nt_xent_matches_an_explicit_loop_over_pairs():
    gen = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(4, 5, generator=gen, dtype=torch.float64), torch.randn(4, 5, generator=gen, dtype=torch.float64)
    temperature = 0.3
    z = [v / v.norm() for v in torch.cat([z_a, z_b])]
    n = len(z_a)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = {k: float(z[i] @ z[k]) / temperature for k in range(2 * n) if k != i}
        assert len(sims) == 2 * n - 1  # the positive and 2N - 2 negatives
        total += -math.log(math.exp(sims[positive]) / sum(math.exp(s) for s in sims.values()))
    expected = total / (2 * n)
    assert A.nt_xent(z_a, z_b, temperature).item() == pytest.approx(expected, rel=1e-10)


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped_ones():
    z = torch.eye(6)[:3] * 5
    assert A.nt_xent(z, z, 0.1) < A.nt_xent(z, z.roll(1, 0), 0.1)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        A.nt_xent(torch.ones(1, 3), torch.ones(1, 3), 0.1)
    with pytest.raises(ValueError, match="one shape"):
        A.nt_xent(torch.ones(2, 3), torch.ones(2, 4), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        A.nt_xent(torch.ones(2, 3), torch.ones(2, 3), 0.0)


def test_branch_nce_loss_averages_every_pair_of_crops():
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 4, generator=gen) for _ in range(2)]
    b = [torch.randn(3, 4, generator=gen) for _ in range(2)]
    expected = sum(A.nt_xent(x, y, 0.2) for x in a for y in b) / 4
    assert torch.allclose(A.branch_nce_loss(a, b, 0.2), expected)


def test_branch_dino_loss_with_one_crop_equals_dino_loss():
    cfg = DinoConfig(out_dim=8)
    loss_fn = DINOLoss(cfg, n_crops=2, epochs=1)
    loss_fn.center.normal_(generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    student = [torch.randn(4, 8, generator=gen) for _ in range(2)]
    teacher = [torch.randn(4, 8, generator=gen) for _ in range(2)]
    ours = A.branch_dino_loss(loss_fn, student[:1], student[1:], teacher[:1], teacher[1:])
    reference = loss_fn(torch.cat(student), torch.cat(teacher), 0)
    assert torch.allclose(ours, reference, atol=1e-6)


# ---------------------------------------------------------------------------- views


def test_renderer_draws_like_the_dataset_generator():
    source, pool = _source(), np.arange(30)
    sample = make_cluttered_digit(7, 0, source, CONFIG, pool=pool)
    rng = np.random.default_rng([0, STREAM, 7])
    chosen = int(pool[rng.integers(len(pool))])  # the generator's first draw
    canvas = A.CanvasRenderer(source, pool, CONFIG).render(chosen, rng)
    assert np.array_equal(canvas.digit, sample.masks["digit"])
    assert np.allclose(canvas.image, sample.image, atol=0.5 / 255 + 1e-6)


def test_digit_only_views_share_the_digit_and_nothing_else(renderer):
    rng = np.random.default_rng(0)
    digit = 4
    image = renderer.source.images[digit]
    moved = 0
    for _ in range(5):
        a, b = renderer.pair(digit, "digit_only", rng)
        for canvas in (a, b):
            # the same digit image, whole, somewhere on the canvas
            rows, cols = np.nonzero(canvas.digit)
            box = np.nonzero(image > CONFIG.mask_threshold)
            r0, c0 = rows.min() - box[0].min(), cols.min() - box[1].min()
            assert np.array_equal(canvas.digit[r0 : r0 + 28, c0 : c0 + 28], image > CONFIG.mask_threshold)
            assert np.all(canvas.image[r0 : r0 + 28, c0 : c0 + 28] >= np.round(image * 255) / 255 - 1e-6)
        moved += not np.array_equal(a.digit, b.digit)
        assert not np.array_equal(a.clutter, b.clutter)  # fresh clutter
        assert not np.array_equal(a.image, b.image)
    assert moved >= 4  # the digit is re-placed (it may land on the same spot by chance)


def test_same_views_share_one_canvas(renderer):
    a, b = renderer.pair(3, "same", np.random.default_rng(0))
    assert a is b
    with pytest.raises(ValueError, match="views must be one of"):
        renderer.pair(3, "shuffled", np.random.default_rng(0))


def test_renderer_rejects_bad_pools():
    with pytest.raises(ValueError, match="non-empty"):
        A.CanvasRenderer(_source(), np.array([], int), CONFIG)
    with pytest.raises(ValueError, match="pool indices"):
        A.CanvasRenderer(_source(), np.array([0, 99]), CONFIG)


@pytest.mark.parametrize("crops", [1, 2])
def test_make_views_shapes(renderer, crops):
    cfg = _tiny(crops=crops, img_size=32)
    a, b = A.make_views(renderer, [0, 1, 2], cfg, np.random.default_rng(0))
    assert len(a) == len(b) == crops
    assert all(v.shape == (3, 1, 32, 32) for v in a + b)
    assert all(torch.isfinite(v).all() for v in a + b)


def test_study_config_rejects_bad_values():
    with pytest.raises(ValueError, match="loss must be one of"):
        A.StudyConfig(loss="byol")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        A.StudyConfig.from_dict({"model": {"img_size": 60, "patch_size": 8}})
    with pytest.raises(ValueError, match="crop_scale"):
        A.StudyConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="no fields"):
        A.StudyConfig().replace(heads=3)
    with pytest.raises(ValueError, match="unknown attention-study preset"):
        A.study_preset("huge")


def test_presets_are_valid_and_cover_the_factors():
    for name, study in A.PRESETS.items():
        configs = [study.config(v.name) for v in study.variants]
        assert {c.loss for c in configs} == set(A.LOSSES), name
        assert {c.views for c in configs} == set(A.VIEW_MODES), name
        assert {c.crops for c in configs} == {1, 2, 4}, name
        grids = {v.name: study.config(v.name).grid for v in study.variants}
        for variant in study.comparisons["resolution and patch size"][1:]:
            assert grids[variant] != study.base.grid, (name, variant)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss", A.LOSSES)
def test_a_tiny_training_run_gives_finite_losses(renderer, loss):
    cfg = _tiny(loss=loss, crops=2, steps=2)
    trained = A.train_variant(cfg, renderer, log_every=1)
    assert [r["step"] for r in trained.log] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in trained.log)
    att = A.attention_maps(trained.backbone, cfg, np.zeros((2, 64, 64), np.float32))
    assert att.shape == (2, cfg.model.num_heads, cfg.grid, cfg.grid)


def test_batches_are_the_same_in_a_worker_process_and_in_process(renderer):
    cfg = _tiny(steps=2)
    one = A.train_variant(cfg, renderer, num_threads=2, data_worker=True)
    two = A.train_variant(cfg, renderer, num_threads=1, data_worker=False)
    assert [r["loss"] for r in one.log] == pytest.approx([r["loss"] for r in two.log], rel=1e-5)


def test_training_is_seeded_and_leaves_the_global_rng_alone(renderer):
    cfg = _tiny(steps=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    one = A.train_variant(cfg, renderer)
    assert torch.equal(torch.get_rng_state(), before)
    two = A.train_variant(cfg, renderer)
    for p, q in zip(one.backbone.parameters(), two.backbone.parameters()):
        assert torch.equal(p, q)


def test_cached_variant_is_loaded_and_a_changed_config_retrains(renderer, tmp_path):
    cfg = _tiny(steps=1)
    meta = {"generator": "spanlib.data.digits", "seed": 0, "source": "test strokes"}
    first = A.ensure_variant("v", cfg, renderer, meta, tmp_path)
    again = A.ensure_variant("v", cfg, renderer, meta, tmp_path)
    assert not first.cached and again.cached
    for p, q in zip(first.backbone.parameters(), again.backbone.parameters()):
        assert torch.equal(p, q)
    changed = A.ensure_variant("v", cfg.replace(**{"optim.lr": cfg.optim.lr / 2}), renderer, meta, tmp_path)
    assert not changed.cached
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    messages = []
    again = A.ensure_variant("v", cfg.replace(**{"optim.lr": cfg.optim.lr / 2}), renderer, meta, tmp_path, progress=messages.append)
    assert not again.cached and "unusable" in messages[0]


def test_training_renderer_refuses_digits_from_another_source():
    meta = {"generator": "spanlib.data.digits", "seed": 0, "source": "somewhere else", "config": {"canvas": 64}}
    with pytest.raises(ValueError, match="regenerate the data"):
        A.training_renderer(meta, _source())
    with pytest.raises(ValueError, match="generated cluttered digits"):
        A.training_renderer({"generator": "spanlib.data.phantoms"}, _source())


# ---------------------------------------------------------------------------- scoring


def _eval_set(renderer, n: int = 4) -> A.EvalSet:
    rng = np.random.default_rng(1)
    canvases = [renderer.render(i, rng) for i in range(n)]
    images = np.stack([c.image for c in canvases])
    digit = np.stack([c.digit for c in canvases])
    return A.EvalSet(tuple(f"s{i}" for i in range(n)), images, digit, (images > A.INK_THRESHOLD) & ~digit)


def test_attention_on_the_digit_scores_top_marks(renderer):
    ev = _eval_set(renderer)
    on_digit = torch.from_numpy(ev.digit).float()[:, None]  # a "grid" as fine as the canvas
    flat = torch.ones_like(on_digit)
    scores = A.score_attention(torch.cat([on_digit, flat], 1), ev)
    assert np.allclose(scores["ap"][:, 0], 1.0)
    assert np.all(scores["pointing"][:, 0] == 1.0)
    assert np.allclose(scores["clutter_ap"][:, 0], 1.0)
    assert np.allclose(scores["digit_mass"][:, 0], 1.0) and np.allclose(scores["clutter_mass"][:, 0], 0.0)
    reference = A.uniform_reference(ev)
    for metric in ("ap", "clutter_ap", "digit_mass", "clutter_mass"):
        assert np.nanmean(scores[metric][:, 1]) * 100 == pytest.approx(reference[metric]), metric


def test_mass_share_spreads_a_patch_over_its_pixels():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2, :1] = True  # two of the four pixels of the top-left 2 x 2 patch
    attention = torch.tensor([[[[3.0, 1.0], [0.0, 0.0]]]])  # [1, 1, 2, 2]
    assert A.mass_share(attention, masks).item() == pytest.approx(3.0 * 0.5 / 4.0)


def test_digit_vs_clutter_ap_equals_scikit_learn_on_ink_pixels(renderer):
    ev = _eval_set(renderer, n=3)
    attention = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = A.digit_vs_clutter_ap(attention, ev).numpy()
    up = torch.nn.functional.interpolate(attention[:, None], size=ev.digit.shape[-2:], mode="nearest")[:, 0].numpy()
    for i in range(3):
        keep = ev.digit[i] | ev.clutter[i]
        assert ours[i] == pytest.approx(average_precision_score(ev.digit[i][keep], up[i][keep]))


def test_load_eval_set_needs_a_digit_mask():
    from spanlib.data import Sample

    with pytest.raises(ValueError, match="no 'digit' mask"):
        A.load_eval_set([Sample(id="x", image=np.zeros((8, 8), np.float32), masks={})])
    with pytest.raises(ValueError, match="no samples"):
        A.load_eval_set([])


# ---------------------------------------------------------------------------- end to end


def test_run_study_end_to_end_on_written_data(tmp_path):
    from spanlib.data import generate_dataset

    source = _source()
    data = generate_dataset("digits", tmp_path / "digits", {"train": 4, "val": 3, "test": 3}, CONFIG, source=source)
    base = _tiny(steps=1)
    study = A.StudyPreset(
        base=base,
        variants=(A.Variant("untrained", "untrained", {"optim.epochs": 0}), A.Variant("nce", "NCE", {"loss": "nce"})),
        comparisons={"all": ("untrained", "nce")},
        n_eval=3,
        n_show=1,
    )
    results = run_study(study, data=data, cache_root=tmp_path / "runs", source=source, progress=None)
    table = results.table()
    assert list(table.index) == ["untrained", "NCE"]
    assert results.data_source == "test strokes"
    assert set(results.headline()) == {"untrained", "nce"}
    lines = results.description(tmp_path).splitlines()
    assert lines[0] == "digits: test strokes" and lines[1].startswith("canvases: digits (3 test and 3 validation")
    assert f"patch {base.model.patch_size}" in lines[2] and results.wall_s > 0 and "trained or loaded in" in lines[3]
    from spanlib.attention_study.figures import comparison_figure, head_bar_figure, training_figure

    assert comparison_figure(results, ["untrained", "nce"]).axes
    assert head_bar_figure(results, ["untrained", "nce"]).axes
    with pytest.raises(ValueError, match="no monitored scores"):
        training_figure(results, ["nce"])

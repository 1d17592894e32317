"""Figures of :mod:`spanlib.figures.attention` and :mod:`spanlib.figures.training`: axes counts, the mass threshold, no pyplot state."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from spanlib.figures import attention as viz
from spanlib.figures import style, training

SIZE, GRID = 32, 4


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    """Every figure is built without pyplot: none may be left in its registry."""
    before = dict(matplotlib.rcParams)
    yield
    assert plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == before, "a viz function changed the global rcParams"


def _render(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((SIZE, SIZE)).astype(np.float32)


def _masks() -> dict[str, np.ndarray]:
    left = np.zeros((SIZE, SIZE), bool)
    left[4:28, 18:28] = True
    right = np.zeros((SIZE, SIZE), bool)
    right[4:28, 4:14] = True
    heart = np.zeros((SIZE, SIZE), bool)
    heart[20:30, 12:20] = True
    return {"left_lung": left, "right_lung": right, "heart": heart}


def _attention(heads: int = 3, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).random((heads, GRID, GRID)) + 0.01
    return (a / a.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def _attention_layer(figure: Figure) -> list:
    return [im for ax in figure.axes for im in ax.images if im.get_gid() == "attention"]


def test_overlay_heat_map_is_nearest_upsampled_attention():
    attention = _attention()[0]
    figure = viz.attention_overlay(_image(), attention, masks=_masks(), knowledge_map=_masks()["left_lung"])
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 1
    (layer,) = _attention_layer(figure)
    heat = np.asarray(layer.get_array())
    cell = SIZE // GRID
    np.testing.assert_allclose(heat, np.kron(attention, np.ones((cell, cell))), rtol=0, atol=0)
    assert _render(figure).startswith(b"\x89PNG")


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_overlay_threshold_keeps_that_share_of_the_mass(threshold):
    attention = _attention()[1]
    figure = viz.attention_overlay(_image(), attention, masks=_masks(), threshold=threshold)
    (layer,) = _attention_layer(figure)
    shaded = ~np.ma.getmaskarray(layer.get_array())
    cell = SIZE // GRID
    kept_patches = shaded[::cell, ::cell]
    np.testing.assert_array_equal(shaded, np.kron(kept_patches, np.ones((cell, cell), bool)))
    share = attention[kept_patches].sum() / attention.sum()
    assert share >= threshold - 1e-6
    # the smallest such set: without its weakest patch the kept share falls short
    weakest = attention[kept_patches].min()
    assert (share - weakest / attention.sum()) < threshold
    # and it is made of the strongest patches
    assert attention[kept_patches].min() >= attention[~kept_patches].max(initial=0.0)
    _render(figure)


def test_overlay_threshold_zero_is_a_heat_map_and_bad_threshold_fails():
    attention = _attention()[0]
    (layer,) = _attention_layer(viz.attention_overlay(_image(), attention, threshold=0.0))
    assert not np.ma.is_masked(layer.get_array())
    with pytest.raises(ValueError, match="threshold"):
        viz.attention_overlay(_image(), attention, threshold=1.5)
    with pytest.raises(ValueError, match="one attention map"):
        viz.attention_overlay(_image(), _attention())


def test_overlay_draws_into_given_axes():
    figure = Figure()
    axes = figure.subplots(1, 2)
    out = viz.attention_overlay(_image(), _attention()[0], ax=axes[1], title="here")
    assert out is figure
    assert len(figure.axes) == 2
    assert axes[1].get_title() == "here" and _attention_layer(figure)


def test_overlay_outlines_masks_and_dashed_knowledge_map():
    figure = viz.attention_overlay(_image(), _attention()[0], masks=_masks(), knowledge_map=_masks()["heart"])
    ax = figure.axes[0]
    # three organ outlines and one knowledge-map outline
    assert len(ax.collections) == 4
    styles = [c.get_linestyle()[0] for c in ax.collections]
    assert sum(1 for offset, dashes in styles if dashes) == 1


def test_attention_grid_has_one_axes_per_image_and_head():
    images = [_image(0), _image(1)]
    attention = np.stack([_attention(6, 0), _attention(6, 1)])
    figure = viz.attention_grid(images, attention, masks=[_masks(), _masks()], head_names={0: "left_lung", 1: "right_lung"},
                                knowledge_maps=[{0: _masks()["left_lung"]}, None], row_labels=["a", "b"])
    assert len(figure.axes) == 2 * 6
    assert figure.axes[0].get_title() == "head 0: left_lung"
    assert figure.axes[3].get_title() == "head 3"
    # an assigned head is outlined with its organ only (+ its knowledge map); others with every organ
    assert len(figure.axes[0].collections) == 2
    assert len(figure.axes[3].collections) == 3
    _render(figure)
    subset = viz.attention_grid(images, attention, heads=[2, 4], threshold=0.6)
    assert len(subset.axes) == 4
    _render(subset)


def test_attention_grid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="images"):
        viz.attention_grid([_image()], np.stack([_attention(), _attention()]))
    with pytest.raises(ValueError, match="heads"):
        viz.attention_grid([_image()], _attention()[None], heads=[7])


def test_regimen_comparison_uses_assigned_or_best_head():
    masks = _masks()
    # a baseline whose head 2 looks exactly at the heart, head 1 at the right lung
    baseline = np.full((3, GRID, GRID), 0.01, np.float32)
    baseline[2, 2:4, 1:3] = 1.0  # patches of rows 16-31, columns 8-23: around the heart
    baseline[1, 0:4, 0:2] = 1.0  # columns 0-15: the right lung
    attentions = {"span": _attention(3, 0), "dino": baseline}
    assigned = {"span": {"left_lung": 0, "right_lung": 1, "heart": 2}}
    figure = viz.regimen_comparison(_image(), attentions, masks, assigned_heads=assigned,
                                    knowledge_maps={"heart": masks["heart"]})
    assert len(figure.axes) == 3 * 2
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "span\nhead 0 (assigned)"
    assert titles[3] == "head 1 (best)"  # right lung row, DINO column
    assert titles[5] == "head 2 (best)"  # heart row, DINO column
    assert viz.best_head(baseline, masks["heart"]) == 2
    _render(figure)
    assert len(viz.regimen_comparison(_image(), attentions, masks, organs=["heart"]).axes) == 2


def test_training_curves_one_axes_per_metric():
    span = [{"step": s, "loss": 3 - s * 0.1, "dino_loss": 2.5, "span_loss": 0.4, "inside_share": 0.1 * s,
             "teacher_entropy": 2.0, "embed_std": 0.4} for s in range(1, 6)]
    span.insert(2, {"event": "checkpoint", "step": 2, "param_checksums": [1.0]})
    dino = [{"step": s, "loss": 3.0, "dino_loss": 3.0, "span_loss": 0.0, "teacher_entropy": 2.1, "embed_std": 0.5}
            for s in range(1, 6)]
    figure = training.training_curves({"span": span, "dino": dino})
    assert len(figure.axes) == len(training.TRAINING_METRICS)
    by_title = {ax.get_title(): ax for ax in figure.axes}
    assert len(by_title["inside share"].lines) == 1  # DINO logs no inside share
    assert len(by_title["loss"].lines) == 2
    np.testing.assert_array_equal(by_title["loss"].lines[0].get_xdata(), [1, 2, 3, 4, 5])
    _render(figure)
    import pandas as pd

    frame = pd.DataFrame(span + dino[:1]).to_dict("records")  # numpy scalars, NaN for absent keys and event columns
    from_frame = training.training_curves({"run": frame})
    assert len({ax.get_title(): ax for ax in from_frame.axes}["loss"].lines[0].get_xdata()) == 6
    two = training.training_curves({"span": span}, metrics=["loss", "lr"])
    assert len(two.axes) == 2
    assert [t.get_text() for t in two.axes[1].texts] == ["not logged"]


def test_style_is_applied_inside_the_figure_only():
    figure = training.training_curves({"a": [{"step": 1, "loss": 1.0}]}, metrics=["loss"])
    assert figure.axes[0].title.get_fontsize() == style.STYLE["axes.titlesize"]
    assert figure.dpi == style.STYLE["figure.dpi"]


def test_figures_display_as_png_without_pyplot():
    """A returned figure must show as an image in a kernel where pyplot was never imported."""
    from IPython.core.formatters import DisplayFormatter

    figure = viz.attention_overlay(_image(), _attention()[0])
    assert isinstance(figure, style.BookFigure)
    data, _ = DisplayFormatter().format(figure)
    assert data["image/png"].startswith(b"\x89PNG")
    assert style.figure_png(figure) == figure._repr_png_()


def test_masks_for_head_keeps_the_named_organ_only():
    masks = _masks()
    assert list(viz.masks_for_head(masks, 0, {0: "heart"})) == ["heart"]
    assert viz.masks_for_head(masks, 1, {0: "heart"}) is masks
    assert viz.masks_for_head(None, 0, {0: "heart"}) is None

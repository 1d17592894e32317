"""The attention browser, driven from Python as a user drives its widgets."""

from __future__ import annotations

import base64
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from traitlets import TraitError

from spanlib.pretrain.augment import ViewMaker
from spanlib.book.browser import ALL_HEADS, AttentionBrowser, static_browser_figure
from spanlib.core.configs import resolve
from spanlib.data import FolderDataset, make_default_data
from spanlib.eval.evaluate import load_backbone
from spanlib.maps.heuristic import triangular_maps
from spanlib.pretrain.train import pretrain
from spanlib.model.vit import cls_attention


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Smoke data and three tiny untrained runs (``run.train=false``: saved at initialisation).

    Training is tested elsewhere; the browser needs checkpoints of different
    weights and shapes, and a run with assigned heads and knowledge maps.
    """
    root = tmp_path_factory.mktemp("browser")
    data = make_default_data("smoke", root / "data")["chest"]
    runs = {"span": root / "span", "deep": root / "deep", "plain": root / "plain"}
    pretrain(resolve("smoke", "span_triangular", {"run.data": str(data), "run.train": False}), runs["span"])
    # another architecture, so that switching runs must change the head and block controls
    pretrain(resolve("smoke", "random", {"run.data": str(data), "run.seed": 1, "model.depth": 3, "model.num_heads": 4}),
             runs["deep"])
    pretrain(resolve("smoke", "random", {"run.data": str(data), "run.seed": 2}), runs["plain"])
    return {"data": FolderDataset(data), "runs": runs}


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    yield
    assert plt.get_fignums() == []


def _reference(run_dir, sample, block: int) -> torch.Tensor:
    """The attention the browser should show, computed independently."""
    cfg, model, _ = load_backbone(run_dir)
    x = ViewMaker(cfg.views, cfg.model.img_size, (), cfg.model.in_chans).evaluation_view(torch.from_numpy(sample.image))
    with torch.no_grad():
        return cls_attention(model, x[None], block=block)[0]


@pytest.fixture
def browser(setup) -> AttentionBrowser:
    runs = {k: setup["runs"][k] for k in ("span", "deep")}
    return AttentionBrowser(runs, setup["data"], knowledge_maps={"span": "triangular"})


def test_initial_view_is_first_run_last_block_all_heads(browser, setup):
    view = browser.current()
    assert (view.run, view.index, view.head, view.block, view.threshold) == ("span", 0, ALL_HEADS, 1, 0.0)
    assert view.sample_id == setup["data"][0].id
    np.testing.assert_allclose(view.attention, _reference(setup["runs"]["span"], setup["data"][0], -1).numpy(), atol=1e-6)
    assert bytes(browser.view.value).startswith(b"\x89PNG")
    assert list(browser._loaded) == ["span"], "the second run must load only when chosen"
    assert isinstance(browser.figure(), Figure) and len(browser.figure().axes) == 6


def test_controls_change_what_is_shown(browser, setup):
    c = browser.controls
    shown = bytes(browser.view.value)
    for name, value in (("image", 5), ("head", 2), ("block", 0), ("threshold", 0.6)):
        c[name].value = value
        assert bytes(browser.view.value) != shown, f"changing {name} did not redraw"
        shown = bytes(browser.view.value)
    view = browser.current()
    assert (view.run, view.index, view.head, view.block, view.threshold) == ("span", 5, 2, 0, 0.6)
    assert view.sample_id == setup["data"][5].id
    expected = _reference(setup["runs"]["span"], setup["data"][5], 0)[2]
    np.testing.assert_allclose(view.attention, expected.numpy(), atol=1e-6)
    assert len(browser.figure().axes) == 1

    c["run"].value = "deep"
    assert [v for _, v in c["head"].options] == [ALL_HEADS, 0, 1, 2, 3]
    assert c["block"].max == 2
    c["block"].value = 2
    c["head"].value = 3
    view = browser.current()
    assert (view.run, view.block, view.head, view.index) == ("deep", 2, 3, 5)
    expected = _reference(setup["runs"]["deep"], setup["data"][5], 2)[3]
    np.testing.assert_allclose(view.attention, expected.numpy(), atol=1e-6)
    c["head"].value = ALL_HEADS
    assert browser.current().attention.shape == (4, 4, 4)
    assert len(browser.figure().axes) == 4


def test_switching_back_keeps_the_loaded_model(browser):
    c = browser.controls
    c["run"].value = "deep"
    model = browser._loaded["deep"].model
    c["run"].value = "span"
    c["run"].value = "deep"
    assert browser._loaded["deep"].model is model
    assert c["block"].value == 2, "the last block stays selected across runs"


def test_out_of_range_values_are_rejected(browser, setup):
    c = browser.controls
    with pytest.raises(TraitError):
        c["run"].value = "no such run"
    with pytest.raises(TraitError):
        c["head"].value = 6  # the span run has heads 0..5
    c["image"].value = len(setup["data"]) + 10
    assert c["image"].value == len(setup["data"]) - 1
    c["block"].value = 7
    assert c["block"].value == 1
    c["threshold"].value = 1.5
    assert c["threshold"].value == 1.0
    c["run"].value = "deep"
    with pytest.raises(TraitError):
        c["head"].value = 5  # only 4 heads in this run
    view = browser.current()
    assert view.run == "deep" and view.index == len(setup["data"]) - 1


def test_outline_toggles(browser):
    c = browser.controls
    c["head"].value = 0  # assigned to the left lung in the span run
    assert len(browser.figure().axes[0].collections) == 2  # left-lung outline + knowledge map
    c["knowledge_map"].value = False
    assert len(browser.figure().axes[0].collections) == 1
    c["masks"].value = False
    assert len(browser.figure().axes[0].collections) == 0
    assert browser.current().show_masks is False


def test_unreadable_knowledge_maps_are_named_not_fatal(setup):
    browser = AttentionBrowser({"span": setup["runs"]["span"]}, setup["data"], knowledge_maps={"span": "no/such/maps"})
    assert "knowledge maps not shown" in browser.status.value and "no/such/maps" in browser.status.value
    browser.controls["head"].value = 0
    assert len(browser.figure().axes[0].collections) == 1  # the left-lung outline only


def test_a_broken_run_is_reported_in_the_status_line(setup, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    browser = AttentionBrowser({"span": setup["runs"]["span"], "broken": broken}, setup["data"])
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        browser.controls["run"].value = "broken"
    assert "could not load broken" in browser.status.value


def test_widget_is_displayable(browser):
    bundle = browser._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == browser.widget.model_id
    assert base64.b64decode(bundle["image/png"]) == bytes(browser.view.value)


def test_static_figure_matches_browser(setup):
    runs = {k: setup["runs"][k] for k in ("span", "plain")}
    figure = static_browser_figure(runs, setup["data"], 3, threshold=0.6, knowledge_maps={"span": "triangular"})
    assert len(figure.axes) == 2 * 6
    assert figure.axes[0].get_ylabel() == "span" and figure.axes[6].get_ylabel() == "plain"
    assert len(static_browser_figure(runs, setup["data"], 3, heads=[0, 1], block=0).axes) == 4
    with pytest.raises(ValueError, match="different shapes"):
        static_browser_figure(setup["runs"], setup["data"], 0)
    with pytest.raises(ValueError, match="index"):
        static_browser_figure(runs, setup["data"], len(setup["data"]))
    with pytest.raises(ValueError, match="block"):
        static_browser_figure(runs, setup["data"], 0, block=5)


def test_knowledge_maps_are_named_by_organ(browser, setup):
    maps = browser.organ_maps("span", 4)
    cfg, _, _ = load_backbone(setup["runs"]["span"])
    assert list(maps) == list(cfg.span.assigned_heads)
    # the span run was trained toward the triangular heuristic, drawn at the image's size
    expected = triangular_maps(*setup["data"][4].image.shape[:2], organs=tuple(cfg.span.assigned_heads))
    for i, organ in enumerate(cfg.span.assigned_heads):
        np.testing.assert_array_equal(maps[organ], expected[i])
    assert browser.organ_maps("deep", 4) == {}, "a run without assigned heads has no maps"


def test_a_larger_size_gives_a_finer_grid(setup):
    """At the preset's evaluation size the browser reads the finer grid the headline scores use."""
    runs = {"span": setup["runs"]["span"]}
    coarse = AttentionBrowser(runs, setup["data"]).attention("span", 0, -1)
    fine = AttentionBrowser(runs, setup["data"], size=64).attention("span", 0, -1)
    assert coarse.shape[-2:] == (4, 4) and fine.shape[-2:] == (8, 8)
    cfg, model, _ = load_backbone(runs["span"])
    x = ViewMaker(cfg.views, 64, (), cfg.model.in_chans).evaluation_view(torch.from_numpy(setup["data"][0].image))
    with torch.no_grad():
        np.testing.assert_allclose(fine, cls_attention(model, x[None], block=-1)[0].numpy(), atol=1e-6)
    figure = static_browser_figure(runs, setup["data"], index=0, size=64)
    assert len(figure.axes) == fine.shape[0]
    plt.close("all")

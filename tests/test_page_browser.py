"""The static book's attention browser: its data, and its page driven in headless Chromium with no kernel."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from headless import Chromium, chromium_path
from spanlib.book.page_browser import browser_data, film_bytes
from spanlib.core.configs import resolve
from spanlib.data import FolderDataset, make_default_data
from spanlib.eval.metrics import mass_threshold
from spanlib.figures.page_browser import BrowserData, outlines, page_browser, quantised
from spanlib.model.export import load_backbone
from spanlib.model.vit import cls_attention
from spanlib.pretrain.augment import ViewMaker
from spanlib.pretrain.train import pretrain


def test_quantised_scales_each_map_to_its_maximum():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 4, 4))
    maps[1, 0] = 0.0
    q = quantised(maps)
    assert q.dtype == np.uint8 and q.shape == maps.shape
    assert (q[0].max(axis=(-2, -1)) == 255).all()
    assert (q[1, 0] == 0).all()
    np.testing.assert_allclose(q[2, 1] / 255, maps[2, 1] / maps[2, 1].max(), atol=0.5 / 255 + 1e-9)
    with pytest.raises(ValueError, match="non-negative"):
        quantised(-maps)


def test_outlines_trace_a_region_at_its_pixel_edges():
    region = np.zeros((20, 30))
    region[4:10, 6:21] = 1  # rows 4..9, columns 6..20: edges at 4 and 10, 6 and 21 in pixel units
    [(xs, ys)] = outlines(region)
    assert min(xs) == pytest.approx(6, abs=0.5) and max(xs) == pytest.approx(21, abs=0.5)
    assert min(ys) == pytest.approx(4, abs=0.5) and max(ys) == pytest.approx(10, abs=0.5)
    [(xs2, _)] = outlines(region, scale=2.0)
    assert max(xs2) == pytest.approx(2 * max(xs), abs=0.1)
    full = np.ones((5, 5))
    assert len(outlines(full)) == 1  # a region filling the map is closed along the border
    assert outlines(np.zeros((5, 5))) == []


def _toy_data(n: int = 3, side: int = 32, grid: int = 4, heads: int = 3) -> BrowserData:
    rng = np.random.default_rng(1)
    films = np.zeros((n, side, side), np.uint8)
    films[:, : side // 2] = 255  # the top half white: the page must draw row 0 at the top
    lung = np.zeros((side, side))
    lung[4:20, 2:12] = 1
    return BrowserData(
        film_ids=[f"film{i}" for i in range(n)], films=films, regimens=["dino", "span"],
        attention=quantised(rng.random((2, n, heads, grid, grid)) ** 3),
        organ_of_head={"dino": {}, "span": {0: "left_lung"}},
        mask_outlines=[{"left_lung": outlines(lung), "heart": outlines(np.roll(lung, 14, 1))} for _ in range(n)],
        map_outlines={"triangular": [{"left_lung": outlines(np.roll(lung, 3, 0))} for _ in range(n)]},
        map_of_regimen={"span": "triangular"})


def test_browser_data_is_checked():
    data = _toy_data()
    assert (data.side, data.grid) == (32, 4)
    with pytest.raises(ValueError, match="attention must be uint8"):
        BrowserData(data.film_ids, data.films, ["dino"], data.attention, {}, data.mask_outlines)
    with pytest.raises(ValueError, match="no outlines of its maps"):
        BrowserData(data.film_ids, data.films, data.regimens, data.attention, {}, data.mask_outlines,
                    map_of_regimen={"span": "global"})
    with pytest.raises(ValueError, match="no regimen"):
        page_browser(data, regimen="span_x")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Smoke data and two tiny untrained runs, one with assigned heads and triangular maps."""
    root = tmp_path_factory.mktemp("page-browser")
    data = make_default_data("smoke", root / "data")["chest"]
    out = {"random": root / "random", "span_triangular": root / "span"}
    pretrain(resolve("smoke", "random", {"run.data": str(data), "run.train": False}), out["random"])
    pretrain(resolve("smoke", "span_triangular", {"run.data": str(data), "run.train": False,
                                                  "span.knowledge_maps": "triangular"}), out["span_triangular"])
    return {"films": FolderDataset(data), "runs": out}


def test_browser_data_reads_the_last_block_at_the_evaluation_size(runs):
    films = runs["films"]
    data = browser_data(runs["runs"], films, size=64, n_films=3)
    assert data.film_ids == [films[i].id for i in range(3)]
    assert data.attention.shape == (2, 3, 6, 8, 8)  # 64 px / patch 8: twice the training grid of 4 x 4
    assert data.films.shape == (3, 64, 64) and (data.films[1] == film_bytes(films[1].image, 64)).all()
    cfg, model, _ = load_backbone(runs["runs"]["span_triangular"])
    x = ViewMaker(cfg.views, 64, (), cfg.model.in_chans).evaluation_view.of_array(films[2].image)
    with torch.no_grad():
        reference = cls_attention(model, x[None], block=-1)[0].numpy()
    np.testing.assert_array_equal(data.attention[1, 2], quantised(reference))
    assert data.organ_of_head["span_triangular"] == {0: "left_lung", 1: "right_lung", 2: "heart"}
    assert data.organ_of_head["random"] == {}
    kind = data.map_of_regimen["span_triangular"]
    assert set(data.map_outlines[kind][0]) == {"left_lung", "right_lung", "heart"}
    assert set(data.mask_outlines[0]) == set(films[0].masks)
    assert "/" not in kind  # no folder of the machine that built it goes into the page
    assert browser_data(runs["runs"], films, n_films=1).grid == 4  # the training size, without an evaluation size


# ------------------------------------------------------------------ the page, in headless Chromium
MODEL = "Bokeh.documents[0].get_model_by_name"


def picture(page: Chromium) -> bytes:
    """A PNG of the browser's picture, as the page draws it now."""
    box = page.evaluate("(() => { const r = document.querySelector('.page-browser').getBoundingClientRect();"
                        " return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}; })()")
    side = min(box["width"], box["height"])
    return page.screenshot({"x": box["x"], "y": box["y"], "width": side, "height": side})


def drawn(page: Chromium) -> np.ndarray:
    """The picture as RGB pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(picture(page))) as shot:
        return np.asarray(shot.convert("RGB"), dtype=np.int16)


def set_control(page: Chromium, name: str, value: object, what: str = "value") -> None:
    import json

    page.evaluate(f"{MODEL}({json.dumps(name)}).{what} = {json.dumps(value)}")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One headless Chromium for the page tests (each test loads its own page)."""
    if chromium_path() is None:
        pytest.skip("chromium not installed: apt-get install -y chromium (the .ci/run step) to drive the page browser")
    with Chromium(tmp_path_factory.mktemp("chromium") / "profile", width=900, height=600) as page:
        yield page


def open_page(page: Chromium, folder, data: BrowserData, **kwargs) -> Chromium:
    html = folder / "browser.html"
    html.write_text(f"<!doctype html><html><body>{page_browser(data, **kwargs).html}</body></html>")
    page.load(html.as_uri())
    page.wait_for(f"window.Bokeh && Bokeh.documents.length > 0 && {MODEL}('status').text")
    return page


def test_the_page_redraws_on_every_control_with_no_kernel(chromium, tmp_path):
    data = _toy_data()
    page = open_page(chromium, tmp_path, data, regimen="span")
    set_control(page, "overlay", [], "active")
    bare = drawn(page)  # the film alone: white on its first rows, black on its last
    assert bare[2: bare.shape[0] // 8].mean() > 250 and bare[-bare.shape[0] // 8: -2].mean() < 5, \
        "the film's first rows (white) are not drawn at the top"
    set_control(page, "overlay", [0, 1, 2], "active")
    shots = {"start": picture(page)}
    for name, value, what in (("film", 2, "value"), ("regimen", "dino", "value"), ("head", "2", "value"),
                              ("threshold", 0.6, "value"), ("overlay", [0], "active")):
        set_control(page, name, value, what)
        shot = picture(page)
        assert shot != list(shots.values())[-1], f"changing {name} to {value!r} left the picture as it was"
        shots[name] = shot
    status = page.evaluate(f"{MODEL}('status').text")
    assert "dino" in status and "film1" in status and "head 2" in status and "60%" in status
    assert page.evaluate(f"{MODEL}('mask_source').data.xs.length") == 0  # true outlines switched off


def test_the_page_names_assigned_heads_and_draws_their_maps(chromium, tmp_path):
    data = _toy_data()
    page = open_page(chromium, tmp_path, data, regimen="span")
    labels = page.evaluate(f"{MODEL}('head').options.map((o) => Array.isArray(o) ? o[1] : o)")
    assert labels == ["0: left_lung", "1", "2"]
    # an assigned head: its organ's outline alone, and its knowledge map
    assert page.evaluate(f"{MODEL}('mask_source').data.xs.length") == len(data.mask_outlines[0]["left_lung"])
    assert page.evaluate(f"{MODEL}('map_source').data.xs.length") == 1
    set_control(page, "head", "1")  # a free head: every organ, no map
    assert page.evaluate(f"{MODEL}('mask_source').data.xs.length") == 2
    assert page.evaluate(f"{MODEL}('map_source').data.xs.length") == 0
    set_control(page, "regimen", "dino")
    assert page.evaluate(f"{MODEL}('head').options.map((o) => Array.isArray(o) ? o[1] : o)") == ["0", "1", "2"]


def test_the_page_threshold_is_mass_threshold(chromium, tmp_path):
    data = _toy_data()
    page = open_page(chromium, tmp_path, data, regimen="span")
    for film, head, keep in ((0, 0, 0.6), (2, 1, 0.3), (1, 2, 0.9)):
        set_control(page, "film", film + 1)
        set_control(page, "head", str(head))
        set_control(page, "threshold", keep)
        kept = np.array(page.evaluate(f"Array.from({MODEL}('kept_source').data.image[0])"), dtype=float)
        expected = mass_threshold(torch.tensor(data.attention[1, film, head], dtype=torch.float64)[None], keep)[0]
        np.testing.assert_array_equal(~np.isnan(kept), expected.numpy().reshape(-1))
    set_control(page, "threshold", 0.0)
    heat = np.array(page.evaluate(f"Array.from({MODEL}('heat_source').data.image[0])"), dtype=float)
    a = data.attention[1, 1, 2].astype(float).reshape(-1)
    np.testing.assert_allclose(heat, (a - a.min()) / (a.max() - a.min()))


def test_the_page_carries_no_network_reference():
    html = page_browser(_toy_data()).html
    assert "<script src=" not in html and "cdn.bokeh.org" not in html


def test_a_film_without_its_knowledge_map_is_named_not_fatal(runs, monkeypatch):
    import spanlib.book.page_browser as module

    real = module._knowledge_maps_by_head

    def flaky(loaded, sample):
        if sample.id == runs["films"][1].id:
            raise KeyError(f"no map for {sample.id}")
        return real(loaded, sample)

    monkeypatch.setattr(module, "_knowledge_maps_by_head", flaky)
    data = browser_data(runs["runs"], runs["films"], n_films=3)
    kind = data.map_of_regimen["span_triangular"]
    assert data.map_outlines[kind][1] == {} and data.map_outlines[kind][0]
    assert "No knowledge map could be read for 1 film(s)" in data.note and runs["films"][1].id in data.note

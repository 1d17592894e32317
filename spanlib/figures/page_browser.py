"""The attention browser of the static book: precomputed maps, controls that run in the page.

A built book has no kernel, so an ipywidgets view is dead there. This browser
carries its data in the page: the films, the last block's CLS attention of
every head under every regimen (quantised to a byte per patch, relative to
each map's maximum), the outlines of the true organs and of each regimen's
knowledge maps. The drawing is Bokeh's (an ``image`` glyph for the film and
one for the attention, ``multi_line`` for the outlines); a ``CustomJS``
callback attached to every control (film, regimen, head, overlay, threshold)
picks the arrays and redraws in the reader's browser. Bokeh's JavaScript is
written into the page, so the page loads nothing from the network.

The threshold follows :func:`spanlib.eval.metrics.mass_threshold` (DINO's
visualiser): the smallest set of top patches holding that share of the
attention mass, ties broken in row-major order; 0 draws the heat map,
stretched from the map's minimum to its maximum as
:mod:`spanlib.figures.attention` draws it.
"""

from __future__ import annotations

import json
from html import escape as html_escape
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spanlib.figures.style import DEFAULT_MASK_COLOURS, KEPT_COLOUR, KNOWLEDGE_MAP_COLOUR

OVERLAYS = ("attention", "knowledge map", "true outlines")
"""The overlay choices, in the order of the overlay control."""

_TAB = {"tab:orange": "#ff7f0e", "tab:cyan": "#17becf", "tab:red": "#d62728", "tab:green": "#2ca02c",
        "tab:purple": "#9467bd", "tab:olive": "#bcbd22"}
_CYCLE = ("#ff7f0e", "#17becf", "#d62728", "#2ca02c", "#9467bd", "#bcbd22")

CONTROLS_WIDTH = 250
"""Width of the controls' column in CSS pixels: with the picture's default 360, the browser fits a 640-pixel column."""

Polylines = list[tuple[list[float], list[float]]]
"""Outlines of one region: ``(xs, ys)`` per closed line, in pixels of the shown film (x right, y down)."""


@dataclass(frozen=True)
class BrowserData:
    """What the page browser carries.

    Attributes:
        film_ids: the films' ids, in order.
        films: ``uint8 [N, S, S]``, the films as shown (grey levels).
        regimens: the regimens, in the order of the regimen control.
        attention: ``uint8 [R, N, heads, g, g]``: each map scaled so that its maximum is 255.
        organ_of_head: regimen -> head -> organ (SPAN's assigned heads; empty for a baseline).
        mask_outlines: per film, organ -> its true outline.
        map_outlines: map kind -> per film, organ -> the knowledge map's 0.5 outline.
        map_of_regimen: regimen -> its map kind in ``map_outlines`` (absent: none).
        note: one line said under the browser (where the data come from).
    """

    film_ids: list[str]
    films: np.ndarray
    regimens: list[str]
    attention: np.ndarray
    organ_of_head: dict[str, dict[int, str]]
    mask_outlines: list[dict[str, Polylines]]
    map_outlines: dict[str, list[dict[str, Polylines]]] = field(default_factory=dict)
    map_of_regimen: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        n, side = len(self.film_ids), int(self.films.shape[-1])
        if self.films.shape != (n, side, side) or self.films.dtype != np.uint8:
            raise ValueError(f"films must be uint8 [{n}, S, S], got {self.films.dtype} {self.films.shape}")
        a = self.attention
        if a.dtype != np.uint8 or a.ndim != 5 or a.shape[:2] != (len(self.regimens), n) or a.shape[3] != a.shape[4]:
            raise ValueError(f"attention must be uint8 [{len(self.regimens)}, {n}, heads, g, g], got {a.dtype} {a.shape}")
        if len(self.mask_outlines) != n:
            raise ValueError(f"{len(self.mask_outlines)} films of outlines for {n} films")
        for regimen, kind in self.map_of_regimen.items():
            if kind not in self.map_outlines or len(self.map_outlines[kind]) != n:
                raise ValueError(f"regimen {regimen}: no outlines of its maps {kind!r} for every film")

    @property
    def side(self) -> int:
        """The shown film's side in pixels."""
        return int(self.films.shape[-1])

    @property
    def grid(self) -> int:
        """The attention grid's side in patches."""
        return int(self.attention.shape[-1])


def quantised(attention: np.ndarray) -> np.ndarray:
    """Attention maps ``[..., g, g]`` as bytes, each map scaled so that its maximum is 255 (a zero map stays 0)."""
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"expected maps [..., g, g], got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("attention must be finite and non-negative")
    top = a.max(axis=(-2, -1), keepdims=True)
    scaled = np.divide(a, top, out=np.zeros_like(a), where=top > 0)
    return np.rint(scaled * 255).astype(np.uint8)


def outlines(region: np.ndarray, scale: float = 1.0, tolerance: float = 0.5) -> Polylines:
    """The 0.5 level of a map as closed lines, in pixel units (x right, y down), simplified.

    Args:
        region: a ``[H, W]`` map (a mask, a knowledge map).
        scale: multiply the coordinates by this (a map drawn over a film of another size).
        tolerance: the simplification's largest deviation, in the map's pixels.

    Returns:
        ``(xs, ys)`` per line; empty for a map with no 0.5 crossing.
    """
    from skimage.measure import approximate_polygon, find_contours

    region = np.asarray(region, dtype=np.float32)
    if region.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {region.shape}")
    padded = np.pad(region, 1)  # a region touching the border closes along it
    lines: Polylines = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour, tolerance) if len(contour) > 3 else contour
        # a pixel's centre is at index + 0.5 in the drawing's units; the padding moved it by 1
        ys = [round(float(v), 1) for v in (contour[:, 0] - 0.5) * scale]
        xs = [round(float(v), 1) for v in (contour[:, 1] - 0.5) * scale]
        lines.append((xs, ys))
    return lines


def _colour(name: str, seen: dict[str, str]) -> str:
    colour = DEFAULT_MASK_COLOURS.get(name)
    colour = _TAB.get(colour, colour) if colour else seen.get(name, _CYCLE[len(seen) % len(_CYCLE)])
    seen.setdefault(name, colour)
    return colour


def _colours(data: BrowserData) -> dict[str, str]:
    """Organ -> the colour of its true outline (the book's colours, as :mod:`spanlib.figures.attention` draws them)."""
    seen: dict[str, str] = {}
    organs = sorted({o for film in data.mask_outlines for o in film}
                    | {o for heads in data.organ_of_head.values() for o in heads.values()})
    return {o: _colour(o, seen) for o in organs}


def _meta(data: BrowserData) -> dict[str, Any]:
    """Everything but the byte arrays, for the page's script (JSON)."""
    return {
        "side": data.side, "grid": data.grid, "films": len(data.film_ids), "heads": int(data.attention.shape[2]),
        "ids": list(data.film_ids), "regimens": list(data.regimens),
        "organs": [{str(h): o for h, o in data.organ_of_head.get(r, {}).items()} for r in data.regimens],
        "colours": _colours(data),
        "masks": [{o: [list(map(list, line)) for line in lines] for o, lines in film.items()} for film in data.mask_outlines],
        "maps": {k: [{o: [list(map(list, line)) for line in lines] for o, lines in film.items()} for film in films]
                 for k, films in data.map_outlines.items()},
        "map_of": [data.map_of_regimen.get(r) for r in data.regimens],
    }


_REDRAW = """
const M = JSON.parse(meta_json);
const S = M.side, G = M.grid, N = M.films, H = M.heads;
const f = Math.min(Math.max(Math.round(film.value) - 1, 0), N - 1);
const r = Math.max(M.regimens.indexOf(regimen.value), 0);
const names = M.organs[r];
const opts = [];
for (let i = 0; i < H; i++) opts.push([String(i), names[String(i)] ? `${i}: ${names[String(i)]}` : String(i)]);
if (JSON.stringify(head.options) !== JSON.stringify(opts)) head.options = opts;
const h = Math.min(Math.max(parseInt(head.value, 10) || 0, 0), H - 1);
const organ = names[String(h)] || null;
const shown = new Set(overlay.active.map((i) => overlay.labels[i]));
const keep = Number(threshold.value);
function fill(source, values) {
  // the source's image is a typed array of its shape (set by Python): written in place, then redrawn
  const image = source.data.image[0];
  for (let i = 0; i < values.length; i++) image[i] = values[i];
  source.change.emit();
}
const picture = new Array(S * S);
for (let i = 0; i < S * S; i++) picture[i] = films[f * S * S + i];
fill(film_source, picture);
const offset = ((r * N + f) * H + h) * G * G;
const values = [];
for (let i = 0; i < G * G; i++) values.push(attention[offset + i]);
const heat = new Array(G * G).fill(NaN), kept = new Array(G * G).fill(NaN);
if (keep > 0) {
  // mass_threshold: keep a patch while the mass strictly above it is below keep * total (stable order)
  const order = values.map((v, i) => i).sort((a, b) => values[b] - values[a]);
  const total = values.reduce((a, b) => a + b, 0);
  let above = 0;
  for (const i of order) { if (total > 0 && above < keep * total) kept[i] = 1; above += values[i]; }
} else {
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < G * G; i++) heat[i] = (values[i] - lo) / span;
}
fill(heat_source, heat);
fill(kept_source, kept);
heat_renderer.visible = shown.has("attention") && keep === 0;
kept_renderer.visible = shown.has("attention") && keep > 0;
const lines = {xs: [], ys: [], colour: []};
if (shown.has("true outlines")) {
  const masks = M.masks[f];
  for (const o of Object.keys(masks)) {
    if (organ && (o in masks) && o !== organ && (organ in masks)) continue;
    for (const [xs, ys] of masks[o]) { lines.xs.push(xs); lines.ys.push(ys); lines.colour.push(M.colours[o]); }
  }
}
mask_source.data = lines;
const dashed = {xs: [], ys: []};
const kind = M.map_of[r];
if (shown.has("knowledge map") && organ && kind && M.maps[kind][f][organ]) {
  for (const [xs, ys] of M.maps[kind][f][organ]) { dashed.xs.push(xs); dashed.ys.push(ys); }
}
map_source.data = dashed;
const what = keep > 0 ? `the patches holding ${Math.round(keep * 100)}% of the attention` : "heat map";
const whose = organ ? `assigned to ${organ}` : "not assigned";
status.text = `<b>${M.regimens[r]}</b>, film <b>${M.ids[f]}</b> (${f + 1} of ${N}), head ${h} (${whose}): ${what}`;
"""


def _controls(data: BrowserData, regimen: str, head: int, threshold: float, width: int) -> dict[str, Any]:
    from bokeh.models import CheckboxGroup, Div, Select, Slider

    heads = int(data.attention.shape[2])
    return {
        "film": Slider(start=1, end=max(len(data.film_ids), 2), value=1, step=1, title="film", name="film",
                       disabled=len(data.film_ids) < 2, width=width),
        "regimen": Select(title="regimen", value=regimen, options=list(data.regimens), name="regimen", width=width),
        "head": Select(title="head", value=str(head), options=[str(h) for h in range(heads)], name="head",
                       width=width),
        "overlay": CheckboxGroup(labels=list(OVERLAYS), active=list(range(len(OVERLAYS))), name="overlay",
                                 width=width),
        "threshold": Slider(start=0.0, end=0.95, value=threshold, step=0.05, title="threshold (0: heat map)",
                            name="threshold", width=width),
        "status": Div(text="", name="status", width=width),
    }


def _legend(data: BrowserData) -> str:
    """What the colours mean: each organ's true outline, the knowledge map, the kept patches."""
    organs = ", ".join(f'<span style="color:{colour}">&#9632;</span> {html_escape(organ)}'
                       for organ, colour in _colours(data).items())
    return (f"True outlines: {organs}; dashed <span style=\"color:{KNOWLEDGE_MAP_COLOUR}\">&#9632;</span> the "
            f"knowledge map of an assigned head; <span style=\"color:{KEPT_COLOUR}\">&#9632;</span> the patches "
            "kept by the threshold.")


def _picture(data: BrowserData, width: int) -> tuple[Any, dict[str, Any]]:
    """The Bokeh figure and its data sources and renderers (empty: the page's script fills them)."""
    from bokeh.models import ColumnDataSource, LinearColorMapper
    from bokeh.palettes import Greys256, Inferno256
    from bokeh.plotting import figure

    side, grid = data.side, data.grid
    plot = figure(width=width, height=width, x_range=(0, side), y_range=(side, 0), tools="", toolbar_location=None,
                  name="picture", min_border=0)
    plot.axis.visible = False
    plot.grid.visible = False
    parts: dict[str, Any] = {  # filled by the page's script, in place: the arrays' shapes and types are fixed here
        "film_source": ColumnDataSource({"image": [np.zeros((side, side), np.uint8)]}, name="film_source"),
        "heat_source": ColumnDataSource({"image": [np.full((grid, grid), np.nan)]}, name="heat_source"),
        "kept_source": ColumnDataSource({"image": [np.full((grid, grid), np.nan)]}, name="kept_source"),
    }
    plot.image("image", x=0, y=0, dw=side, dh=side, source=parts["film_source"],
               color_mapper=LinearColorMapper(palette=list(Greys256), low=0, high=255))
    parts["heat_renderer"] = plot.image("image", x=0, y=0, dw=side, dh=side, source=parts["heat_source"],
                                        global_alpha=0.55, name="heat",
                                        color_mapper=LinearColorMapper(palette=Inferno256, low=0, high=1,
                                                                       nan_color=(0, 0, 0, 0)))
    parts["kept_renderer"] = plot.image("image", x=0, y=0, dw=side, dh=side, source=parts["kept_source"],
                                        global_alpha=0.55, name="kept",
                                        color_mapper=LinearColorMapper(palette=[KEPT_COLOUR], low=0, high=1,
                                                                       nan_color=(0, 0, 0, 0)))
    parts["mask_source"] = ColumnDataSource({"xs": [], "ys": [], "colour": []}, name="mask_source")
    parts["map_source"] = ColumnDataSource({"xs": [], "ys": []}, name="map_source")
    plot.multi_line("xs", "ys", source=parts["mask_source"], line_color="colour", line_width=1.6)
    plot.multi_line("xs", "ys", source=parts["map_source"], line_color=KNOWLEDGE_MAP_COLOUR, line_width=1.6,
                    line_dash="dashed")
    return plot, parts


@dataclass(frozen=True)
class PageBrowser:
    """The browser as one self-contained block of HTML (Bokeh's JavaScript included).

    Attributes:
        html: the block, to put in a page (a notebook's output shows it through ``_repr_html_``).
        data_bytes: the size of the embedded data (the document's JSON) in bytes.
    """

    html: str
    data_bytes: int

    def _repr_html_(self) -> str:
        return self.html

    @property
    def size_bytes(self) -> int:
        """The block's size in bytes (UTF-8), JavaScript included."""
        return len(self.html.encode("utf-8"))


def page_browser(data: BrowserData, regimen: str | None = None, head: int = 0, threshold: float = 0.0,
                 width: int = 360) -> PageBrowser:
    """The browser for the static page: Bokeh controls whose script redraws the picture with no kernel.

    Args:
        data: the precomputed films, attention and outlines.
        regimen: the regimen shown first (default: the last of ``data.regimens``).
        head: the head shown first.
        threshold: the threshold shown first (0: heat map).
        width: the picture's side in CSS pixels (the controls take :data:`CONTROLS_WIDTH` more).

    Returns:
        A :class:`PageBrowser`.

    Raises:
        ValueError: a regimen, head or threshold the data do not have.
    """
    from bokeh.document import Document
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.events import DocumentReady
    from bokeh.layouts import column, row
    from bokeh.models import CustomJS
    from bokeh.resources import INLINE

    regimen = data.regimens[-1] if regimen is None else regimen
    if regimen not in data.regimens:
        raise ValueError(f"no regimen {regimen!r} in the browser's data ({data.regimens})")
    if not 0 <= head < data.attention.shape[2]:
        raise ValueError(f"head {head} outside 0..{data.attention.shape[2] - 1}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    controls = _controls(data, regimen, head, threshold, CONTROLS_WIDTH)
    plot, parts = _picture(data, width)
    meta_json = json.dumps(_meta(data), separators=(",", ":"))
    redraw = CustomJS(args={**controls, **parts, "films": data.films.reshape(-1),
                            "attention": data.attention.reshape(-1), "meta_json": meta_json}, code=_REDRAW)
    for name in ("film", "regimen", "head", "threshold"):
        controls[name].js_on_change("value", redraw)
    controls["overlay"].js_on_change("active", redraw)
    c = controls
    layout = row(plot, column(c["film"], c["regimen"], c["head"], c["threshold"], c["overlay"], c["status"],
                              width=CONTROLS_WIDTH + 10), name="attention_browser")
    document = Document()
    document.add_root(layout)
    document.js_on_event(DocumentReady, redraw)
    script, div = components(layout)
    resources = bundle_for_objs_and_resources([layout], INLINE)
    note = f'<p class="page-browser-note">{_legend(data)} {html_escape(data.note)}</p>'
    html = "\n".join([resources.scripts(), *(f"<style>{css}</style>" for css in resources.css_raw),
                      f'<div class="page-browser">{div}</div>', script, note])
    return PageBrowser(html=html, data_bytes=len(script.encode("utf-8")))


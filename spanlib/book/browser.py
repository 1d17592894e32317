"""The attention browser: pick a run, an image, a head, a block and a threshold.

:class:`AttentionBrowser` is an ipywidgets view for JupyterLab: every change
of a control recomputes the CLS attention of the chosen block
(:func:`spanlib.model.vit.cls_attention`, on the evaluation view of the image) and
redraws :func:`spanlib.figures.attention.attention_overlay` (one head) or
:func:`spanlib.figures.attention.attention_grid` (all heads) into an ``Image`` widget.
Models are loaded when a run is first chosen and kept; attention is cached
per (run, image, block).

A built book has no kernel, so a widget there is dead: put
:func:`static_browser_figure`, the same picture for chosen settings, beside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from spanlib.figures import attention as viz
from spanlib.figures.style import figure_png
from spanlib.pretrain.augment import ViewMaker
from spanlib.core.paths import project_root
from spanlib.core.configs import Config
from spanlib.eval.evaluate import load_backbone
from spanlib.pretrain.loader import MapSource, knowledge_map_source
from spanlib.model.vit import cls_attention

ALL_HEADS = "all"
"""Value of the head control that shows every head of the block."""


@dataclass(frozen=True)
class BrowserView:
    """What the browser shows.

    Attributes:
        run: the run's name.
        index: the image's index in the dataset.
        sample_id: the image's id.
        block: the block read, counted from 0.
        head: the head shown, or :data:`ALL_HEADS`.
        attention: ``[gh, gw]`` for one head, ``[heads, gh, gw]`` for all.
        threshold: attention mass kept; 0 means a heat map.
        show_knowledge_map: whether the knowledge-map outline is drawn.
        show_masks: whether the ground-truth outlines are drawn.
    """

    run: str
    index: int
    sample_id: str
    block: int
    head: int | str
    attention: np.ndarray
    threshold: float
    show_knowledge_map: bool
    show_masks: bool


@dataclass
class _LoadedRun:
    cfg: Config
    model: torch.nn.Module
    views: ViewMaker
    maps: MapSource | None
    organ_of_head: dict[int, str]
    note: str


def _resolve_spec(spec: str | None) -> str | None:
    """A relative map directory that is not under the current folder is looked up from the repository root."""
    if spec is None or spec in ("triangular", "masks") or Path(spec).is_absolute() or Path(spec).exists():
        return spec
    try:
        candidate = project_root() / spec
    except FileNotFoundError:
        return spec
    return str(candidate) if candidate.exists() else spec


def _load_run(path: str | Path, map_spec: str | Path | None, size: int | None = None) -> _LoadedRun:
    """A run's teacher backbone, its evaluation view (at ``size``, default the run's) and its knowledge-map source."""
    cfg, model, _ = load_backbone(path)
    views = ViewMaker(cfg.views, size or cfg.model.img_size, (), cfg.model.in_chans)
    organs = tuple(cfg.span.assigned_heads)
    spec = cfg.span.knowledge_maps if map_spec is None else _resolve_spec(str(map_spec))
    maps, note = None, ""
    if organs and spec is not None:
        try:
            maps = knowledge_map_source(spec, organs)
        except (FileNotFoundError, ValueError) as error:
            note = f"knowledge maps not shown: {error}"
    organ_of_head = {int(h): o for o, h in cfg.span.assigned_heads.items()}
    return _LoadedRun(cfg, model, views, maps, organ_of_head, note)


@torch.no_grad()
def _attention(run: _LoadedRun, image: np.ndarray, block: int) -> np.ndarray:
    """``[heads, gh, gw]`` CLS attention of one block on the evaluation view of ``image``."""
    x = run.views.evaluation_view.of_array(image)
    return cls_attention(run.model, x[None], block=block)[0].float().numpy()


def _knowledge_maps_by_head(run: _LoadedRun, sample: Any) -> dict[int, np.ndarray]:
    if run.maps is None:
        return {}
    maps = run.maps(sample)
    organs = tuple(run.cfg.span.assigned_heads)
    return {int(run.cfg.span.assigned_heads[o]): maps[i] for i, o in enumerate(organs)}


def _maps_where_built(run: _LoadedRun, sample: Any) -> dict[int, np.ndarray]:
    """:func:`_knowledge_maps_by_head`, or none for a film the maps were not built for (attention scored on
    another set than the pretraining one: JSRT's films for a run pretrained on CheXpert)."""
    try:
        return _knowledge_maps_by_head(run, sample)
    except KeyError:
        return {}


def _normalise_block(block: int, depth: int) -> int:
    if not -depth <= block < depth:
        raise ValueError(f"block {block} does not exist: the model has {depth} blocks")
    return block % depth


class AttentionBrowser:
    """Interactive attention maps of one or more runs over a dataset.

    Args:
        runs: run name -> run directory (with ``checkpoint.pt``).
        dataset: a sequence of :class:`spanlib.data.Sample` (a
            :class:`spanlib.data.FolderDataset`, a split of it, a list).
        knowledge_maps: run name -> knowledge-map spec (``"triangular"``,
            ``"masks"`` or a directory from ``python -m spanlib templates
            build``); a run not named uses its own configuration's maps
            (a relative directory is looked up from the current folder,
            then from the repository root). Maps that cannot be read are
            not drawn and the status line says why.
        panel_size: side of the shown panel in inches.
        size: the input side attention is read at (the preset's evaluation
            size gives a finer grid than the training size: 16 x 16 patches
            for the ``book`` preset instead of 8 x 8); default each run's own.

    Attributes:
        controls: ``run`` (Dropdown), ``image`` (IntSlider), ``head``
            (Dropdown, with "all heads"), ``block`` (IntSlider),
            ``threshold`` (FloatSlider, 0 = heat map), ``knowledge_map`` and
            ``masks`` (Checkboxes).
        view: the ``Image`` widget the panel is drawn into (PNG).
        status: an ``HTML`` widget naming the sample and any problem.
        widget: the whole browser (a ``VBox``) to display.

    Raises:
        ValueError: no run, or an empty dataset.
    """

    def __init__(
        self,
        runs: Mapping[str, str | Path],
        dataset: Sequence[Any],
        knowledge_maps: Mapping[str, str | Path] | None = None,
        panel_size: float = 4.0,
        size: int | None = None,
    ) -> None:
        if not runs:
            raise ValueError("AttentionBrowser needs at least one run")
        if len(dataset) == 0:
            raise ValueError("AttentionBrowser needs a non-empty dataset")
        self.runs = {name: Path(path) for name, path in runs.items()}
        self.dataset = dataset
        self.knowledge_maps = dict(knowledge_maps or {})
        self.panel_size = panel_size
        self.size = size
        self._loaded: dict[str, _LoadedRun] = {}
        self._attention_cache: dict[tuple[str, int, int], np.ndarray] = {}
        self._sample_cache: tuple[int, Any] | None = None
        self._quiet = 0
        self._map_note = ""
        first = self._run(next(iter(self.runs)))
        depth = len(first.model.blocks)
        self.controls: dict[str, widgets.ValueWidget] = {
            "run": widgets.Dropdown(options=list(self.runs), value=next(iter(self.runs)), description="run"),
            "image": widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="image", continuous_update=False),
            "head": widgets.Dropdown(options=self._head_options(first), value=ALL_HEADS, description="head"),
            "block": widgets.IntSlider(value=depth - 1, min=0, max=depth - 1, description="block", continuous_update=False),
            "threshold": widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="threshold",
                                             continuous_update=False, readout_format=".2f"),
            "knowledge_map": widgets.Checkbox(value=True, description="knowledge map", indent=False),
            "masks": widgets.Checkbox(value=True, description="ground truth", indent=False),
        }
        self.view = widgets.Image(format="png")
        self.status = widgets.HTML()
        c = self.controls
        self.widget = widgets.VBox(
            [
                widgets.HBox([c["run"], c["head"]]),
                widgets.HBox([c["image"], c["block"]]),
                widgets.HBox([c["threshold"], c["knowledge_map"], c["masks"]]),
                self.status,
                self.view,
            ]
        )
        c["run"].observe(self._on_run, names="value")
        for name in ("image", "head", "block", "threshold", "knowledge_map", "masks"):
            c[name].observe(self._on_change, names="value")
        self.render()

    # ------------------------------------------------------------------ state
    def _run(self, name: str) -> _LoadedRun:
        if name not in self._loaded:
            self._loaded[name] = _load_run(self.runs[name], self.knowledge_maps.get(name), self.size)
        return self._loaded[name]

    def _sample(self, index: int) -> Any:
        if self._sample_cache is None or self._sample_cache[0] != index:
            self._sample_cache = (index, self.dataset[index])
        return self._sample_cache[1]

    @staticmethod
    def _head_options(run: _LoadedRun) -> list[tuple[str, int | str]]:
        heads = run.model.blocks[-1].attn.num_heads
        options: list[tuple[str, int | str]] = [("all heads", ALL_HEADS)]
        for h in range(heads):
            organ = run.organ_of_head.get(h)
            options.append((f"{h}: {organ}" if organ else str(h), h))
        return options

    def attention(self, run: str, index: int, block: int) -> np.ndarray:
        """``[heads, gh, gw]`` attention of a run's block on one image (cached).

        Args:
            run: the run's name.
            index: the image's index in the dataset.
            block: the block, counted from 0 (negative counts from the end).
        """
        loaded = self._run(run)
        block = _normalise_block(block, len(loaded.model.blocks))
        key = (run, index, block)
        if key not in self._attention_cache:
            self._attention_cache[key] = _attention(loaded, self._sample(index).image, block)
        return self._attention_cache[key]

    def organ_maps(self, run: str, index: int) -> dict[str, np.ndarray]:
        """Organ -> knowledge map ``[H, W]`` a run's assigned heads were trained toward, on one image.

        Empty for a run without assigned heads or maps.

        Args:
            run: the run's name.
            index: the image's index in the dataset.
        """
        loaded = self._run(run)
        by_head = _maps_where_built(loaded, self._sample(index))
        return {loaded.organ_of_head[h]: m for h, m in by_head.items()}

    def current(self) -> BrowserView:
        """The settings and the attention array shown now."""
        c = self.controls
        run, index, block, head = c["run"].value, int(c["image"].value), int(c["block"].value), c["head"].value
        attention = self.attention(run, index, block)
        return BrowserView(
            run=run,
            index=index,
            sample_id=self._sample(index).id,
            block=block,
            head=head,
            attention=attention if head == ALL_HEADS else attention[int(head)],
            threshold=float(c["threshold"].value),
            show_knowledge_map=bool(c["knowledge_map"].value),
            show_masks=bool(c["masks"].value),
        )

    # ---------------------------------------------------------------- drawing
    def figure(self) -> Figure:
        """The current panel as a static matplotlib figure."""
        view = self.current()
        loaded = self._run(view.run)
        sample = self._sample(view.index)
        last = view.block == len(loaded.model.blocks) - 1
        # heads are assigned in the last block only: elsewhere the maps and organ names do not apply
        maps: dict[int, np.ndarray] = {}
        self._map_note = ""
        if view.show_knowledge_map and last:
            try:
                maps = _knowledge_maps_by_head(loaded, sample)
            except (KeyError, ValueError, OSError) as error:
                self._map_note = f"no knowledge map for {view.sample_id}: {error}"
        names = loaded.organ_of_head if last else {}
        masks = sample.masks if view.show_masks else None
        title = f"{view.run} - {view.sample_id} - block {view.block}"
        if view.head == ALL_HEADS:
            return viz.attention_grid([sample.image], view.attention[None], masks=[masks], head_names=names,
                                      knowledge_maps=[maps], threshold=view.threshold, title=title)
        head = int(view.head)
        return viz.attention_overlay(sample.image, view.attention, masks=viz.masks_for_head(masks, head, names),
                                     knowledge_map=maps.get(head),
                                     threshold=view.threshold, title=f"{title}\n{viz.head_label(head, names)}",
                                     panel_size=self.panel_size)

    def render(self) -> None:
        """Redraw the panel into :attr:`view` (called on every change)."""
        self.view.value = figure_png(self.figure())
        view = self.current()
        notes = [n for n in (self._run(view.run).note, self._map_note) if n]
        text = f"<b>{html.escape(view.sample_id)}</b> ({view.index + 1} of {len(self.dataset)})"
        self.status.value = " &mdash; ".join([text, *(html.escape(n) for n in notes)])

    def _render_or_report(self) -> None:
        """Render; on failure, say so in the status line (a widget callback's traceback is easily missed), then raise."""
        try:
            self.render()
        except Exception as error:
            self.status.value = f"<b>could not draw:</b> {html.escape(f'{type(error).__name__}: {error}')}"
            raise

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self._render_or_report()

    def _on_run(self, change: dict[str, Any]) -> None:
        try:
            loaded = self._run(change["new"])
        except Exception as error:
            self.status.value = f"<b>could not load {html.escape(change['new'])}:</b> {html.escape(str(error))}"
            raise
        depth = len(loaded.model.blocks)
        c = self.controls
        self._quiet += 1
        try:
            head = c["head"].value
            options = self._head_options(loaded)
            c["head"].options = options
            c["head"].value = head if head in [v for _, v in options] else ALL_HEADS
            was_last = c["block"].value == c["block"].max
            c["block"].max = depth - 1
            if was_last:
                c["block"].value = depth - 1
        finally:
            self._quiet -= 1
        self._render_or_report()

    # ------------------------------------------------------------- display
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget's bundle, plus the current panel as PNG for front ends without widgets.

        JupyterLab renders the widget. A static renderer (the built book with
        the widget mime type switched off, nbviewer, GitHub) shows the PNG of
        the panel as it was when the cell ran.
        """
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["image/png"] = base64.b64encode(bytes(self.view.value)).decode("ascii")
        return bundle


def static_browser_figure(
    runs: Mapping[str, str | Path],
    dataset: Sequence[Any],
    index: int,
    block: int = -1,
    heads: Sequence[int] | None = None,
    threshold: float | None = None,
    knowledge_maps: Mapping[str, str | Path] | None = None,
    show_masks: bool = True,
    show_knowledge_map: bool = True,
    title: str | None = None,
    size: int | None = None,
) -> Figure:
    """What the browser shows for one image, every run at once: the book's static twin.

    Rows are runs, columns are heads, all for the same image and block.

    Args:
        runs: run name -> run directory.
        dataset: a sequence of samples.
        index: the image's index in ``dataset``.
        block: the block (negative counts from the end; default the last).
        heads: the heads to show (default: all heads of the first run).
        threshold: ``None``/0 for heat maps, else the attention mass kept.
        knowledge_maps: run name -> knowledge-map spec (as :class:`AttentionBrowser`).
        show_masks: draw the ground-truth outlines.
        show_knowledge_map: draw the knowledge maps of assigned heads (last block only).
        title: figure title (default: the sample id and block).
        size: the input side attention is read at (default: each run's own).

    Returns:
        A figure with ``len(runs) * len(heads)`` axes.

    Raises:
        ValueError: no run, an index outside the dataset, a block or head
            a run does not have.
    """
    if not runs:
        raise ValueError("static_browser_figure needs at least one run")
    if not 0 <= index < len(dataset):
        raise ValueError(f"index {index} outside the dataset (0..{len(dataset) - 1})")
    sample = dataset[index]
    knowledge_maps = knowledge_maps or {}
    attentions, maps, assignments, blocks = [], [], [], set()
    for name, path in runs.items():
        loaded = _load_run(path, knowledge_maps.get(name), size)
        depth = len(loaded.model.blocks)
        b = _normalise_block(block, depth)
        blocks.add(b)
        attentions.append(_attention(loaded, sample.image, b))
        last = b == depth - 1
        maps.append(_maps_where_built(loaded, sample) if show_knowledge_map and last else {})
        assignments.append(loaded.organ_of_head if last else {})
    shapes = {a.shape for a in attentions}
    if len(shapes) != 1:
        raise ValueError(f"runs give attention of different shapes {sorted(shapes)}; show them separately")
    # a column is named after an organ only when every run assigns that head to it
    names = {h: o for h, o in assignments[0].items() if all(a.get(h) == o for a in assignments)}
    masks = sample.masks if show_masks else None
    where = f"block {blocks.pop()}" if len(blocks) == 1 else f"block {block}"
    return viz.attention_grid(
        [sample.image] * len(runs),
        np.stack(attentions),
        masks=[masks] * len(runs),
        head_names=names,
        heads=heads,
        knowledge_maps=maps,
        threshold=threshold,
        row_labels=list(runs),
        title=title or f"{sample.id}, {where}",
    )


def regimens_on_film(browser: AttentionBrowser, runs: Mapping[str, Any], film: int = 0) -> Figure:
    """One test film, each organ's head under each regimen the browser holds (the paper's Figure 5).

    A SPAN run shows its assigned heads; a run without them the head that is
    best on this film (:func:`spanlib.figures.attention.regimen_comparison`).

    Args:
        browser: the browser over the trained runs and the test films.
        runs: regimen -> run handle (with ``.config``), for the assigned heads.
        film: index into the browser's films.
    """
    sample = browser.dataset[film]
    assigned = {r: dict(run.config.span.assigned_heads) for r, run in runs.items() if run.config.span.assigned_heads}
    return viz.regimen_comparison(sample.image, {r: browser.attention(r, film, -1) for r in browser.runs},
                                  sample.masks, assigned_heads=assigned,
                                  organs=list(getattr(browser.dataset, "mask_names", None) or sample.masks))

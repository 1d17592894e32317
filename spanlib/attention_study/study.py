"""The whole study: every variant of a preset trained (or loaded), scored and summarised."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spanlib.attention_study.config import StudyConfig, StudyPreset, Variant, study_preset
from spanlib.attention_study.scoring import (
    EvalSet,
    attention_maps,
    attention_monitor,
    head_summary,
    load_eval_set,
    score_attention,
    uniform_reference,
)
from spanlib.attention_study.training import ensure_variant
from spanlib.core.device import default_device, torch_threads
from spanlib.attention_study.views import CanvasRenderer, ensure_digits, training_renderer
from spanlib.data.digits import DigitSource, load_digit_source


@dataclass
class VariantResult:
    """One variant's scores.

    Attributes:
        name: variant name.
        label: display label.
        config: its configuration.
        test: per-canvas, per-head scores on the test canvases
            (:func:`~spanlib.attention_study.scoring.score_attention`).
        best_head: the head with the highest mean AP on the validation canvases.
        attention: test attention of the shown canvases, ``[n_show, heads, g, g]``.
        log: training log (with the monitored validation scores).
        seconds: training time.
        cached: loaded from the cache.
    """

    name: str
    label: str
    config: StudyConfig
    test: dict[str, np.ndarray]
    best_head: int
    attention: torch.Tensor
    log: list[dict[str, Any]]
    seconds: float
    cached: bool

    def head_means(self, metric: str) -> np.ndarray:
        """Mean over test canvases, per head, in percent."""
        return head_summary({metric: self.test[metric]})[metric]

    def summary(self) -> dict[str, float]:
        """Headline numbers in percent: best head (chosen on validation) and mean over heads."""
        out: dict[str, float] = {"best_head": float(self.best_head)}
        for metric in self.test:
            per_head = self.head_means(metric)
            out[f"{metric}_best_head"] = float(per_head[self.best_head])
            out[f"{metric}_mean_heads"] = float(np.nanmean(per_head))
        return out


@dataclass
class StudyResults:
    """Everything the chapter shows.

    Attributes:
        preset: the preset's name (``custom`` for a preset object).
        study: the preset.
        data: the digits dataset folder.
        data_source: where the digit images came from (``meta.json``'s ``source``).
        renderer: the training canvases' renderer (for figures of the views).
        variants: name -> result, in the preset's order.
        shown: the test canvases shown in figures.
        reference: flat-attention (chance) scores on the test canvases, percent.
        n_test: test canvases scored.
        n_val: validation canvases used to choose the best head.
        wall_s: seconds :func:`run_study` took (training or loading, and scoring).
    """

    preset: str
    study: StudyPreset
    data: Path
    data_source: str
    renderer: CanvasRenderer
    variants: dict[str, VariantResult]
    shown: EvalSet
    reference: dict[str, float]
    n_test: int
    n_val: int
    wall_s: float = 0.0

    def table(self, names: Sequence[str] | None = None) -> Any:
        """Headline numbers per variant as a DataFrame (percent; best head chosen on validation)."""
        import pandas as pd

        rows = []
        for name in names or list(self.variants):
            r = self.variants[name]
            s = r.summary()
            rows.append({
                "variant": r.label,
                "grid": f"{r.config.grid}x{r.config.grid}",
                "steps": r.config.steps,
                "best head": int(s["best_head"]),
                "AP, best head": s["ap_best_head"],
                "AP, mean of heads": s["ap_mean_heads"],
                "pointing, best head": s["pointing_best_head"],
                "pointing, mean of heads": s["pointing_mean_heads"],
                "digit vs clutter AP, best head": s["clutter_ap_best_head"],
                "digit vs clutter AP, mean of heads": s["clutter_ap_mean_heads"],
                "attention on digit, best head": s["digit_mass_best_head"],
                "attention on clutter, best head": s["clutter_mass_best_head"],
            })
        frame = pd.DataFrame(rows).set_index("variant")
        return frame.round({c: 2 if c.startswith("attention on") else 1 for c in frame.columns})

    def per_head_table(self, metric: str = "ap", names: Sequence[str] | None = None) -> Any:
        """One metric per head (columns) and variant (rows), percent."""
        import pandas as pd

        data = {}
        for name in names or list(self.variants):
            r = self.variants[name]
            data[r.label] = {f"head {h}": v for h, v in enumerate(r.head_means(metric))}
        return pd.DataFrame(data).T.round(1)

    def headline(self) -> dict[str, dict[str, float]]:
        """Per variant: the summary numbers, rounded (for :func:`spanlib.book.runs.record`)."""
        return {name: {k: round(v, 2) for k, v in r.summary().items()} for name, r in self.variants.items()}

    def training_seconds(self) -> float:
        """Training time of every variant together (as recorded when each was trained)."""
        return float(sum(r.seconds for r in self.variants.values()))

    def description(self, root: Path) -> str:
        """The chapter's opening lines: the digits, the canvases (relative to ``root``), the base model, the time."""
        base, model = self.study.base, self.study.base.model
        return "\n".join([
            f"digits: {self.data_source}",
            f"canvases: {self.data.relative_to(root)} ({self.n_test} test and {self.n_val} validation canvases scored; "
            "training canvases drawn on the fly around digits of the training pool)",
            f"base model: ViT, {model.img_size} px input, patch {model.patch_size} ({base.grid}x{base.grid} grid), "
            f"width {model.embed_dim}, {model.depth} blocks, {model.num_heads} heads; batch {base.optim.batch_size}, "
            f"{base.steps} steps per variant",
            f"variants trained or loaded in {self.wall_s:.0f} s (training time as recorded: "
            f"{self.training_seconds():.0f} s)",
        ])


def _variant_result(
    study: StudyPreset,
    variant: Variant,
    seed: int,
    renderer: CanvasRenderer,
    meta: dict[str, Any],
    cache_root: Path,
    sets: tuple[EvalSet, EvalSet, EvalSet],
    num_threads: int | None,
    progress: Callable[[str], None] | None,
) -> VariantResult:
    """One variant trained (or loaded) and scored: best head chosen on validation, scores on test."""
    monitor_set, val_set, test_set = sets
    cfg = study.config(variant.name, seed=seed)
    monitor = attention_monitor(monitor_set, cfg) if study.monitor_every else None
    monitor_key = {"ids": list(monitor_set.ids), "every": study.monitor_every} if monitor else None
    trained = ensure_variant(
        variant.name, cfg, renderer, meta, cache_root / variant.name / f"seed{seed}",
        monitor=monitor, monitor_key=monitor_key, log_every=study.monitor_every or 25,
        num_threads=num_threads, progress=progress,
    )
    backbone = trained.backbone.to(default_device())
    val_ap = head_summary(score_attention(attention_maps(backbone, cfg, val_set.images), val_set))["ap"]
    attention = attention_maps(backbone, cfg, test_set.images)
    trained.backbone.cpu()
    return VariantResult(
        name=variant.name,
        label=variant.label,
        config=cfg,
        test=score_attention(attention, test_set),
        best_head=int(np.nanargmax(val_ap)),
        attention=attention[: study.n_show].clone(),
        log=trained.log,
        seconds=trained.seconds,
        cached=trained.cached,
    )


def run_study(
    preset: str | StudyPreset,
    seed: int = 0,
    data: str | Path | None = None,
    cache_root: str | Path | None = None,
    num_threads: int | None = 2,
    progress: Callable[[str], None] | None = print,
    source: DigitSource | None = None,
) -> StudyResults:
    """Train (or load) and evaluate every variant of a preset.

    Args:
        preset: a preset name (:data:`~spanlib.attention_study.config.PRESETS`;
            it also names the data preset and the runs folder) or a
            :class:`~spanlib.attention_study.config.StudyPreset` (then
            ``data`` and ``cache_root`` are required).
        seed: training seed of every variant.
        data: the digits dataset (default: the preset's generated digits,
            made if missing, see :func:`~spanlib.attention_study.views.ensure_digits`).
        cache_root: variants are cached in ``cache_root/<variant>/seed<seed>``
            (default ``runs/<preset>/attention_study``).
        num_threads: torch threads while training and evaluating.
        progress: called with one line per variant (``None``: silent).
        source: the digit images (default: :func:`spanlib.data.digits.load_digit_source`).

    Returns:
        The results.

    Raises:
        ValueError: a preset object without ``data`` or ``cache_root``.
    """
    from spanlib.core.paths import runs_dir
    from spanlib.data import FolderDataset

    started = time.perf_counter()
    if isinstance(preset, StudyPreset):
        if data is None or cache_root is None:
            raise ValueError("a StudyPreset object needs explicit data and cache_root (no preset name to derive them)")
        study, preset_name = preset, "custom"
    else:
        study, preset_name = study_preset(preset), preset
    source = source or load_digit_source()
    data = Path(data) if data is not None else ensure_digits(preset_name, source=source)
    cache_root = Path(cache_root) if cache_root is not None else runs_dir(preset_name) / "attention_study"
    test = FolderDataset(data, split="test")
    val = FolderDataset(data, split="val")
    meta = test.meta
    renderer = training_renderer(meta, source)
    test_set = load_eval_set(test, study.n_eval)
    val_set = load_eval_set(val, study.n_eval) if len(val) else test_set
    monitor_set = val_set.head(study.n_monitor)
    results: dict[str, VariantResult] = {}
    with torch_threads(num_threads):
        for variant in study.variants:
            results[variant.name] = _variant_result(
                study, variant, seed, renderer, meta, cache_root, (monitor_set, val_set, test_set), num_threads, progress
            )
    return StudyResults(
        preset=preset_name,
        study=study,
        data=data,
        data_source=str(meta.get("source", "unknown")),
        renderer=renderer,
        variants=results,
        shown=test_set.head(study.n_show),
        reference=uniform_reference(test_set),
        n_test=len(test_set.ids),
        n_val=len(val_set.ids),
        wall_s=time.perf_counter() - started,
    )

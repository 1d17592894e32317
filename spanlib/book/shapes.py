"""The attention-shapes chapter's call: every variant of a preset trained (or loaded), scored and summarised.

The study itself (views, training, scoring, results) lives in
:mod:`spanlib.attention_study`; this is what the chapter (and ``make book``)
calls, beside the SPAN chapters' :mod:`spanlib.book.summary` and the BYOL
chapter's :mod:`spanlib.book.byol`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.attention_study.config import StudyPreset, Variant, study_preset
from spanlib.attention_study.scoring import (
    EvalSet,
    attention_maps,
    attention_monitor,
    head_summary,
    load_eval_set,
    score_attention,
    uniform_reference,
)
from spanlib.attention_study.study import StudyResults, VariantResult
from spanlib.attention_study.training import ensure_variant
from spanlib.attention_study.views import CanvasRenderer, ensure_digits, training_renderer
from spanlib.core.device import default_device, torch_threads
from spanlib.core.paths import runs_dir
from spanlib.data import FolderDataset
from spanlib.data.digits import DigitSource, load_digit_source


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

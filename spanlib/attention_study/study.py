"""The study's results: one variant's scores and the whole study's, as the chapter reads them.

The chapter's call that trains (or loads) and scores every variant is
:func:`spanlib.book.shapes.run_study`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spanlib.attention_study.config import StudyConfig, StudyPreset
from spanlib.attention_study.scoring import EvalSet, head_summary
from spanlib.attention_study.views import CanvasRenderer
from spanlib.figures.tables import book_frame


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
        return book_frame(frame.round({c: 2 if c.startswith("attention on") else 1 for c in frame.columns}))

    def per_head_table(self, metric: str = "ap", names: Sequence[str] | None = None) -> Any:
        """One metric per head (columns) and variant (rows), percent."""
        import pandas as pd

        data = {}
        for name in names or list(self.variants):
            r = self.variants[name]
            data[r.label] = {f"head {h}": v for h, v in enumerate(r.head_means(metric))}
        return book_frame(pd.DataFrame(data).T.round(1))

    def headline(self) -> dict[str, dict[str, float]]:
        """Per variant: the summary numbers, rounded (for :func:`spanlib.book.runs.record`)."""
        return {name: {k: round(v, 2) for k, v in r.summary().items()} for name, r in self.variants.items()}

    def recorded(self) -> dict[str, Any]:
        """What the chapter records of the study (keyword arguments of :func:`spanlib.book.runs.record`)."""
        return {"attention_shapes": self.headline(), "attention_shapes_reference": self.reference,
                "attention_shapes_data": self.data_source}

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

"""What the Refine and Represent chapter computes: its data, its runs, refined masks, probes, the reading.

Each function is one step of ``notebooks/09_refine_represent.md``; the
notebook calls them and shows what they return (the tables and figures come
from :mod:`spanlib.figures.probes` and :mod:`spanlib.byol.figures`, the
sentences from :mod:`spanlib.book.readings`). The study itself lives in
:mod:`spanlib.byol`; the chapters' calls of all three studies live here in
``book/`` (:mod:`spanlib.book.summary`, :mod:`spanlib.book.shapes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spanlib.byol.config import ByolConfig, ByolStudy, byol_config, byol_study
from spanlib.byol.data import ByolData, load_priors, load_split
from spanlib.byol.evaluate import (
    mask_quality,
    mean_auc_standard_error,
    paired_standard_error,
    probe_encoder,
    refined_labels,
)
from spanlib.byol.train import ByolRun, build_networks, ensure_byol_runs, run_name
from spanlib.core.paths import project_root, runs_dir


@dataclass
class ChapterData:
    """The chapter's configuration, study, splits with their SLIC priors, and where it caches."""

    preset: str
    config: ByolConfig
    study: ByolStudy
    train: ByolData
    test: ByolData
    train_priors: np.ndarray
    test_priors: np.ndarray
    cache: Path

    @property
    def refine_batch(self) -> slice:
        """The test films the masks are refined and scored on: the first ``study.refine_batch``."""
        return slice(0, min(self.study.refine_batch, len(self.test)))

    @property
    def main_run(self) -> str:
        """The name of the object-level run at the preset's K."""
        return f"object, K = {self.config.k}"


def chapter_data(preset: str, seed: int = 0, data: str | None = None, reader: str = "folder") -> ChapterData:
    """The train and test splits (the generated chest films, or a user's ``data`` read with ``reader``) and their priors."""
    config, study = byol_config(preset, seed=seed), byol_study(preset)
    if data:
        films = data
    else:
        from spanlib.data import make_default_data

        films, reader = make_default_data(preset, project_root() / "data" / "generated" / preset, seed=0)["chest"], "folder"
    cache = runs_dir(preset) / "byol" / "cache"
    train = load_split(films, "train", config.image_size, cache, reader=reader)
    test = load_split(films, "test", config.image_size, cache, reader=reader)
    return ChapterData(preset, config, study, train, test,
                       load_priors(train, config.n_segments, config.slic_compactness, cache),
                       load_priors(test, config.n_segments, config.slic_compactness, cache), cache)


def setup_table(d: ChapterData) -> pd.DataFrame:
    """The setup at a glance: images, encoder, schedule, superpixels, K."""
    c = d.config
    return pd.Series({
        "training images": len(d.train), "test images": len(d.test), "image size": f"{c.image_size} px",
        "encoder": f"tiny ResNet, widths {c.widths}", "C5 grid": f"{c.grid} x {c.grid}",
        "epochs x batch": f"{c.optim.epochs} x {c.optim.batch_size}", "SLIC superpixels asked": c.n_segments,
        "superpixels per image (mean)": round(float((d.train_priors.reshape(len(d.train), -1).max(1) + 1).mean()), 1),
        "K (this preset)": c.k, "K of the ablation": ", ".join(map(str, d.study.ablation_k)),
    }, name="value").to_frame()


def chapter_runs(d: ChapterData) -> dict[str, ByolRun]:
    """Plain BYOL, unrefined superpixels and object-level BYOL at every K of the ablation (cached runs)."""
    configs = {"plain BYOL": d.config.replace(pooling="global"), "superpixels": d.config.replace(pooling="superpixel")}
    configs.update({f"object, K = {k}": d.config.replace(k=k) for k in d.study.ablation_k})
    return ensure_byol_runs(configs, d.train.images, d.train_priors, runs_dir(d.preset) / "byol", d.train.key,
                            workers=d.study.workers)


def refined_test_masks(d: ChapterData, runs: dict[str, ByolRun], seed: int = 0) -> dict[str, np.ndarray]:
    """Each object-level run's refined masks on the first ``study.refine_batch`` test films."""
    batch = d.refine_batch
    return {name: refined_labels(run.target.encoder, d.test.images[batch], d.test_priors[batch], run.config, seed=seed)
            for name, run in runs.items() if run.config.pooling == "object"}


def mask_qualities(d: ChapterData, refined: dict[str, np.ndarray]) -> dict[str, Any]:
    """How well the SLIC priors and each run's refined masks cover the organs (on the refined films)."""
    batch = d.refine_batch
    quality = {"SLIC priors": mask_quality(d.test_priors[batch], d.test.masks[batch], d.test.mask_names)}
    quality.update({name: mask_quality(labels, d.test.masks[batch], d.test.mask_names)
                    for name, labels in refined.items()})
    return quality


def chapter_probes(d: ChapterData, runs: dict[str, ByolRun], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Linear and segmentation probes of a random encoder and of every run (cached beside the runs)."""
    random_init = build_networks(d.config)[0].encoder
    probes = {"random init": probe_encoder(random_init, d.train, d.test, d.config, seed=seed,
                                           cache_dir=d.cache / f"random-init-{run_name(d.config, d.train.key)}")}
    probes.update({name: probe_encoder(run.encoder, d.train, d.test, run.config, seed=seed, cache_dir=run.path)
                   for name, run in runs.items()})
    return probes


def reading_errors(d: ChapterData, probes: dict[str, dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """Standard errors behind the chapter's reading: the main run's mean AUC, and its paired IoU gaps."""
    main = probes[d.main_run]
    auc_se = mean_auc_standard_error(main["auc"], d.test.labels, d.test.label_names)
    iou_se = {ref: paired_standard_error(main["per_image"], probes[ref]["per_image"])
              for ref in ("plain BYOL", "random init", "superpixels")}
    return auc_se, iou_se

"""Configuration of the attention study: one frozen dataclass per variant, built from the component configs.

A variant's :class:`StudyConfig` holds the same component configs as a
pretraining run (model, DINO, optimiser; :mod:`spanlib.core.configs`) with
the study's defaults, plus its loss, views and augmentations. The presets are
the ``attention_study`` sections of the project presets
(``spanlib/presets/<name>.yaml``), read into :data:`PRESETS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spanlib.core.configs import DinoConfig, FrozenConfig, ModelConfig, OptimConfig, load_preset

LOSSES: tuple[str, ...] = ("dino", "nce")
"""Self-supervised losses compared: DINO's cross-entropy and SimCLR's NT-Xent."""

VIEW_MODES: tuple[str, ...] = ("same", "digit_only")
"""``same``: both branches crop one canvas; ``digit_only``: each branch its own canvas sharing only the digit."""


@dataclass(frozen=True)
class StudyModelConfig(ModelConfig):
    """The study's backbone: :class:`~spanlib.core.configs.ModelConfig` with the study's defaults.

    A small grey-input ViT (64 px, patch 8, width 64, 2 blocks, 4 heads), no drop path.
    """

    arch: str = "vit_tiny_patch16_224"
    img_size: int = 64
    patch_size: int | None = 8
    embed_dim: int | None = 64
    depth: int | None = 2
    num_heads: int | None = 4
    in_chans: int = 1
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class StudyDinoConfig(DinoConfig):
    """The study's DINO head and loss: :class:`~spanlib.core.configs.DinoConfig` with the study's defaults.

    A small head with BatchNorm (keeps a small model from collapsing, see
    ``benchmarks/collapse.md``), no teacher-temperature warm-up;
    ``freeze_last_layer`` counts steps (an epoch of the study is one step).
    """

    out_dim: int = 256
    hidden_dim: int = 256
    bottleneck_dim: int = 64
    use_bn_in_head: bool = True
    momentum_teacher: float = 0.99
    freeze_last_layer: int = 0


@dataclass(frozen=True)
class StudyOptimConfig(OptimConfig):
    """The study's optimiser and schedules: :class:`~spanlib.core.configs.OptimConfig` with the study's defaults.

    The study draws fresh canvases every step, so an epoch is one step:
    ``epochs`` is the number of optimizer steps, ``warmup_epochs`` the warm-up steps.
    """

    batch_size: int = 32
    epochs: int = 100
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.1
    clip_grad: float = 3.0


@dataclass(frozen=True)
class StudyConfig(FrozenConfig):
    """One variant of the study: loss, views, model, DINO head, optimiser and augmentations.

    Attributes:
        loss: ``"dino"`` or ``"nce"`` (see :data:`LOSSES`).
        views: ``"same"`` or ``"digit_only"`` (see :data:`VIEW_MODES`).
        crops: crops per branch (each sample gives ``2 * crops`` views).
        model: the ViT (:class:`StudyModelConfig`); ``model.img_size`` is the
            side of the model's input (canvases are resized), the attention
            grid is ``img_size / patch_size``.
        dino: DINO's head and loss (:class:`StudyDinoConfig`, ``dino`` loss only).
        optim: AdamW and DINO's cosine schedules (:class:`StudyOptimConfig`):
            ``epochs`` optimizer steps (0: the untrained network, a reference)
            of ``batch_size`` canvases, ``warmup_epochs`` steps of warm-up.
        crop_scale: area range of the random resized crop.
        rotation_degrees: rotation range, +- degrees.
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's sigma, in pixels of a 100-pixel view.
        mean: normalisation mean of the grey input.
        std: normalisation standard deviation.
        temperature: NT-Xent temperature (``nce``).
        proj_hidden: projection head hidden width (``nce``).
        proj_dim: projection output width (``nce``).
        seed: seed of the initialisation, the sampled digits and the views.
    """

    loss: str = "dino"
    views: str = "digit_only"
    crops: int = 1
    model: StudyModelConfig = field(default_factory=StudyModelConfig)
    dino: StudyDinoConfig = field(default_factory=StudyDinoConfig)
    optim: StudyOptimConfig = field(default_factory=StudyOptimConfig)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotation_degrees: float = 15.0
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    mean: float = 0.5
    std: float = 0.25
    temperature: float = 0.2
    proj_hidden: int = 256
    proj_dim: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [*self._model_problems(), *self._training_problems()]
        if problems:
            raise ValueError("StudyConfig: " + "; ".join(problems))

    def _model_problems(self) -> list[str]:
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.views not in VIEW_MODES:
            problems.append(f"views must be one of {VIEW_MODES}, got {self.views!r}")
        model = self.model
        for name, value in (("crops", self.crops), *((f"model.{n}", getattr(model, n)) for n in
                                                    ("img_size", "patch_size", "embed_dim", "depth", "num_heads"))):
            if value is None or int(value) < 1:
                problems.append(f"{name} must be at least 1, got {value}")
        if (model.patch_size or 0) >= 1 and model.img_size % model.patch_size:
            problems.append(f"img_size {model.img_size} is not a multiple of patch_size {model.patch_size}")
        if (model.num_heads or 0) >= 1 and (model.embed_dim or 0) % model.num_heads:
            problems.append(f"embed_dim {model.embed_dim} is not a multiple of num_heads {model.num_heads}")
        return problems

    def _training_problems(self) -> list[str]:
        problems = []
        optim = self.optim
        if optim.epochs < 0 or optim.warmup_epochs < 0:
            problems.append(f"optim.epochs (steps) and optim.warmup_epochs must be non-negative, got "
                            f"{optim.epochs} and {optim.warmup_epochs}")
        if optim.optimizer != "adamw" or optim.accum_steps != 1:
            problems.append(f"the study trains with adamw and no accumulation, got {optim.optimizer!r} and "
                            f"accum_steps {optim.accum_steps}")
        if self.dino.warmup_teacher_temp_epochs != 0:
            problems.append("the study has no teacher-temperature warm-up: dino.warmup_teacher_temp_epochs must be 0")
        if optim.batch_size < 2:
            problems.append(f"batch_size must be at least 2 (NT-Xent needs negatives), got {optim.batch_size}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            problems.append(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0.0 <= self.blur_p <= 1.0:
            problems.append(f"blur_p must be in [0, 1], got {self.blur_p}")
        for name, value in (("temperature", self.temperature), ("dino.student_temp", self.dino.student_temp),
                            ("dino.teacher_temp", self.dino.teacher_temp), ("std", self.std), ("optim.lr", optim.lr)):
            if not value > 0:
                problems.append(f"{name} must be positive, got {value}")
        return problems

    @property
    def grid(self) -> int:
        """Side of the attention grid (patches per row)."""
        return self.model.img_size // self.model.patch_size

    @property
    def steps(self) -> int:
        """Optimizer steps (``optim.epochs``: an epoch of the study is one step)."""
        return self.optim.epochs


@dataclass(frozen=True)
class Variant(FrozenConfig):
    """A named change to the preset's base configuration.

    Attributes:
        name: short identifier (also the cache folder's name).
        label: how tables and figures name it.
        changes: :class:`StudyConfig` fields that differ from the base (dotted keys reach into
            sections, e.g. ``model.img_size``).
    """

    name: str
    label: str
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPreset(FrozenConfig):
    """A whole study: the base, the variants and the comparisons drawn from them.

    Attributes:
        base: the configuration every variant starts from.
        variants: the variants, trained in this order.
        comparisons: title -> variant names compared side by side.
        n_eval: test (and validation) canvases scored per variant, at most.
        n_show: test canvases shown in the attention figures.
        monitor_every: score the attention on ``n_monitor`` validation
            canvases every this many training steps (0: never).
        n_monitor: validation canvases scored while training.
    """

    base: StudyConfig
    variants: tuple[Variant, ...]
    comparisons: Mapping[str, tuple[str, ...]]
    n_eval: int = 200
    n_show: int = 2
    monitor_every: int = 0
    n_monitor: int = 100

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        for title, members in self.comparisons.items():
            missing = sorted(set(members) - set(names))
            if missing:
                raise ValueError(f"comparison {title!r} names unknown variants {missing}")
        if self.n_eval < 1 or self.n_show < 1 or self.n_monitor < 1 or self.monitor_every < 0:
            raise ValueError(
                f"n_eval, n_show, n_monitor must be positive and monitor_every non-negative, got "
                f"{self.n_eval}, {self.n_show}, {self.n_monitor}, {self.monitor_every}"
            )
        for variant in self.variants:
            self.base.replace(**dict(variant.changes))  # validates every variant up front

    def config(self, name: str, seed: int | None = None) -> StudyConfig:
        """The configuration of one variant (with ``seed`` when given).

        Raises:
            KeyError: an unknown variant.
        """
        for variant in self.variants:
            if variant.name == name:
                cfg = self.base.replace(**dict(variant.changes))
                return cfg if seed is None else cfg.replace(seed=seed)
        raise KeyError(f"no variant {name!r}; known: {[v.name for v in self.variants]}")

    def label(self, name: str) -> str:
        """The display label of a variant."""
        for variant in self.variants:
            if variant.name == name:
                return variant.label
        raise KeyError(f"no variant {name!r}")


PRESET_NAMES: tuple[str, ...] = ("smoke", "book", "paper")
"""The project presets that hold an ``attention_study`` section."""

PRESETS: dict[str, StudyPreset] = {
    name: StudyPreset.from_dict(load_preset(name)["attention_study"], where=f"presets/{name}.yaml: attention_study")
    for name in PRESET_NAMES
}
"""Study presets by name (data, not code)."""


def study_preset(name: str) -> StudyPreset:
    """One preset of :data:`PRESETS`.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown attention-study preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]

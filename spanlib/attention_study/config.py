"""Configuration of the attention study: one frozen dataclass per variant, presets as data.

The presets are ``spanlib/attention_study/presets.yaml``, read into :data:`PRESETS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spanlib.core.configs import DinoConfig, FrozenConfig, ModelConfig, read_package_yaml

LOSSES: tuple[str, ...] = ("dino", "nce")
"""Self-supervised losses compared: DINO's cross-entropy and SimCLR's NT-Xent."""

VIEW_MODES: tuple[str, ...] = ("same", "digit_only")
"""``same``: both branches crop one canvas; ``digit_only``: each branch its own canvas sharing only the digit."""


@dataclass(frozen=True)
class StudyConfig(FrozenConfig):
    """One variant of the study: model, loss, views and schedule.

    Attributes:
        loss: ``"dino"`` or ``"nce"`` (see :data:`LOSSES`).
        views: ``"same"`` or ``"digit_only"`` (see :data:`VIEW_MODES`).
        crops: crops per branch (each sample gives ``2 * crops`` views).
        img_size: side of the model's input in pixels (canvases are resized).
        patch_size: ViT patch side; the attention grid is ``img_size / patch_size``.
        embed_dim: ViT width.
        depth: ViT blocks.
        num_heads: attention heads per block.
        batch_size: canvases per step.
        steps: optimizer steps (0: the untrained network, a reference).
        lr: peak learning rate (AdamW), after ``warmup_steps`` of linear warm-up.
        min_lr: learning rate at the end of the cosine decay.
        warmup_steps: linear warm-up steps.
        weight_decay: weight decay at the start (cosine schedule, as DINO).
        weight_decay_end: weight decay at the end.
        clip_grad: per-parameter gradient norm clip (0: none).
        crop_scale: area range of the random resized crop.
        rotation_degrees: rotation range, +- degrees.
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's sigma, in pixels of a 100-pixel view.
        mean: normalisation mean of the grey input.
        std: normalisation standard deviation.
        temperature: NT-Xent temperature (``nce``).
        proj_hidden: projection head hidden width (``nce``).
        proj_dim: projection output width (``nce``).
        out_dim: DINO prototypes (``dino``).
        hidden_dim: DINO head hidden width.
        bottleneck_dim: DINO head bottleneck.
        use_bn_in_head: BatchNorm in the DINO head (keeps a small model from
            collapsing, see ``benchmarks/collapse.md``).
        student_temp: DINO student temperature.
        teacher_temp: DINO teacher temperature.
        momentum_teacher: EMA momentum at the start (cosine to 1).
        freeze_last_layer_steps: steps during which DINO's prototype layer is frozen.
        seed: seed of the initialisation, the sampled digits and the views.
    """

    loss: str = "dino"
    views: str = "digit_only"
    crops: int = 1
    img_size: int = 64
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    batch_size: int = 32
    steps: int = 100
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.1
    clip_grad: float = 3.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotation_degrees: float = 15.0
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    mean: float = 0.5
    std: float = 0.25
    temperature: float = 0.2
    proj_hidden: int = 256
    proj_dim: int = 64
    out_dim: int = 256
    hidden_dim: int = 256
    bottleneck_dim: int = 64
    use_bn_in_head: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    momentum_teacher: float = 0.99
    freeze_last_layer_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.views not in VIEW_MODES:
            problems.append(f"views must be one of {VIEW_MODES}, got {self.views!r}")
        for name in ("crops", "img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0 or self.warmup_steps < 0:
            problems.append(f"steps and warmup_steps must be non-negative, got {self.steps} and {self.warmup_steps}")
        if self.patch_size >= 1 and self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_heads >= 1 and self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be at least 2 (NT-Xent needs negatives), got {self.batch_size}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            problems.append(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0.0 <= self.blur_p <= 1.0:
            problems.append(f"blur_p must be in [0, 1], got {self.blur_p}")
        for name in ("temperature", "student_temp", "teacher_temp", "std", "lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("StudyConfig: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        """Side of the attention grid (patches per row)."""
        return self.img_size // self.patch_size

    def model_config(self) -> ModelConfig:
        """The backbone for :func:`spanlib.model.vit.build_vit` (grey input, no drop path)."""
        return ModelConfig(
            arch="vit_tiny_patch16_224",
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            in_chans=1,
            drop_path_rate=0.0,
        )

    def dino_config(self) -> DinoConfig:
        """The DINO head and loss settings (no teacher-temperature warm-up)."""
        return DinoConfig(
            out_dim=self.out_dim,
            hidden_dim=self.hidden_dim,
            bottleneck_dim=self.bottleneck_dim,
            use_bn_in_head=self.use_bn_in_head,
            student_temp=self.student_temp,
            teacher_temp=self.teacher_temp,
            warmup_teacher_temp=self.teacher_temp,
            warmup_teacher_temp_epochs=0,
            momentum_teacher=self.momentum_teacher,
            freeze_last_layer=self.freeze_last_layer_steps,
        )


@dataclass(frozen=True)
class Variant(FrozenConfig):
    """A named change to the preset's base configuration.

    Attributes:
        name: short identifier (also the cache folder's name).
        label: how tables and figures name it.
        changes: :class:`StudyConfig` fields that differ from the base.
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


PRESETS: dict[str, StudyPreset] = {
    name: StudyPreset.from_dict(entry, where=f"presets.yaml: {name}")
    for name, entry in read_package_yaml("spanlib.attention_study", "presets.yaml")["presets"].items()
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

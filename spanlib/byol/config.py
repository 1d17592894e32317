"""Configuration of object-level BYOL ("Refine and Represent"): one frozen dataclass, presets as data.

:class:`ByolConfig` holds everything a run depends on; it is saved as JSON
beside every run, and a cached run is reused only when its saved config is
equal to the one asked for (:func:`spanlib.byol.train.ensure_byol`).
The presets are data, the ``byol`` sections of ``spanlib/presets/<name>.yaml``: :data:`BYOL_PRESETS`
maps a preset name (``smoke``, ``book``, ``paper``) to the fields that differ
from the defaults, :data:`BYOL_STUDIES` to the chapter's plan;
:func:`byol_config` resolves a preset plus overrides. A notebook never
branches on the preset name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spanlib.core.configs import FrozenConfig, OptimConfig, load_preset

POOLINGS: tuple[str, ...] = ("object", "superpixel", "global")
"""``object``: BYOL loss per refined object mask; ``superpixel``: per SLIC superpixel, unrefined (the
priors alone, an ablation); ``global``: plain BYOL (one mask = the whole image)."""


@dataclass(frozen=True)
class ByolOptimConfig(OptimConfig):
    """BYOL's optimiser and schedules: :class:`~spanlib.core.configs.OptimConfig` with BYOL's defaults.

    AdamW (no weight decay on biases and norm parameters), learning rate with
    ``warmup_epochs`` of linear warm-up then cosine decay to ``min_lr`` (0),
    weight decay constant (``weight_decay_end`` = ``weight_decay``), no clipping.
    """

    batch_size: int = 64
    epochs: int = 4
    lr: float = 2e-3
    min_lr: float = 0.0
    warmup_epochs: int = 1
    weight_decay: float = 1e-4
    weight_decay_end: float = 1e-4
    clip_grad: float = 0.0


@dataclass(frozen=True)
class ByolConfig(FrozenConfig):
    """One object-level (or plain) BYOL run.

    Attributes:
        pooling: ``"object"`` (refined masks, mask pooling), ``"superpixel"``
            (the SLIC priors as masks, no refinement) or ``"global"`` (plain
            BYOL: global average pooling, i.e. one all-ones mask).
        image_size: side of the original images and of both views, pixels.
        widths: channels of the tiny ResNet's stages (a stride-2 stem, then
            stride 1 for the first stage and 2 for each later one); the last
            stage is "C5" (pooled for the loss), the one before it "C4"
            (clustered, as the paper clusters C4).
        proj_hidden: hidden width of the projector and the predictor MLPs.
        proj_dim: output width of the projector and the predictor.
        n_segments: SLIC superpixels asked for per image (the priors).
        slic_compactness: SLIC compactness for grey images in [0, 1].
        k: clusters of the K-means that merges superpixels into object masks
            (over all superpixels of a mini-batch, as in the paper).
        kmeans_iters: Lloyd iterations of the K-means.
        min_mask_area: a mask counts as present in a view when its carried
            (ROI-aligned) area covers at least this many C5 cells.
        optim: passes over the training images (``epochs``), images per step
            (``batch_size``), AdamW's learning rate and weight decay and their
            schedules (:class:`ByolOptimConfig`).
        momentum: base EMA momentum of the target (cosine to 1, as BYOL).
        crop_scale: area range of BYOL's random resized crop.
        jitter_p: probability of brightness/contrast jitter (BYOL: 0.8).
        brightness: brightness jitter strength (BYOL: 0.4).
        contrast: contrast jitter strength (BYOL: 0.4).
        blur_p: Gaussian blur probability of view 1 and view 2 (BYOL: 1.0, 0.1).
        blur_kernel: Gaussian blur kernel side (BYOL: 23 at 224 px, ~10%).
        blur_sigma: Gaussian blur sigma range in pixels.
        solarize_p: solarization probability of view 1 and view 2 (BYOL: 0, 0.2).
        mean: normalisation mean of the grey images.
        std: normalisation standard deviation.
        n_train: training images used (``None``: the whole training split).
        bf16: bfloat16 autocast of the encoder, where it is native (CUDA, or a
            CPU with AVX512-BF16 / AMX: about 2x faster there; elsewhere it is
            emulated, about 10x slower, and float32 is used instead,
            :func:`spanlib.core.device.bf16_fast`); batch norm, heads and loss
            stay float32.
        threads: torch intra-op threads while training (restored after). One
            by default: on the shared 2-core machines a second OpenMP thread
            made these small steps about 19x slower whenever another process
            held a core (``benchmarks/byol.md``); parallel runs use one
            process per core instead.
        seed: initialisation, batch order and augmentation seed.
    """

    pooling: str = "object"
    image_size: int = 64
    widths: tuple[int, ...] = (16, 32, 64)
    proj_hidden: int = 256
    proj_dim: int = 64
    n_segments: int = 24
    slic_compactness: float = 0.1
    k: int = 8
    kmeans_iters: int = 10
    min_mask_area: float = 0.5
    optim: ByolOptimConfig = field(default_factory=ByolOptimConfig)
    momentum: float = 0.99
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_kernel: int = 7
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    mean: float = 0.5
    std: float = 0.25
    n_train: int | None = None
    bf16: bool = True
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least two stages (C4 and C5), got {self.widths}")
        stride = 2 ** len(self.widths)
        if self.image_size % stride:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {stride} for {len(self.widths)} stages"
            )
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.n_segments < 1:
            raise ValueError(f"n_segments must be at least 1, got {self.n_segments}")
        if self.optim.epochs < 1 or self.optim.batch_size < 2:
            raise ValueError(
                f"optim.epochs must be >= 1 and optim.batch_size >= 2, got {self.optim.epochs} and {self.optim.batch_size}"
            )
        if self.optim.optimizer != "adamw" or self.optim.accum_steps != 1:
            raise ValueError(f"BYOL trains with adamw and no accumulation, got {self.optim.optimizer!r} and "
                             f"accum_steps {self.optim.accum_steps}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be an increasing pair in (0, 1], got {self.crop_scale}")
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")

    @property
    def grid(self) -> int:
        """Side of the C5 feature map."""
        return self.image_size // 2 ** len(self.widths)


_PRESETS: dict[str, dict[str, Any]] = {name: load_preset(name)["byol"] for name in ("smoke", "book", "paper")}

# the fields as a built config holds them (lists of the YAML as tuples), each preset checked on import
BYOL_PRESETS: dict[str, dict[str, Any]] = {
    name: {key: getattr(ByolConfig.from_dict(entry["config"], where=f"presets/{name}.yaml: byol.config"), key)
           for key in entry["config"]}
    for name, entry in _PRESETS.items()
}
"""preset -> fields of :class:`ByolConfig` that differ from the defaults (the ``book`` preset)."""


@dataclass(frozen=True)
class ByolStudy(FrozenConfig):
    """What the book's chapter runs for a preset, beside the runs' own config.

    Attributes:
        ablation_k: the values of K of the ablation (the preset's own K among them).
        workers: runs trained at once, one process each (one per core).
        n_show: test images shown in the figures.
        refine_batch: test images clustered together when masks are shown
            and scored (as one training batch is).
    """

    ablation_k: tuple[int, ...]
    workers: int = 1
    n_show: int = 4
    refine_batch: int = 64


BYOL_STUDIES: dict[str, ByolStudy] = {
    name: ByolStudy.from_dict(entry["study"], where=f"presets/{name}.yaml: byol.study") for name, entry in _PRESETS.items()
}
"""preset -> what the chapter runs (data, like :data:`BYOL_PRESETS`)."""


def byol_study(preset: str) -> ByolStudy:
    """The chapter's plan for a preset.

    Raises:
        ValueError: unknown preset.
    """
    if preset not in BYOL_STUDIES:
        raise ValueError(f"unknown BYOL preset {preset!r}; known: {', '.join(BYOL_STUDIES)}")
    return BYOL_STUDIES[preset]


def byol_config(preset: str, **overrides: Any) -> ByolConfig:
    """The config of a preset with some fields overridden.

    Raises:
        ValueError: unknown preset or field.
    """
    if preset not in BYOL_PRESETS:
        raise ValueError(f"unknown BYOL preset {preset!r}; known: {', '.join(BYOL_PRESETS)}")
    return ByolConfig.from_dict(_PRESETS[preset]["config"], where=f"presets/{preset}.yaml: byol.config").replace(
        **overrides
    )

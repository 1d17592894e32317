"""Configuration: frozen dataclasses, one per component, loaded from presets.

Every configuration of the library is a frozen dataclass that subclasses
:class:`FrozenConfig` (in :mod:`spanlib.core.frozen`), which gives it one way to become plain data
(:meth:`~FrozenConfig.to_dict`, :meth:`~FrozenConfig.to_yaml`), to be read back
(:meth:`~FrozenConfig.from_dict`, :meth:`~FrozenConfig.from_yaml`, with an error
naming any unknown key) and to be changed (:meth:`~FrozenConfig.replace`, which
takes dotted keys such as ``"optim.epochs"``)::

    @dataclass(frozen=True)
    class MyConfig(FrozenConfig):
        size: int = 3

A preset is data (``spanlib/presets/<name>.yaml``), never an ``if`` in a
notebook. A regimen (``dino``, ``span_deformable``, ...) is a named set of
overrides applied on top of a preset. The resolved configuration is saved as
YAML beside every run so that the run can be repeated or resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from spanlib.core.frozen import (  # noqa: F401 - the base and its helpers, re-exported where callers have found them
    FrozenConfig,
    merge,
    parse_override,
    parse_overrides,
    read_yaml,
    to_plain,
    unflatten,
)
from spanlib.core.mapspec import MapSpec


# ---------------------------------------------------------------------------- the pretraining run


@dataclass(frozen=True)
class ModelConfig(FrozenConfig):
    """The ViT backbone.

    Attributes:
        arch: a timm model name; ``embed_dim``, ``depth``, ``num_heads`` and
            ``patch_size`` override its defaults when set.
        img_size: side of the global views, in pixels.
        pretrained_path: a local checkpoint to initialise the backbone from
            (timm or DINO layout); never downloaded.
        stem: how images become tokens: ``patch`` (one strided convolution,
            ViT's own) or ``conv`` (a stack of stride-2 3x3 convolutions with
            the same total stride, Xiao et al. 2021, "Early convolutions help
            transformers see better"); see :class:`spanlib.model.vit.ConvStem`.
    """

    arch: str = "vit_small_patch16_224"
    img_size: int = 224
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    in_chans: int = 3
    drop_path_rate: float = 0.1
    pretrained_path: str | None = None
    stem: str = "patch"


@dataclass(frozen=True)
class DinoConfig(FrozenConfig):
    """DINO head and loss, defaults as the DINO reference code."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    freeze_last_layer: int = 1


@dataclass(frozen=True)
class SpanConfig(FrozenConfig):
    """The SPAN regularizer.

    Attributes:
        assigned_heads: organ name -> head index of the last block. Empty
            means plain DINO.
        lambda_inclusion: weight of the reward for attention mass inside K.
        lambda_exclusion: weight of the penalty on attention mass outside K.
        knowledge_maps: which prior K: a :class:`~spanlib.core.mapspec.MapSpec`
            (``{kind: triangular | global | deformable | masks, location}``);
            its folder is placed by :func:`spanlib.core.mapspec.maps_folder`.
            A string saved by an older run is converted (see
            :meth:`~spanlib.core.mapspec.MapSpec.from_value`).
        renormalize: renormalise each assigned head's patch attention to sum
            to one before the terms (see :mod:`spanlib.model.span` for why).
        lambda_coverage: weight of the coverage term, an extension of the
            book and not the paper's method: KL from the normalised map to
            the head's attention (:func:`spanlib.model.span.coverage_loss`).
            0 (the default) is the paper's regularizer alone.
        attention_lr_scale: learning-rate multiplier of the last block's
            query/key/value projection and of the position embedding in a
            SPAN run (an extension; 1 = the paper's single learning rate).
            With Adam the step of a weight is set by the learning rate, not
            by the weight of a loss term, so a short run moves the assigned
            heads only as far as this lets it; the position embedding is what
            lets a head find where an organ lies.
    """

    assigned_heads: dict[str, int] = field(default_factory=dict)
    lambda_inclusion: float = 0.0
    lambda_exclusion: float = 0.0
    knowledge_maps: MapSpec | None = None
    renormalize: bool = True
    lambda_coverage: float = 0.0
    attention_lr_scale: float = 1.0


@dataclass(frozen=True)
class ViewConfig(FrozenConfig):
    """How views are made.

    ``kind="dino"``: DINO's domain-agnostic views (global and local crops,
    colour jitter, blur, solarization). ``kind="cxr"``: the book's chest views
    after MoCo-CXR plus SPAN's additions (crop, flip, rotation, translation,
    brightness, contrast, sharpness), global crops only. ``kind="paper"``: the
    SPAN appendix's Table A.2 as written (:mod:`spanlib.pretrain.paper_views`;
    its probabilities and ranges are the table's, not these fields).
    """

    kind: str = "dino"
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_crop_size: int = 96
    rotation_degrees: float = 10.0
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    sharpness: float = 2.0
    mean: float = 0.5
    std: float = 0.25


@dataclass(frozen=True)
class OptimConfig(FrozenConfig):
    """Optimiser and schedules (per iteration, as DINO).

    Attributes:
        lr: the peak learning rate; times the total batch / 256 (DINO's linear
            scaling rule) when ``lr_batch_scaling``, else as it is (the SPAN
            appendix gives SPAN's 1e-4 as the rate itself).
    """

    optimizer: str = "adamw"
    batch_size: int = 64
    accum_steps: int = 1
    epochs: int = 100
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    lr_batch_scaling: bool = True


@dataclass(frozen=True)
class RunConfig(FrozenConfig):
    """Everything else about a run.

    Attributes:
        data: a dataset folder, or several (a list in YAML) pooled into one
            pretraining set (the shared start trains on every generated set).
        train: ``False`` for a baseline that is not trained (``random``, and
            ``dino_start``: the shared start itself, frozen).
        init_from: a finished run (its directory or ``checkpoint.pt``) whose
            student, teacher and DINO centre this run starts from: the shared
            pretrained start every regimen of the book continues. The
            optimiser and the schedules start afresh.
    """

    seed: int = 0
    data: str | tuple[str, ...] | None = None
    reader: str = "folder"
    split: str = "train"
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    train: bool = True
    init_from: str | None = None


@dataclass(frozen=True)
class Config(FrozenConfig):
    """A whole pretraining run."""

    name: str = "run"
    regimen: str = "dino"
    model: ModelConfig = field(default_factory=ModelConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    span: SpanConfig = field(default_factory=SpanConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


REGIMENS = ("random", "dino_start", "dino", "dino_cxr", "span_triangular", "span_global", "span_deformable",
            "span_coverage")
"""Every regimen, baselines first. ``dino_start`` is the shared pretrained start, frozen: DINO on every generated
set pooled (chest phantoms included), the book's counterpart of the paper's ImageNet "DINO" row; ``dino`` continues
it with DINO's own views on chest films, ``dino_cxr`` with the chest views; the three SPAN regimens of the paper add
its regularizer with one kind of knowledge map each; ``span_coverage`` is the book's extension, not the paper's
method: the deformable maps with the coverage term (:func:`spanlib.model.span.coverage_loss`). How fast the assigned
heads' projection and the position embedding step (``span.attention_lr_scale``) is a preset's setting."""


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("spanlib.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """Read a preset file: ``base`` config plus per-regimen overrides."""
    path = resources.files("spanlib.presets") / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {preset_names()}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "base" not in data:
        raise ValueError(f"preset file {name}.yaml must have a 'base' mapping")
    return data


def resolve(preset: str, regimen: str, overrides: dict[str, Any] | None = None, dataset: str = "chest") -> Config:
    """The configuration of one run: preset base, regimen, dataset, then overrides.

    Args:
        preset: ``smoke``, ``book`` or ``paper`` (or any file in ``spanlib/presets``).
        regimen: one of :data:`REGIMENS`.
        overrides: dotted keys, e.g. ``{"optim.epochs": 2, "run.seed": 1}``.
        dataset: ``chest`` (the default) or another entry of the preset's
            ``datasets`` mapping (e.g. ``parts``: its data and part regions).
    """
    if regimen not in REGIMENS:
        raise ValueError(f"unknown regimen {regimen!r}; choose from {REGIMENS}")
    data = load_preset(preset)
    merged = merge(data["base"], (data.get("regimens") or {}).get(regimen, {}))
    if dataset != "chest":
        datasets = data.get("datasets") or {}
        if dataset not in datasets:
            raise ValueError(f"preset {preset!r} has no dataset {dataset!r}; it has {['chest', *datasets]}")
        extra = dict(datasets[dataset])
        heads = extra.pop("assigned_heads", None)
        merged = merge(merged, extra)
        if heads is not None and merged.get("span", {}).get("assigned_heads"):
            merged["span"] = {**merged["span"], "assigned_heads": heads}
    merged = merge(merged, unflatten(overrides or {}))
    merged.setdefault("name", f"{preset}-{regimen}" + ("" if dataset == "chest" else f"-{dataset}"))
    merged["regimen"] = regimen
    return Config.from_dict(merged)


@dataclass(frozen=True)
class StartSpec:
    """A preset's shared pretrained start (its ``start`` section).

    Attributes:
        config: the start's own run (plain DINO, no assigned heads).
        datasets: the generated sets pooled for it, e.g. ``("chest", "parts", "digits")``.
        continued: whether the preset's regimens continue the start by default
            (else they train from random weights and the start is the frozen
            ``dino_start`` baseline only).
    """

    config: Config
    datasets: tuple[str, ...]
    continued: bool


def resolve_start(preset: str, overrides: dict[str, Any] | None = None) -> StartSpec | None:
    """A preset's shared pretrained start, or ``None`` for a preset without one.

    The ``start`` section holds ``datasets``, ``continued`` and overrides of
    the preset's ``base`` (DINO's own views, its own epochs). The ``paper``
    preset has none: it starts from DINO's ImageNet checkpoint instead.
    """
    data = load_preset(preset)
    section = data.get("start")
    if not section:
        return None
    section = dict(section)
    datasets = tuple(section.pop("datasets", ("chest",)))
    continued = bool(section.pop("continued", True))
    merged = merge(merge(data["base"], section), unflatten(overrides or {}))
    merged.update(name=f"{preset}-start", regimen="dino")
    return StartSpec(Config.from_dict(merged), datasets, continued)


def load_config(path: str | Path) -> Config:
    """Read a run's saved ``config.yaml``."""
    return Config.from_yaml(path)

"""Configuration: frozen dataclasses, one per component, loaded from presets.

A preset is data (``spanlib/presets/<name>.yaml``), never an ``if`` in a
notebook. A regimen (``dino``, ``span_deformable``, ...) is a named set of
overrides applied on top of a preset. The resolved configuration is saved as
YAML beside every run so that the run can be repeated or resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ModelConfig:
    """The ViT backbone.

    Attributes:
        arch: a timm model name; ``embed_dim``, ``depth``, ``num_heads`` and
            ``patch_size`` override its defaults when set.
        img_size: side of the global views, in pixels.
        pretrained_path: a local checkpoint to initialise the backbone from
            (timm or DINO layout); never downloaded.
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


@dataclass(frozen=True)
class DinoConfig:
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
class SpanConfig:
    """The SPAN regularizer.

    Attributes:
        assigned_heads: organ name -> head index of the last block. Empty
            means plain DINO.
        lambda_inclusion: weight of the reward for attention mass inside K.
        lambda_exclusion: weight of the penalty on attention mass outside K.
        knowledge_maps: ``triangular`` (computed on the fly), ``masks`` (the
            ground truth, an oracle), or a directory written by
            ``python -m spanlib templates build``.
        renormalize: renormalise each assigned head's patch attention to sum
            to one before the terms (see :mod:`spanlib.model.span` for why).
    """

    assigned_heads: dict[str, int] = field(default_factory=dict)
    lambda_inclusion: float = 0.0
    lambda_exclusion: float = 0.0
    knowledge_maps: str | None = None
    renormalize: bool = True


@dataclass(frozen=True)
class ViewConfig:
    """How views are made.

    ``kind="dino"``: DINO's domain-agnostic views (global and local crops,
    colour jitter, blur, solarization). ``kind="cxr"``: the chest views after
    MoCo-CXR plus SPAN's additions (crop, flip, rotation, translation,
    brightness, contrast, sharpness), global crops only.
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
class OptimConfig:
    """Optimiser and schedules (per iteration, as DINO)."""

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


@dataclass(frozen=True)
class RunConfig:
    """Everything else about a run."""

    seed: int = 0
    data: str | None = None
    split: str = "train"
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    train: bool = True


@dataclass(frozen=True)
class Config:
    """A whole pretraining run."""

    name: str = "run"
    regimen: str = "dino"
    model: ModelConfig = field(default_factory=ModelConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    span: SpanConfig = field(default_factory=SpanConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, "config")

    def replace(self, **overrides: Any) -> "Config":
        """Return a copy with dotted-key overrides, e.g. ``{"optim.epochs": 3}``."""
        return Config.from_dict(merge(self.to_dict(), unflatten(overrides)))


REGIMENS = ("random", "dino", "dino_cxr", "span_triangular", "span_global", "span_deformable")


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and out.get(key):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


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


def load_config(path: str | Path) -> Config:
    """Read a run's saved ``config.yaml``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    return Config.from_dict(data)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from the command line; the value is read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed

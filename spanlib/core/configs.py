"""Configuration: frozen dataclasses, one per component, loaded from presets.

Every configuration of the library is a frozen dataclass that subclasses
:class:`FrozenConfig`, which gives it one way to become plain data
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

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Self

import yaml


# ---------------------------------------------------------------------------- plain data and dotted overrides


def to_plain(value: Any) -> Any:
    """Plain YAML/JSON-ready data: dataclasses and mappings to dicts, tuples to lists, recursively."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and out.get(key):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


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


def parse_overrides(items: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Dotted overrides as a flat mapping: a mapping as is, or ``key=value`` strings parsed."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    return dict(parse_override(text) for text in items)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data; a missing file raises ``FileNotFoundError`` naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None


def read_package_yaml(package: str, filename: str) -> Any:
    """A YAML data file shipped inside a package (e.g. ``("spanlib.byol", "presets.yaml")``)."""
    path = resources.files(package) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{package}: no data file {filename!r}")
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------- the base


class FrozenConfig:
    """Base of every configuration; subclasses are ``@dataclass(frozen=True)``.

    Gives plain data (:meth:`to_dict`, :meth:`to_yaml`), reading back with
    clear errors (:meth:`from_dict`, :meth:`from_yaml`) and changes with dotted
    keys (:meth:`replace`, :meth:`with_overrides`). Fields annotated with
    another dataclass are nested sections; fields annotated as tuples come
    back as tuples from YAML or JSON lists.
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready data (nested sections as dicts, tuples as lists)."""
        return to_plain(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The configuration as YAML text, also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> Self:
        """The configuration a :meth:`to_dict` wrote (a mapping, nested for nested sections).

        Args:
            data: field -> value; missing fields keep their defaults.
            where: how errors name the source (the class name by default).

        Raises:
            ValueError: unknown keys (named, with the closest known ones), a
                section that is not a mapping, a missing required field, or
                a value the class's own checks refuse.
        """
        return _build(cls, data, where or cls.__name__)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Read a configuration written by :meth:`to_yaml`."""
        return cls.from_dict(read_yaml(path), where=str(path))

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated again.

        Keys may be dotted to reach into sections (``cfg.replace(**{"optim.epochs": 3})``);
        a mapping given for a section is merged into it; lists become tuples
        where the field is a tuple.

        Raises:
            ValueError: an unknown field (named) or an invalid value.
        """
        if not changes:
            return self
        return type(self).from_dict(merge(self.to_dict(), unflatten(changes)))

    def with_overrides(self, overrides: Mapping[str, Any] | Iterable[str] | None) -> Self:
        """:meth:`replace` with dotted overrides given as a mapping or as ``key=value`` strings."""
        return self.replace(**parse_overrides(overrides))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(unknown: list[str], known: Iterable[str]) -> str:
    """`` (did you mean 'epochs' for 'epochz'?)`` for the unknown keys that look like a known one."""
    pairs = [(difflib.get_close_matches(k, list(known), n=1), k) for k in unknown]
    guesses = [f"{close[0]!r} for {k!r}" for close, k in pairs if close]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        name = cls.__name__
        raise ValueError(
            f"{where}: unknown {name} fields {unknown}{_suggest(unknown, known)}; "
            f"{name} has no fields by those names, it has {sorted(known)}"
        )
    missing = sorted(
        name for name, f in known.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{where}: missing required {cls.__name__} fields {missing}")
    hints = _hints(cls)
    kwargs = {name: _coerce(hints.get(name, Any), value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` shaped as ``hint`` says: a mapping into a dataclass, a list into a tuple (recursively)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                shaped = _coerce(arg, value, where)
                if shaped is not value:
                    return shaped
        return value
    if isinstance(hint, type) and is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(args) != len(value):
            return tuple(value)
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) and isinstance(value, Mapping):
        args = typing.get_args(hint)
        if len(args) == 2 and _shapes(args[1]):
            return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


def _shapes(hint: Any) -> bool:
    """Whether :func:`_coerce` may change values of type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_shapes(a) for a in typing.get_args(hint))
    return (isinstance(hint, type) and is_dataclass(hint)) or origin in (tuple, dict, Mapping)


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
class ViewConfig(FrozenConfig):
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
class OptimConfig(FrozenConfig):
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


REGIMENS = ("random", "dino_start", "dino", "dino_cxr", "span_triangular", "span_global", "span_deformable")
"""Every regimen, baselines first. ``dino_start`` is the shared pretrained start, frozen: the paper's "DINO" row
(ImageNet weights, no chest training); ``dino`` continues it with DINO's own views on chest films, ``dino_cxr``
with the chest views, the SPAN regimens add the regularizer with one kind of knowledge map each."""


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

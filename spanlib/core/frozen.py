"""The one frozen-config base of the library, and plain data with dotted overrides.

Every configuration of the library is a frozen dataclass that subclasses
:class:`FrozenConfig` (see :mod:`spanlib.core.configs` for how a preset
becomes one). This module knows no configuration of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Self

import yaml

__all__ = ["FrozenConfig", "merge", "parse_override", "parse_overrides", "read_yaml", "to_plain", "unflatten"]


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
        if isinstance(value, hint):
            return value
        if hasattr(hint, "from_value"):  # a value class with its own reading (MapSpec: old strings too)
            return hint.from_value(value, where)
        return _build(hint, value, where)
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

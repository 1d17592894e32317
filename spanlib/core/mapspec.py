"""A knowledge map named by a typed value, and the one rule that says where its maps live.

A SPAN run names its prior K by a :class:`MapSpec`: its ``kind`` (one of
:data:`MAP_KINDS`, or the oracle :data:`ORACLE`) and, once resolved, the
folder its maps live in. Presets give the kind only (``knowledge_maps: {kind:
deformable}``); :func:`maps_folder` places the folder for a preset, one of its
datasets or a user's own data, and every caller (the book's runs and summary,
the knowledge-map chapter, the command line) asks it, never builds the path
itself. Every built kind, the heuristic included, is written by the builder
and read through :mod:`spanlib.maps.store`.

Configurations saved before the spec was typed hold a string in
``span.knowledge_maps``; :meth:`MapSpec.from_value` converts them (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanlib.core.paths import project_root, runs_dir

MAP_KINDS: tuple[str, ...] = ("triangular", "global", "deformable")
"""The kinds of knowledge map the builder makes, each the prior of regimen ``span_<kind>``."""

ORACLE = "masks"
"""The oracle kind: each sample's own ground-truth masks (tests and upper bounds); nothing is built."""

SPEC_KINDS: tuple[str, ...] = (*MAP_KINDS, ORACLE)
"""Every kind a :class:`MapSpec` may name."""


@dataclass(frozen=True)
class MapSpec:
    """Which knowledge maps a run trains toward.

    Attributes:
        kind: one of :data:`SPEC_KINDS`.
        location: the folder the maps live in (written by ``python -m spanlib
            templates build``); None until resolved by :func:`maps_folder`
            (always None for the oracle). A relative folder is taken from the
            repository root.
    """

    kind: str
    location: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPEC_KINDS:
            raise ValueError(f"knowledge_maps.kind must be one of {SPEC_KINDS}, got {self.kind!r}")
        if self.kind == ORACLE and self.location is not None:
            raise ValueError(f"knowledge_maps of kind {ORACLE!r} (the ground truth) take no location")

    @property
    def built(self) -> bool:
        """Whether the kind is made by the builder (everything but the oracle)."""
        return self.kind in MAP_KINDS

    def at(self, location: str | Path) -> MapSpec:
        """The same kind, living in ``location``."""
        return MapSpec(self.kind, str(location))

    @classmethod
    def from_value(cls, value: Any, where: str = "span.knowledge_maps") -> MapSpec:
        """A spec from configuration data: a mapping ``{kind, location}``, or a string saved by older runs.

        An old string converts as it was read then: a kind's name (``triangular``,
        ``global``, ``deformable``) or ``masks`` names that kind, unresolved;
        any other string is a built folder, whose kind its ``manifest.json``
        says (or, with no manifest yet, the folder's name: ``deformable`` or
        ``<dataset>-deformable``).

        Raises:
            ValueError: data that names no kind (the message says what to write).
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"kind", "location"})
            if unknown or "kind" not in value:
                raise ValueError(f"{where}: expected {{kind: one of {SPEC_KINDS}, location: folder or null}}, "
                                 f"got {value!r}")
            location = value.get("location")
            return cls(str(value["kind"]), None if location is None else str(location))
        if isinstance(value, (str, Path)):
            text = str(value)
            if text in SPEC_KINDS:
                return cls(text)
            kind = _folder_kind(Path(text))
            if kind is None:
                raise ValueError(f"{where}: {text!r} is neither a kind {SPEC_KINDS} nor a knowledge-map folder "
                                 f"whose kind can be read (no manifest.json, and its name ends in no kind); "
                                 f"write {{kind: <kind>, location: {text}}}")
            return cls(kind, text)
        raise ValueError(f"{where}: expected {{kind, location}} or a kind's name, got {type(value).__name__}")


def _folder_kind(folder: Path) -> str | None:
    """The kind of an old run's map folder: its manifest's, else the end of its name."""
    import json

    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            kind = json.loads(manifest.read_text()).get("kind")
        except (ValueError, AttributeError):
            kind = None
        if kind in MAP_KINDS:
            return kind
    tail = folder.name.rsplit("-", 1)[-1]
    return tail if tail in MAP_KINDS else None


def maps_folder(spec: MapSpec, preset: str, dataset: str = "chest", data: str | Path | None = None) -> Path | None:
    """THE rule: where the maps of ``spec`` live for a preset's run.

    * ``spec.location`` when given (relative: from the repository root);
    * ``runs/<preset>/maps/<kind>`` for the preset's chest films;
    * ``runs/<preset>/maps/<dataset>-<kind>`` for another dataset of the preset (``parts``);
    * ``runs/<preset>/data-<folder name>/maps/<kind>`` for a user's own ``data``.

    Returns:
        The folder, or None for the oracle (nothing is built).
    """
    if not spec.built:
        return None
    if spec.location is not None:
        location = Path(spec.location)
        return location if location.is_absolute() else project_root() / location
    if data:
        return runs_dir(preset) / f"data-{Path(data).name}" / "maps" / spec.kind
    return runs_dir(preset) / "maps" / (spec.kind if dataset == "chest" else f"{dataset}-{spec.kind}")


def resolved(spec: MapSpec, preset: str, dataset: str = "chest", data: str | Path | None = None) -> MapSpec:
    """``spec`` with its folder placed by :func:`maps_folder` (the oracle unchanged)."""
    folder = maps_folder(spec, preset, dataset, data)
    return spec if folder is None else spec.at(folder)

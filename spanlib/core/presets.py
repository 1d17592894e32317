"""The sections of a preset file beside its run configuration: data sizes and notebook parameters.

A preset is one file, ``spanlib/presets/<name>.yaml``, read by
:func:`spanlib.core.configs.load_preset`. Besides ``base``, ``regimens`` and the
other sections that resolve a run, it holds ``data`` (the sizes of the
generated data, read by :func:`spanlib.data.data_preset`) and ``notebook``
(the chapters' papermill parameters: ``python -m spanlib params NAME``).
"""

from __future__ import annotations

from typing import Any

from spanlib.core.configs import load_preset


def preset_section(name: str, section: str) -> Any:
    """One top-level section of a preset file (``data``, ``notebook``, ...), read afresh on every call."""
    data = load_preset(name)
    if section not in data:
        raise ValueError(f"preset file {name}.yaml has no {section!r} section")
    return data[section]


def notebook_parameters(name: str) -> dict[str, Any]:
    """A preset's papermill parameters (its ``notebook`` section), ``preset`` always among them."""
    section = preset_section(name, "notebook") or {}
    if not isinstance(section, dict):
        raise ValueError(f"preset file {name}.yaml: 'notebook' must be a mapping of parameter names to values")
    return {"preset": name, **section}


def evaluation_size(name: str) -> int | None:
    """The input side at which a preset's headline attention is scored (its ``evaluation.size``; None: the training size).

    The paper trains at 224 px and rescales films to 480 px for its attention
    maps (appendix A.3), so that a head's map has a finer grid than the
    training views give; the book scores at twice its training size.
    """
    section = load_preset(name).get("evaluation") or {}
    size = section.get("size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"preset file {name}.yaml: evaluation.size must be a positive number of pixels, not {size!r}")
    return size

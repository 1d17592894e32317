"""Where the project keeps things: the repository root, generated data, runs.

The paths work whether the caller runs from ``notebooks/`` (Jupyter Book,
papermill, JupyterLab) or from the repository root.
"""

from __future__ import annotations

from pathlib import Path


def project_root(start: str | Path | None = None) -> Path:
    """The repository root: the nearest folder upward holding ``_toc.yml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "spanlib").is_dir():
            return folder
    raise FileNotFoundError(f"{here}: not inside the SPAN book repository (no _toc.yml above it)")


def data_dir(preset: str, kind: str = "chest") -> Path:
    """Generated data of a preset: ``data/generated/<preset>/<kind>``."""
    return project_root() / "data" / "generated" / preset / kind


def runs_dir(preset: str) -> Path:
    """Runs of a preset: ``runs/<preset>``."""
    return project_root() / "runs" / preset

"""Where the project keeps things: the repository root, generated data, runs.

The paths work whether the caller runs from ``notebooks/`` (Jupyter Book,
papermill, JupyterLab) or from the repository root.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.<name>.lock`` file beside it) while the block runs.

    Processes that make the same cached thing at once (a sweep's workers
    building one dataset, map set or start) wait here for the first: the
    block re-checks whether the thing is made and returns it if so.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield

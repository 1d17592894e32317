"""Sweeps: one notebook, a grid of parameters, executed through papermill.

``python -m spanlib sweep --notebook notebooks/03_pretraining.md --preset book
--param regimen=dino,span_triangular --param seed=0,1 --param lambda_span=1,10``
runs every combination, writes each executed notebook and a results table
(``results.csv`` and ``results.md``) under ``--out``, and goes on past a
failing cell, recording the failure in the table. A combination whose
executed notebook and results already exist for the same notebook source and
parameters is skipped, so a rerun with nothing changed costs seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pandas as pd
import papermill
import yaml


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """``["seed=0,1", "regimen=dino"]`` -> ``{"seed": [0, 1], "regimen": ["dino"]}``."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"--param {spec!r} is not of the form name=v1,v2,...")
        name, values = spec.split("=", 1)
        parsed = []
        for v in values.split(","):
            value = yaml.safe_load(v)
            if isinstance(value, str):
                try:
                    value = float(value)  # YAML 1.1 reads 1e-3 as a string
                except ValueError:
                    pass
            parsed.append(value)
        grid[name.strip()] = parsed
    return grid


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def combo_name(params: dict[str, Any]) -> str:
    """A file-safe name for one combination, e.g. ``regimen-dino_seed-0``."""
    parts = []
    for key, value in params.items():
        text = str(value).replace("/", "-").replace(" ", "")
        parts.append(f"{key}-{text}")
    return "_".join(parts) or "default"


def _fingerprint(source: str, params: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(source.encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_one(notebook: Path, params: dict[str, Any], out_dir: Path, name: str, timeout: int | None = None) -> dict[str, Any]:
    """Execute one combination; never raises for a failing cell."""
    source = notebook.read_text()
    results = out_dir / f"{name}.json"
    executed = out_dir / f"{name}.ipynb"
    stamp = out_dir / f"{name}.done"
    fingerprint = _fingerprint(source, params)
    if stamp.exists() and stamp.read_text().strip() == fingerprint and results.exists() and executed.exists():
        return {"name": name, **params, "status": "cached", **json.loads(results.read_text())}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (results, stamp):
        stale.unlink(missing_ok=True)
    staged = out_dir / f"{name}.input.ipynb"
    nbformat.write(jupytext.read(notebook), staged)
    start = time.perf_counter()
    row: dict[str, Any] = {"name": name, **params}
    try:
        papermill.execute_notebook(
            str(staged),
            str(executed),
            parameters={**params, "results_path": str(results.resolve())},
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
        )
        row["status"] = "ok"
        stamp.write_text(fingerprint + "\n")
    except papermill.PapermillExecutionError as exc:
        row.update(status="failed", error=f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"[:500])
    except Exception as exc:  # noqa: BLE001 - a broken combination must not stop the sweep
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        staged.unlink(missing_ok=True)
    row["seconds"] = round(time.perf_counter() - start, 1)
    if results.exists():
        row.update(json.loads(results.read_text()))
    return row


def _run_and_report(job: tuple[Path, dict[str, Any], Path, str, int | None]) -> dict[str, Any]:
    """One combination, printed as it ends (module level: runs in a worker process)."""
    row = run_one(*job)
    print(f"{row['name']}: {row['status']}" + (f" ({row['error']})" if row.get("error") else ""), flush=True)
    return row


def sweep(
    notebook: str | Path,
    grid: dict[str, list[Any]],
    out: str | Path,
    fixed: dict[str, Any] | None = None,
    timeout: int | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Run every combination of ``grid`` (plus ``fixed`` parameters); write the table.

    With ``workers > 1`` that many combinations run at once, each kernel with
    ``OMP_NUM_THREADS`` set to its share of the cores (unless already set).
    Combinations that share a cached step (data, knowledge maps) wait for
    each other through the step's lock.

    Returns:
        One row per combination: its parameters, ``status`` (``ok``,
        ``cached`` or ``failed`` with ``error``), seconds, and whatever the
        notebook recorded with :func:`spanlib.book.runs.record`.
    """
    notebook, out = Path(notebook).resolve(), Path(out)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: notebook not found")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    jobs = [(notebook, {**(fixed or {}), **combo}, out, combo_name(combo), timeout) for combo in combinations(grid)]
    if workers == 1 or len(jobs) == 1:
        rows = [_run_and_report(job) for job in jobs]
    else:
        # Each combination's kernel is its own process; split the cores between them (a kernel
        # inherits OMP_NUM_THREADS), since two-thread processes sharing cores slow each other down.
        # Worker processes, not threads: papermill's kernel client is not made for threads.
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = previous or threads
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows = list(pool.map(_run_and_report, jobs))
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS", None)
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    return rows


def _has_tabulate() -> bool:
    try:  # optional: pandas writes Markdown tables through it
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True

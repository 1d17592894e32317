"""``python -m spanlib sweep ...``: arguments, then :func:`spanlib.book.sweep.sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path

from spanlib.book.sweep import parse_grid, sweep
from spanlib.core.configs import preset_names
from spanlib.core.presets import notebook_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--notebook", default="notebooks/03_pretraining.md", help="a text (MyST) notebook")
    parser.add_argument("--preset", default="book", choices=preset_names(),
                        help="its notebook parameters (`python -m spanlib params PRESET`) go to every run")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2", help="a grid axis")
    parser.add_argument("--out", help="where executed notebooks and the table go (default runs/<preset>/sweeps/<notebook>)")
    parser.add_argument("--timeout", type=int, help="seconds per cell")
    parser.add_argument("--workers", type=int, default=1, help="combinations run at once (one kernel each)")


def run(args: argparse.Namespace) -> int:
    notebook = Path(args.notebook)
    out = Path(args.out or f"runs/{args.preset}/sweeps/{notebook.stem}")
    rows = sweep(notebook, parse_grid(args.param), out, fixed=notebook_parameters(args.preset), timeout=args.timeout,
                 workers=args.workers)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows)} runs, {len(failed)} failed; table: {out / 'results.csv'}")
    return 1 if failed else 0

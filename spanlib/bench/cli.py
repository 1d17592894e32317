"""``python -m spanlib bench NAME [--json] ...``: the measurements behind the performance page.

Each benchmark lives beside the code it measures and exposes
``main(argv) -> int``; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "step": ("spanlib.bench.step", "SPAN vs DINO training step, images/s and share of the matmul ceiling"),
    "ap": ("spanlib.bench.ap", "vectorized pixel AP vs scikit-learn"),
    "register": ("spanlib.bench.register", "knowledge maps per second and Dice vs a plain SimpleITK reference"),
    "byol": ("spanlib.bench.byol", "object-level vs plain BYOL step, bf16 autocast, threads"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items()))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark (see NAME --help)")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name][0])
    return int(module.main(args.rest) or 0)

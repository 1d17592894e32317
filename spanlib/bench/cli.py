"""``python -m spanlib bench NAME [--json] ...``: the measurements behind the performance page.

Each benchmark is one module of this package with one command line,
``main(argv) -> int``, and one function returning its result as a dict,
``measure(...)`` (what the performance notebook calls); this module only
dispatches: ``python -m spanlib bench NAME --help`` lists a benchmark's options.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "step": ("spanlib.bench.step", "SPAN vs DINO training step, images/s and share of the matmul ceiling"),
    "ap": ("spanlib.bench.ap", "vectorized pixel AP vs scikit-learn"),
    "register": ("spanlib.bench.register", "knowledge maps per second and Dice vs a plain SimpleITK reference"),
    "byol": ("spanlib.bench.byol", "object-level vs plain BYOL step, bf16 autocast, threads"),
    "loader": ("spanlib.bench.loader", "pretraining loader memory and images/s as the set grows (lazy reading)"),
    "gpu": ("spanlib.bench.gpu", "the paper preset on one GPU: step, loader, evaluation, torchrun killed and resumed"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items()))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark (see NAME --help)")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name][0])
    return int(module.main(args.rest) or 0)

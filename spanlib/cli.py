"""Command line: ``python -m spanlib VERB ...``.

Each verb lives in the module that does the work; this file only wires them
together, importing a verb's module when that verb is asked for so that
``python -m spanlib --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module exposing ``add_arguments(parser)`` and ``run(args) -> int``, help)
VERBS: dict[str, tuple[str, str]] = {
    "data": ("spanlib.data.cli", "make the embedded default data, or scan a dataset for bad files"),
    "templates": ("spanlib.maps.cli", "build knowledge maps (triangular, global, deformable)"),
    "pretrain": ("spanlib.pretrain.cli", "DINO / SPAN pretraining of a ViT"),
    "start": ("spanlib.book.start", "train a preset's shared pretrained start (cached) and report how far DINO got"),
    "evaluate": ("spanlib.eval.cli", "attention mAP, linear probe, few-shot, k-NN for a run"),
    "export": ("spanlib.model.cli", "a run's backbone as a plain timm state dict (safetensors) with its config"),
    "bench": ("spanlib.bench.cli", "measurements behind the book's performance page"),
    "sweep": ("spanlib.book.cli", "run a grid of notebooks through papermill"),
    "params": ("spanlib.book.params", "a preset's papermill parameters as YAML (papermill -f)"),
    "book": ("spanlib.book.own", "the book on your own films: check the sets, run the chapters on them, build the HTML"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m spanlib", description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=sorted(VERBS), help="; ".join(f"{k}: {v[1]}" for k, v in VERBS.items()))
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0
    if argv[0] not in VERBS:
        parser.parse_args(argv[:1])  # exits with argparse's message
    verb, rest = argv[0], argv[1:]
    module = importlib.import_module(VERBS[verb][0])
    sub = argparse.ArgumentParser(prog=f"python -m spanlib {verb}", description=VERBS[verb][1])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m spanlib export --run RUN --out DIR``: arguments, then :func:`spanlib.model.export.export_backbone`."""

from __future__ import annotations

import argparse
import json

from spanlib.model.export import WHICH, export_backbone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a run directory with checkpoint.pt")
    parser.add_argument("--out", required=True, help="folder for model.safetensors, config.json and spanlib.yaml")
    parser.add_argument("--which", choices=WHICH, default="teacher", help="which network's backbone (default: teacher)")


def run(args: argparse.Namespace) -> int:
    try:
        result = export_backbone(args.run, args.out, which=args.which)
    except (FileNotFoundError, ValueError) as error:  # both name the file
        print(f"export: {error}")
        return 2
    print(json.dumps(result))
    return 0

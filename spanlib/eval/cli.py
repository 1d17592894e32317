"""``python -m spanlib evaluate KIND ...``: arguments, then :func:`spanlib.eval.evaluate.evaluate`."""

from __future__ import annotations

import argparse
import json

from spanlib.eval.evaluate import KINDS, evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--run", required=True, help="a run directory with checkpoint.pt")
    parser.add_argument("--data", required=True, help="a dataset folder (train/val/test splits)")
    parser.add_argument("--reader", default="folder", help="dataset reader: folder, jsrt, montgomery, shenzhen, chexpert, casting")
    parser.add_argument("--size", type=int, help="resize images and masks to SIZE x SIZE when reading")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    options = {"size": args.size} if args.size else {}
    result = evaluate(args.kind, args.run, args.data, args.seed, reader=args.reader, **options)
    print(json.dumps({k: v for k, v in result.items() if k in ("kind", "run", "regimen", "mAUC", "organs")}, default=str)[:2000])
    return 0

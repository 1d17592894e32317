"""``python -m spanlib pretrain ...``: arguments, then :func:`spanlib.pretrain.train.pretrain`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch.distributed as dist

from spanlib.core.configs import REGIMENS, parse_override, preset_names, resolve
from spanlib.pretrain.train import DivergenceError, pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="book", help=f"one of {preset_names()}")
    parser.add_argument("--regimen", default="span_deformable", choices=REGIMENS)
    parser.add_argument("--data", help="dataset folder (overrides run.data)")
    parser.add_argument("--reader", help="how to read --data: folder (default), images, chexpert... (run.reader)")
    parser.add_argument("--maps", help="knowledge-map folder or 'triangular' (overrides span.knowledge_maps)")
    parser.add_argument("--out", help="run directory (default runs/<preset>/<regimen>/seed<seed>)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--stop-after-steps", type=int, help="stop after N steps as a kill would (testing)")


def run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(s) for s in args.set)
    if args.data:
        overrides["run.data"] = args.data
    if args.reader:
        overrides["run.reader"] = args.reader
    if args.maps:
        overrides["span.knowledge_maps"] = args.maps
    if args.seed is not None:
        overrides["run.seed"] = args.seed
    cfg = resolve(args.preset, args.regimen, overrides)
    out = Path(args.out or f"runs/{args.preset}/{args.regimen}/seed{cfg.run.seed}")
    try:
        summary = pretrain(cfg, out, resume=args.resume, stop_after_steps=args.stop_after_steps)
    except DivergenceError as exc:
        print(f"error: {exc}")
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{out}: {summary}")
    return 0

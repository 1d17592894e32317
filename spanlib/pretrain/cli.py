"""``python -m spanlib pretrain ...``: arguments, then :func:`spanlib.pretrain.train.pretrain`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch.distributed as dist

from spanlib.core.configs import REGIMENS, parse_override, preset_names, resolve
from spanlib.core.mapspec import SPEC_KINDS, MapSpec, maps_folder
from spanlib.pretrain.train import DivergenceError, pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="book", help=f"one of {preset_names()}")
    parser.add_argument("--regimen", default="span_deformable", choices=REGIMENS)
    parser.add_argument("--data", help="dataset folder (overrides run.data)")
    parser.add_argument("--reader", help="how to read --data: folder (default), images, chexpert... (run.reader)")
    parser.add_argument("--maps", help="a built knowledge-map folder, or a kind (triangular, global, deformable, "
                                       "masks) whose folder the one rule places (default: the regimen's kind there)")
    parser.add_argument("--out", help="run directory (default runs/<preset>/<regimen>/seed<seed>)")
    parser.add_argument("--pretrained", help="a local checkpoint to start from: DINO's released weights "
                                             "(dino_deitsmall16_pretrain.pth) or a timm state dict "
                                             "(model.pretrained_path; never downloaded)")
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
    if args.seed is not None:
        overrides["run.seed"] = args.seed
    if args.pretrained:
        if not Path(args.pretrained).is_file():
            raise SystemExit(f"error: {args.pretrained}: pretrained checkpoint not found (--pretrained)")
        overrides["model.pretrained_path"] = str(Path(args.pretrained).resolve())
    cfg = resolve(args.preset, args.regimen, overrides)
    spec = _map_spec(cfg.span.knowledge_maps, args.maps, args.preset, args.data)
    if spec is not None:
        cfg = cfg.replace(**{"span.knowledge_maps": spec})
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


def _map_spec(spec: MapSpec | None, maps: str | None, preset: str, data: str | None) -> MapSpec | None:
    """The run's knowledge maps: ``--maps`` (a kind, or a folder of the regimen's kind), placed by the one rule.

    A heuristic whose folder is not built is drawn in memory at each image's
    size (the maps the builder would write for it).
    """
    if maps in SPEC_KINDS:
        spec = MapSpec(maps)
    elif maps:
        spec = MapSpec.from_value(maps) if spec is None else spec.at(maps)
    if spec is None or not spec.built:
        return spec
    folder = maps_folder(spec, preset, data=data)
    if spec.location is None and spec.kind == "triangular" and not (folder / "manifest.json").is_file():
        return spec
    return spec.at(folder)


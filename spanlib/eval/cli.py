"""``python -m spanlib evaluate KIND ...``: arguments, then :func:`spanlib.eval.evaluate.evaluate`."""

from __future__ import annotations

import argparse
import json

from spanlib.data import READERS
from spanlib.eval.evaluate import KINDS, evaluate
from spanlib.eval.sets import SelectionError

SHOWN = ("kind", "run", "regimen", "test_set", "selection_set", "train_set", "mAUC", "attention")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--run", required=True, help="a run directory with checkpoint.pt")
    parser.add_argument("--data", required=True, help="the dataset folder")
    parser.add_argument("--reader", default="folder", choices=sorted(READERS),
                        help="dataset reader (images: any folder of images/ and masks/<organ>/)")
    parser.add_argument("--select-on", metavar="SPLIT_OR_DIR",
                        help="where a baseline's head is chosen (a split, a dataset folder); default the val split, "
                             "never the test split")
    parser.add_argument("--test-on", metavar="SPLIT_OR_DIR", help="the test set (default: the test split; "
                        "CheXpert: valid.csv; a set without splits: every image)")
    parser.add_argument("--train-on", metavar="SPLIT_OR_DIR", help="the probes' training set (default: the train split)")
    parser.add_argument("--size", type=int, help="resize images and masks to SIZE x SIZE when reading")
    parser.add_argument("--eval-size", type=int, help="model input size for scoring (default: the run's)")
    parser.add_argument("--csv", help="chexpert: the CSV of --data (default train.csv)")
    parser.add_argument("--out", help="the result JSON (default RUN/eval/KIND-DATASET.json)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    options = {k: v for k, v in (("size", args.size), ("csv", args.csv)) if v}
    try:
        result = evaluate(args.kind, args.run, args.data, args.seed, reader=args.reader, select_on=args.select_on,
                          test_on=args.test_on, train_on=args.train_on, eval_size=args.eval_size, out=args.out,
                          **options)
    except SelectionError as error:
        print(f"evaluate: {error}")
        return 2
    print(json.dumps({k: v for k, v in result.items() if k in SHOWN}, default=str)[:2000])
    return 0

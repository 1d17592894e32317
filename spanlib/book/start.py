"""The shared pretrained start: one DINO backbone every regimen of the book continues.

The paper starts every regimen from DINO's ImageNet weights (800 epochs). At
book scale the same role is played by one DINO run on every generated set
pooled (chest phantoms, cast parts, cluttered digits: the book's "ImageNet"),
trained once with DINO's own views and cached like every run
(``runs/<preset>/start``; trained by :func:`spanlib.book.runs.ensure_start`,
which every run continuing it calls). Its frozen self is the ``dino_start`` regimen, the
paper's "DINO" row; every trained regimen continues it (``run.init_from``).
:func:`start_report` says how far DINO got: the loss below log K, the teacher's
entropy and a k-NN accuracy on a held-out generated task.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.book.runs import continues_start, ensure_pretrained, ensure_start, has_start, start_dir  # noqa: F401
from spanlib.core.checkpoint import write_json
from spanlib.core.configs import resolve_start
from spanlib.core.paths import project_root
from spanlib.data import DIGIT_LABELS, make_default_data, open_dataset
from spanlib.eval.evaluate import cached_extract
from spanlib.eval.probe import knn_classify

KNN_TASK = "digits"
"""The held-out task of the start's k-NN check: which of ten digits a cluttered canvas shows."""


REPORT_KEYS = frozenset({"steps", "datasets", "dino_loss", "log_k", "loss_below_log_k", "teacher_entropy",
                         "teacher_mean_entropy", "knn_task", "knn_accuracy", "knn_accuracy_random", "knn_chance",
                         "knn_test"})
"""The keys of :func:`start_report`'s result."""


def final_record(run: str | Path) -> dict[str, Any]:
    """The last training record of a finished run (``done.json``'s ``last``)."""
    done = json.loads((Path(run) / "done.json").read_text())
    return done.get("last") or {}


def loss_below_log_k(record: dict[str, Any], out_dim: int) -> float:
    """How far DINO's loss is below log K (K prototypes): 0 at a uniform output, the higher the more learned."""
    return math.log(out_dim) - float(record["dino_loss"])


def start_report(preset: str, seed: int = 0) -> dict[str, Any]:
    """How far the shared start learned (cached in ``start/report.json``).

    Returns:
        ``steps``, ``dino_loss``, ``log_k``, ``loss_below_log_k``,
        ``teacher_entropy`` (per image, nats) and ``teacher_mean_entropy``
        (of the batch mean), ``knn_accuracy`` of the start on the held-out
        digits (test split, DINO's weighted 20-NN over the training split's
        features) beside ``knn_accuracy_random`` (an untrained network of the
        same shape), ``knn_chance`` and ``knn_test`` (held-out canvases); percent for accuracies.
    """
    out = ensure_start(preset)
    if out is None:
        raise ValueError(f"preset {preset!r} has no shared start")
    path = out / "report.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if REPORT_KEYS <= set(cached):  # a report written before a key was added is computed again
            return cached
    cfg_out_dim = ensure_pretrained(preset, "dino_start").config.dino.out_dim
    record = final_record(out)
    digits = make_default_data(preset, project_root() / "data" / "generated" / preset, seed=0)[KNN_TASK]
    train, test = (open_dataset("folder", digits, split=s) for s in ("train", "test"))

    def classes(samples) -> np.ndarray:
        return np.array([int(np.argmax([s.labels[n] for n in DIGIT_LABELS])) for s in samples])

    accuracy = {}
    for name, run in (("start", out), ("random", ensure_pretrained(preset, "random", seed=seed).path)):
        ftrain, ftest = cached_extract(run, train)["features"], cached_extract(run, test)["features"]
        predicted, _ = knn_classify(ftrain, classes(train), ftest, num_classes=len(DIGIT_LABELS))
        accuracy[name] = 100.0 * float((predicted.numpy() == classes(test)).mean())
    report = {
        "steps": int(json.loads((out / "done.json").read_text())["steps"]),
        "datasets": list(resolve_start(preset).datasets),
        "dino_loss": float(record["dino_loss"]),
        "log_k": math.log(cfg_out_dim),
        "loss_below_log_k": loss_below_log_k(record, cfg_out_dim),
        "teacher_entropy": float(record["teacher_entropy"]),
        "teacher_mean_entropy": float(record["teacher_mean_entropy"]),
        "knn_task": f"{KNN_TASK}: ten classes, {len(train)} training and {len(test)} held-out test canvases",
        "knn_accuracy": accuracy["start"],
        "knn_accuracy_random": accuracy["random"],
        "knn_chance": 100.0 / len(DIGIT_LABELS),
        "knn_test": len(test),
    }
    write_json(path, report)
    return report


def add_arguments(parser) -> None:
    """``python -m spanlib start``: train (or load) a preset's shared start and print its report."""
    parser.add_argument("--preset", default="book", help="a preset with a `start` section")


def run(args) -> int:
    if not has_start(args.preset):
        print(f"error: preset {args.preset!r} has no shared start (a `start` section)")
        return 2
    print(json.dumps(start_report(args.preset), indent=1))
    return 0

"""Evaluation of a pretrained run: attention vs organs, linear probe, few-shot, k-NN.

``python -m spanlib evaluate {attention,linear,fewshot,knn} --run DIR --data DIR``
loads the run's teacher backbone (DINO evaluates the teacher), extracts the
frozen CLS features and the last block's CLS attention of every image once
on the run's device (CUDA where present; :mod:`spanlib.eval.extract`,
streamed to a disk cache beside the run, keyed by the checkpoint and the dataset), and writes
``DIR/eval/<kind>-<dataset>.json``. That file also answers the same
evaluation again (same arguments, checkpoint and data) without recomputing it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spanlib.core.checkpoint import write_json
from spanlib.core.configs import Config
from spanlib.data import open_dataset
from spanlib.data.imageio import resize_mask
from spanlib.eval import probe
from spanlib.eval.ap import attention_average_precision, upsample_nearest
from spanlib.eval.extract import cached_extract, dataset_key, extract  # noqa: F401 - where callers found them
from spanlib.eval.metrics import iou, mass_threshold, pointing_game
from spanlib.eval.sets import SelectionError, selection_set, test_set, training_set
from spanlib.model.export import load_backbone

KINDS = ("attention", "linear", "fewshot", "knn")

READ_SIDE = 1024
"""Films are read at most this side (longer side, aspect kept) unless a ``size`` is asked: a set of 2048-pixel
16-bit films is scored without holding it in memory at full size. The model sees every film resized to its input
side anyway; the masks are scored at the films' size (or see :func:`scoring_masks`)."""


def _stamp(path: Path) -> list[int] | None:
    """Size and modification time (ns) of a file or folder; None when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size if path.is_file() else 0, st.st_mtime_ns]


def _request(kind: str, run: str | Path, data: str | Path, seed: int, reader: str, select_on: str | None,
             test_on: str | None, train_on: str | None, eval_size: int | None, options: dict[str, Any]
             ) -> dict[str, Any]:
    """What an evaluation's result depends on: its arguments, the checkpoint's and the data's stamps.

    A result file whose ``request`` equals this one is returned as it is; a run
    trained again, a dataset written again or other arguments evaluate anew.
    """
    data = Path(data)
    return {"kind": kind, "run": str(Path(run).resolve()), "data": str(data.resolve()), "seed": int(seed),
            "reader": reader, "select_on": select_on, "test_on": test_on, "train_on": train_on,
            "eval_size": eval_size, "options": {k: repr(v) for k, v in sorted(options.items())},
            "checkpoint": _stamp(Path(run) / "checkpoint.pt"), "data_stamp": _stamp(data),
            "data_meta": _stamp(data / "meta.json")}


def _mean(values: torch.Tensor) -> float:
    v = values[~torch.isnan(values)]
    return float(v.mean()) * 100 if len(v) else float("nan")


def attention_scores(
    attention: torch.Tensor,
    masks: dict[str, torch.Tensor],
    assigned_heads: dict[str, int],
    head_choice: dict[str, int] | None = None,
    keep: float = 0.6,
) -> dict[str, Any]:
    """Attention against ground-truth masks, per organ.

    SPAN runs are scored on the head assigned to the organ. Runs without an
    assigned head are scored on ``head_choice[organ]`` (the best head on a
    validation split, then fixed); the paper's per-image maximum over heads
    is reported beside it, labelled, since it flatters the baseline.

    Args:
        attention: ``[N, heads, gh, gw]``.
        masks: organ -> bool ``[N, H, W]``.
        assigned_heads: organ -> head for SPAN runs (empty otherwise).
        head_choice: organ -> head for runs without assigned heads.
        keep: attention mass kept for the IoU (DINO's visualiser uses 0.6).

    Returns:
        Per organ: ``mAP``, ``head``, ``pointing``, ``iou``, ``per_head_mAP``
        and ``per_image_max_mAP`` (all in percent).
    """
    out = {}
    for organ, mask in masks.items():
        mask = mask.bool()
        per_head = torch.stack([attention_average_precision(attention[:, h], mask) for h in range(attention.shape[1])], 1)
        if organ in assigned_heads:
            head, how = assigned_heads[organ], "assigned"
        elif head_choice and organ in head_choice:
            head, how = head_choice[organ], "best on validation"
        else:
            head, how = int(torch.nanmean(per_head, 0).argmax()), "best on this split"
        best = torch.nan_to_num(per_head, nan=-math.inf).max(1).values
        best[torch.isinf(best)] = math.nan  # images without the organ
        a = attention[:, head]
        kept = upsample_nearest(mass_threshold(a, keep).float(), tuple(mask.shape[-2:])) > 0.5
        out[organ] = {
            "mAP": _mean(per_head[:, head]),
            "head": head,
            "head_chosen": how,
            "pointing": float(pointing_game(a, mask).float().mean()) * 100,
            f"iou_mass{int(keep * 100)}": _mean(iou(kept, mask).double()),
            "per_head_mAP": [_mean(per_head[:, h]) for h in range(per_head.shape[1])],
            "per_image_max_mAP": _mean(best),
        }
    return out


def scoring_masks(samples: Sequence, organs: Sequence[str], side: int) -> tuple[dict[str, torch.Tensor], str]:
    """The ground-truth masks attention is scored against, and the resolution, in words.

    Films of one size are scored at that size (the attention upsampled to
    it). Films of mixed sizes are scored at ``side x side`` (the model's
    input side, the square every film is resized to before the model sees
    it): each mask is resized there by nearest neighbour.
    """
    loaded = [samples[i].masks for i in range(len(samples))]
    shapes = {m[o].shape for m in loaded for o in organs}
    if len(shapes) <= 1:
        (height, width), = shapes or {(side, side)}
        how = f"{width}x{height} px, the films' own size"
    else:
        how = f"{side}x{side} px, the model's input (the films differ in size: {len(shapes)} sizes)"
        loaded = [{o: resize_mask(m[o], (side, side)) for o in organs} for m in loaded]
    return {o: torch.from_numpy(np.stack([m[o] for m in loaded])) for o in organs}, how


def _labels(samples: Any, names: Sequence[str]) -> np.ndarray:
    """Label matrix from the index (no image is read)."""
    return np.array([[r.labels.get(n, math.nan) for n in names] for r in samples.records], dtype=float)


def _previous_result(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The result already in ``out`` when it answers the same request (checkpoint, data, arguments)."""
    if not out.is_file():
        return None
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        previous = {}
    return previous if previous.get("request") == request else None


def _attention_result(
    whole: Any,
    test: Any,
    data: Path,
    cfg: Config,
    extracted: Callable[[Any], dict[str, Any]],
    select_on: str | None,
    reader: str,
    options: dict[str, Any],
    side: int,
) -> dict[str, Any]:
    """``organs`` and ``attention`` of an attention evaluation; a head not assigned is chosen off the test set.

    ``side``: the model's input side, where films of mixed sizes are scored (:func:`scoring_masks`).
    """
    result: dict[str, Any] = {}
    organs = list(test.mask_names)
    if not organs:
        raise SelectionError(f"{data}: the test set has no masks to score attention against")
    assigned = {o: h for o, h in cfg.span.assigned_heads.items() if o in organs}
    choice = None
    if len(assigned) < len(organs):  # some organ's head must be chosen: never on the test set
        val, select_how = selection_set(whole, test, data, select_on, reader, options)
        missing = [o for o in organs if o not in val.mask_names]
        if missing:
            raise SelectionError(f"{select_how}: the selection set has no masks for {', '.join(missing)}")
        val_masks, _ = scoring_masks(val, organs, side)
        val_scores = attention_scores(extracted(val)["attention"], val_masks, {})
        choice = {o: val_scores[o]["head"] for o in organs if o not in assigned}
        result["selection_set"], result["selection_images"] = select_how, len(val)
    test_masks, result["masks_scored_at"] = scoring_masks(test, organs, side)
    scores = attention_scores(extracted(test)["attention"], test_masks, assigned, choice)
    result["organs"] = scores
    result["attention"] = {o: {"mean": s["mAP"], "head": s["head"], "head_chosen": s["head_chosen"],
                               "pointing": s["pointing"]} for o, s in scores.items()}
    return result


def _probe_result(
    kind: str, train: Any, test: Any, extracted: Callable[[Any], dict[str, Any]], seed: int
) -> dict[str, Any]:
    """A linear probe, few-shot or k-NN evaluation on the frozen features of ``train`` and ``test``."""
    names = list(train.label_names)
    ftrain = extracted(train)["features"]
    ftest = extracted(test)["features"]
    ytrain, ytest = _labels(train, names), _labels(test, names)
    if kind == "linear":
        return probe.linear_probe(ftrain, ytrain, ftest, ytest, names, seed=seed)
    if kind == "fewshot":
        return probe.fewshot(ftrain, ytrain[:, 0], ftest, ytest[:, 0], seed=seed)
    return probe.knn_multilabel(ftrain, ytrain, ftest, ytest, names)


def evaluate(
    kind: str,
    run: str | Path,
    data: str | Path,
    seed: int = 0,
    reader: str = "folder",
    select_on: str | None = None,
    test_on: str | None = None,
    train_on: str | None = None,
    eval_size: int | None = None,
    out: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate one run on a dataset and write the result as JSON.

    Nothing is chosen on the test set: a baseline without assigned heads is
    scored on the head that is best on the selection set (``select_on``, else
    the ``val`` split); a set without either is refused with
    :class:`~spanlib.eval.sets.SelectionError`.

    Args:
        kind: one of :data:`KINDS`.
        run: a run directory with ``checkpoint.pt``.
        data: the dataset root.
        seed: seed of the probes.
        reader: a reader of :data:`spanlib.data.READERS` (``folder`` for the
            generated data; ``images`` for any folder of films and masks;
            ``jsrt``, ``montgomery``, ``chexpert``, ``casting``... for real sets).
        select_on: where a baseline's head is chosen (``SPLIT_OR_DIR``, see
            :mod:`spanlib.eval.sets`).
        test_on: the test set (default: the ``test`` split; CheXpert's
            ``valid.csv``; every image of a set without splits).
        train_on: the probes' training set (default: the ``train`` split).
        eval_size: score at this input size instead of the run's.
        out: the JSON file to write (default ``RUN/eval/<kind>-<dataset>.json``).
        **options: the reader's options (``size``, ``uncertain``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation {kind!r}; choose from {KINDS}")
    out = Path(out) if out else Path(run) / "eval" / f"{kind}-{Path(data).name}.json"
    request = _request(kind, run, data, seed, reader, select_on, test_on, train_on, eval_size, options)
    previous = _previous_result(out, request)
    if previous is not None:
        return previous
    backbone = load_backbone(run)
    cfg, _, info = backbone
    data = Path(data)
    reading = options if "size" in options else {**options, "max_side": READ_SIDE}
    whole = open_dataset(reader, data, **reading)
    test, test_how = test_set(whole, data, test_on, reader, reading)
    result: dict[str, Any] = {"kind": kind, "run": str(run), "data": str(data), "reader": reader,
                              "regimen": cfg.regimen, "step": info["step"], "test_set": test_how,
                              "test_images": len(test), "synthetic": bool(test.meta.get("synthetic", False))}
    if eval_size:
        result["eval_size"] = int(eval_size)
    extracted = functools.partial(cached_extract, run, img_size=eval_size, backbone=backbone)  # cached per set
    if kind == "attention":
        result.update(_attention_result(whole, test, data, cfg, extracted, select_on, reader, reading,
                                        int(eval_size or cfg.model.img_size)))
    else:
        train, train_how = training_set(whole, data, train_on, reader, reading, test, test_how)
        result["train_set"], result["train_images"] = train_how, len(train)
        result.update(_probe_result(kind, train, test, extracted, seed))
    result["request"] = request
    out.parent.mkdir(parents=True, exist_ok=True)
    if getattr(whole, "seeded_split", False):
        result["splits_file"] = str(whole.write_splits(out.with_name(out.stem + "-splits.csv")))
    write_json(out, result)
    return result

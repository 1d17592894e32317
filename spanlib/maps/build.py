"""Batch tool: build knowledge maps for a dataset (``python -m spanlib templates ...``).

``build`` writes a knowledge-map directory (layout in :mod:`spanlib.maps.heuristic`)::

    python -m spanlib templates build --kind {triangular,global,deformable} --data DIR --out DIR
        [--workers N] [--shard i/n] [--exemplar ID] [--size S]

* ``triangular``: the spatial heuristic drawn at ``S x S``.
* ``global``: a small segmentation network trained on a few labelled training
  images, its probabilities averaged over the dataset (``template.npz`` keeps
  the binary map and the soft mean).
* ``deformable``: the exemplar registered onto every image, one
  ``maps/<key>.npz`` per image; the key hashes the image's content, the
  exemplar and the parameters, so a rerun skips what is built and rebuilds a
  corrupt or stale entry. Work is split into batches run by one
  single-threaded worker process per core; ``--shard i/n`` takes every n-th of
  the sorted ids starting at i (each shard writes its own index and report,
  and the loader merges them). Images that fail fall back (affine, then the
  ``--fallback`` template or the heuristic) and are listed in the report.

``dice`` scores a built directory against a dataset's ground-truth masks.

Every build ends with a summary report (``report.json``, or
``report-<i>-of-<n>.json`` for a shard): counts, failures with reasons,
methods, quality distribution and time.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.maps.heuristic import (
    MANIFEST,
    MAP_KINDS,
    MAPS_DIR,
    TEMPLATE,
    MapFileError,
    content_hash,
    dice_report,
    heuristic_maps,
    load_knowledge_maps,
    map_key,
    params_hash,
    read_manifest,
    read_maps,
    resize_nearest,
    save_maps,
    write_json,
)

FORMAT = "spanlib-maps/1"
METHODS = ("torch", "sitk")


# --------------------------------------------------------------------------- arguments


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` -> ``(0, 1)``.

    Raises:
        ValueError: malformed text.
    """
    if text is None:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from error
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def shard_ids(ids: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """Every n-th of the sorted ids, starting at i: shards partition the ids."""
    index, count = shard
    return sorted(ids)[index::count]


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
    build.add_argument("--data", required=True, help="dataset folder (spanlib folder format)")
    build.add_argument("--out", required=True, help="output directory of the maps")
    build.add_argument("--size", type=int, default=64, help="side of the stored maps (default 64)")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="worker processes, one thread each (default: CPU count)")
    build.add_argument("--shard", default=None, help="i/n: build only every n-th sorted id from i (deformable)")
    build.add_argument("--exemplar", default="auto",
                       help="sample id of the annotated exemplar, or auto (default): the most typical of the first "
                            "8 training samples with every mask")
    build.add_argument("--split", default=None, help="only samples of this split (default: all)")
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
            seg_arch=args.seg_arch, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (ValueError, OSError, KeyError) as error:
        print(f"templates {args.action}: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "records"}, indent=1))
    return 0


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class _Job:
    """What a worker needs: the dataset, the exemplar, and the settings."""

    data: str
    out: str
    organs: tuple[str, ...]
    size: int
    method: str
    exemplar_image: np.ndarray
    exemplar_masks: np.ndarray
    exemplar_hash: str
    fallback_maps: np.ndarray
    params_digest: str
    config: Any


def build_knowledge_maps(
    kind: str,
    data: str | Path,
    out: str | Path,
    size: int = 64,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    exemplar: str | None = None,
    split: str | None = None,
    method: str = "torch",
    fallback: str | Path | None = None,
    batch_size: int = 32,
    seg_train: int = 32,
    seg_steps: int = 150,
    seg_arch: str = "unet",
    overwrite: bool = False,
    progress: bool = False,
    registration_config: Any = None,
) -> dict[str, Any]:
    """Build (or resume) a knowledge-map directory; the library form of ``templates build``.

    Args:
        kind: ``triangular``, ``global`` or ``deformable``.
        data: dataset folder in the spanlib folder format.
        out: output directory.
        size: side of the stored maps.
        workers: worker processes (deformable; the global average runs in
            this process, single-threaded).
        shard: ``(i, n)``: build every n-th of the sorted ids from i (deformable).
        exemplar: exemplar sample id, or ``None`` / ``"auto"``: the most
            typical of the first 8 training samples with every mask (see
            :func:`choose_exemplar`; a resumed build keeps its earlier choice).
        split: restrict to one split (default: all samples).
        method: ``torch`` (batched) or ``sitk`` (SimpleITK, per pair).
        fallback: a built triangular/global directory for failed images.
        batch_size: images per registration batch (torch).
        seg_train: labelled images for the segmentation network (global).
        seg_steps: its training steps.
        seg_arch: its architecture (see :mod:`spanlib.maps.segmentation`).
        overwrite: allow replacing a directory built with other settings.
        progress: show a tqdm bar.
        registration_config: a :class:`~spanlib.maps.registration.RegistrationConfig`
            or :class:`~spanlib.maps.registration.SitkConfig` overriding the defaults.

    Returns:
        The summary report (also written to ``report*.json``), with the
        per-image ``records`` (deformable).

    Raises:
        ValueError: bad arguments, a dataset without masks, an unknown exemplar,
            or a directory built with other settings (without ``overwrite``).
    """
    from spanlib.data import FolderDataset

    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    if size < 4:
        raise ValueError(f"--size must be at least 4, got {size}")
    if shard != (0, 1) and kind != "deformable":
        raise ValueError("--shard applies to --kind deformable only (the other kinds build one map set)")
    start = time.perf_counter()
    out = Path(out)
    dataset = FolderDataset(data, split=split)
    organs = tuple(dataset.mask_names)
    if not organs:
        raise ValueError(f"{Path(data) / 'meta.json'}: the dataset has no masks (mask_names is empty)")
    data_info = {"name": Path(data).name, "samples": len(dataset), "split": split,
                 "generator": dataset.meta.get("generator"), "seed": dataset.meta.get("seed")}
    if kind == "triangular":
        params = {"heuristic": "triangles" if "heart" in organs or "left_lung" in organs else "rings"}
        manifest = _manifest(kind, organs, size, params, data_info)
        report = _build_template(out, manifest, overwrite, lambda: (heuristic_maps(size, size, organs), None, {}))
    elif kind == "global":
        from spanlib.maps.segmentation import SegConfig

        seg_config = SegConfig(arch=seg_arch, steps=seg_steps, n_train=seg_train)
        params = {"segmentation": seg_config.to_dict(), "ids_hash": params_hash({"ids": sorted(dataset.ids)})}
        manifest = _manifest(kind, organs, size, params, data_info)
        report = _build_template(out, manifest, overwrite,
                                 lambda: _global_average(dataset, organs, size, seg_config, out, progress))
    else:
        report = _build_deformable(dataset, organs, out, size, workers, shard, exemplar, method, fallback,
                                   batch_size, overwrite, progress, registration_config, data_info)
    report["time_s"] = round(time.perf_counter() - start, 3)
    if kind == "deformable":
        built = report["built"]
        report["maps_per_s"] = round(built / report["time_s"], 3) if built and report["time_s"] > 0 else None
    suffix = "" if shard == (0, 1) else f"-{shard[0]}-of-{shard[1]}"
    write_json(out / f"report{suffix}.json", report)
    return report


def _manifest(kind: str, organs: tuple[str, ...], size: int, params: dict[str, Any], data_info: dict[str, Any]
              ) -> dict[str, Any]:
    return {"format": FORMAT, "kind": kind, "organs": list(organs), "size": size, "params": params,
            "params_hash": params_hash({"kind": kind, "organs": organs, "size": size, "params": params}),
            "data": data_info}


def _check_manifest(out: Path, manifest: dict[str, Any], overwrite: bool) -> bool:
    """True when ``out`` already holds a manifest with the same settings.

    Raises:
        ValueError: a manifest with other settings, without ``overwrite``.
    """
    if not (out / MANIFEST).is_file():
        return False
    try:
        old = read_manifest(out)
    except MapFileError:
        return False
    if old.get("params_hash") == manifest["params_hash"]:
        return True
    if not overwrite:
        raise ValueError(
            f"{out / MANIFEST}: built with other settings (kind {old.get('kind')!r}, size {old.get('size')}, "
            f"organs {old.get('organs')}); choose another --out or pass --overwrite"
        )
    for stale in [*out.glob("index*.json"), *out.glob("report*.json"), out / TEMPLATE]:
        stale.unlink(missing_ok=True)
    return False


def _build_template(out: Path, manifest: dict[str, Any], overwrite: bool, make: Any) -> dict[str, Any]:
    """Triangular / global: one map set; skipped when a valid one with the same settings exists."""
    n_organs, size = len(manifest["organs"]), manifest["size"]
    same = _check_manifest(out, manifest, overwrite)
    if same:
        try:
            read_maps(out / TEMPLATE, n_organs, size)
            return {"kind": manifest["kind"], "count": 1, "built": 0, "cached": 1, "failures": []}
        except MapFileError:
            pass  # corrupt or missing: rebuild
    maps, soft, info = make()
    extra = {} if soft is None else {"soft": soft.astype(np.float32)}
    save_maps(out / TEMPLATE, maps.astype(np.float32), info, **extra)
    write_json(out / MANIFEST, {**manifest, "created": _now(), **({"info": info} if info else {})})
    return {"kind": manifest["kind"], "count": 1, "built": 1, "cached": 0, "failures": [], **info}


def _global_average(dataset: Any, organs: tuple[str, ...], size: int, config: Any, out: Path, progress: bool
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train (or reload) the segmenter, average its probabilities over the dataset."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from spanlib.maps.registration import single_thread
    from spanlib.maps.segmentation import load_segmenter, predict_probabilities, save_segmenter, train_segmenter

    with single_thread():  # small convolutions: a second intra-op thread only adds waiting (see single_thread)
        checkpoint = out / "segmenter.pt"
        digest = params_hash({"config": config.to_dict(), "organs": organs})
        model = None
        if checkpoint.is_file():
            try:
                model, _, _, info = load_segmenter(checkpoint)
                model = model if info.get("digest") == digest else None
            except ValueError:
                model = None
        if model is None:
            images, masks, used = _labelled(dataset, organs, config.n_train)
            model, info = train_segmenter(images, masks, config)
            info = {**info, "digest": digest, "train_ids": used}
            save_segmenter(checkpoint, model, config, organs, info)
        total = np.zeros((len(organs), config.size, config.size), dtype=np.float64)
        batch = 64
        for start in tqdm(range(0, len(dataset), batch), disable=not progress, desc="global average", unit="batch"):
            images = [np.asarray(s.image) for s in dataset[start : start + batch]]
            total += predict_probabilities(model, images, config).sum(axis=0)
        soft = torch.from_numpy((total / max(len(dataset), 1)).astype(np.float32))[None]
        soft = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False)[0].clamp(0, 1).numpy()
    binary = soft >= config.threshold
    summary = {"train_dice": round(float(info["train_dice"]), 4), "train_images": len(info["train_ids"]),
               "averaged_images": len(dataset)}
    return binary, soft, summary


def _labelled(dataset: Any, organs: tuple[str, ...], count: int, train_only: bool = False
              ) -> tuple[list, list, list[str]]:
    """The first ``count`` samples with every mask non-empty, training samples first (sorted ids).

    With ``train_only``, only training samples qualify when the dataset has any.
    """
    splits = dataset.splits()
    order = sorted(range(len(dataset)), key=lambda i: (splits[i] != "train", dataset.ids[i]))
    if train_only and "train" in splits:
        order = [i for i in order if splits[i] == "train"]
    images, masks, used = [], [], []
    for index in order:
        if len(used) >= count:
            break
        try:
            sample = dataset[index]
        except (ValueError, OSError):  # an unreadable sample cannot be an exemplar; the build records it later
            continue
        stack = np.stack([sample.masks[o] for o in organs])
        if stack.reshape(len(organs), -1).any(axis=1).all():
            images.append(_grey(sample.image))
            masks.append(stack)
            used.append(sample.id)
    if not used:
        raise ValueError(f"{dataset.root}: no sample has every mask ({', '.join(organs)}) non-empty")
    return images, masks, used


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    return image.mean(axis=-1) if image.ndim == 3 else image


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- deformable


def choose_exemplar(
    dataset: Any, organs: tuple[str, ...], exemplar: str | None, config: Any = None, candidates: int = 8,
    probes: int = 16,
) -> tuple[str, np.ndarray, np.ndarray, dict[str, Any]]:
    """The exemplar's id, grey image, mask stack, and how it was chosen.

    Args:
        dataset: the dataset the maps are built for.
        organs: mask names, in channel order.
        exemplar: a sample id, or ``None`` / ``"auto"``: the most typical of
            the first ``candidates`` training samples with every mask
            (:func:`spanlib.maps.registration.select_exemplar`, registered onto
            ``probes`` samples spread over the sorted ids).
        config: registration settings of the automatic choice (a
            :class:`~spanlib.maps.registration.RegistrationConfig`; default settings otherwise).
        candidates: how many annotated samples compete.
        probes: how many samples they are registered onto.

    Raises:
        ValueError: an unknown id, or an exemplar without every mask.
    """
    from spanlib.maps.registration import RegistrationConfig, select_exemplar

    if exemplar is not None and exemplar != "auto":
        if exemplar not in dataset.ids:
            raise ValueError(f"{dataset.root}: no sample {exemplar!r} for --exemplar")
        sample = dataset[dataset.ids.index(exemplar)]
        missing = [o for o in organs if o not in sample.masks or not np.asarray(sample.masks[o]).any()]
        if missing:
            raise ValueError(f"{dataset.root}: exemplar {exemplar!r} has empty masks: {', '.join(missing)}")
        stack = np.stack([np.asarray(sample.masks[o], dtype=bool) for o in organs])
        return exemplar, _grey(sample.image), stack, {"selection": "given"}
    images, masks, ids = _labelled(dataset, organs, candidates, train_only=True)
    if len(ids) == 1:
        return ids[0], images[0], masks[0], {"selection": "auto", "scores": {ids[0]: None}}
    others = sorted(set(dataset.ids) - set(ids))
    picked = [others[int(i)] for i in np.linspace(0, len(others) - 1, min(probes, len(others)))] if others else []
    probe_images = []
    for probe in dict.fromkeys(picked):
        try:
            probe_images.append(_grey(dataset[dataset.ids.index(probe)].image))
        except (ValueError, OSError):  # unreadable: recorded when its own map is built
            continue
    probe_images = probe_images or images
    if not isinstance(config, RegistrationConfig):
        config = RegistrationConfig()
    best, scores = select_exemplar(list(zip(images, masks)), probe_images, config)
    info = {"selection": "auto", "probes": len(probe_images),
            "scores": {i: round(v, 4) for i, v in zip(ids, scores)}}
    return ids[best], images[best], masks[best], info


def _fallback_maps(fallback: str | Path | None, organs: tuple[str, ...], size: int, exemplar_masks: np.ndarray
                   ) -> tuple[np.ndarray, str]:
    if fallback is not None:
        maps = load_knowledge_maps(fallback)
        if maps.template is None or maps.organs != organs:
            raise ValueError(f"{Path(fallback) / MANIFEST}: --fallback needs a triangular or global directory "
                             f"with organs {list(organs)}, got kind {maps.kind!r} with {list(maps.organs)}")
        return resize_nearest(maps.template >= 0.5, size, size), maps.kind
    try:
        return heuristic_maps(size, size, organs), "triangular"
    except ValueError:
        return resize_nearest(exemplar_masks, size, size), "exemplar"


def _build_deformable(dataset: Any, organs: tuple[str, ...], out: Path, size: int, workers: int,
                      shard: tuple[int, int], exemplar: str | None, method: str, fallback: str | Path | None,
                      batch_size: int, overwrite: bool, progress: bool, config: Any, data_info: dict[str, Any]
                      ) -> dict[str, Any]:
    from tqdm import tqdm

    from spanlib.maps.registration import RegistrationConfig, SitkConfig

    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    if config is None:
        config = RegistrationConfig(batch_size=batch_size) if method == "torch" else SitkConfig()
    elif method == "torch":
        config = replace(config, batch_size=batch_size)
    previous = _previous_auto_exemplar(out, dataset.ids) if exemplar in (None, "auto") else None
    exemplar_id, exemplar_image, exemplar_masks, selection = choose_exemplar(dataset, organs, previous or exemplar,
                                                                             config)
    if previous:
        selection = {"selection": "auto", "kept_from": MANIFEST}
    exemplar_hash = content_hash(exemplar_image, exemplar_masks)
    fallback_maps, fallback_kind = _fallback_maps(fallback, organs, size, exemplar_masks)
    params = {"method": method, "config": {k: v for k, v in config.to_dict().items() if k != "batch_size"},
              "exemplar": {"id": exemplar_id, "hash": exemplar_hash[:16]}, "fallback": fallback_kind}
    manifest = _manifest("deformable", organs, size, params, data_info)
    if not _check_manifest(out, manifest, overwrite):
        (out / MAPS_DIR).mkdir(parents=True, exist_ok=True)
        write_json(out / MANIFEST, {**manifest, "exemplar_selection": selection, "created": _now()})
    job = _Job(str(dataset.root), str(out), organs, size, method, exemplar_image, exemplar_masks, exemplar_hash,
               fallback_maps, manifest["params_hash"], config)
    position = {sample_id: i for i, sample_id in enumerate(dataset.ids)}
    wanted = shard_ids(dataset.ids, shard)
    workers = max(1, int(workers))
    chunk = max(1, min(batch_size, math.ceil(len(wanted) / workers))) if method == "torch" else max(
        1, min(8, math.ceil(len(wanted) / workers)))
    tasks = [[(position[i], i) for i in wanted[s : s + chunk]] for s in range(0, len(wanted), chunk)]
    records: list[dict[str, Any]] = []
    with tqdm(total=len(wanted), disable=not progress, desc="deformable maps", unit="map") as bar:
        if workers == 1 or len(tasks) <= 1:
            _init_worker(job, limit_threads=False)
            try:
                for task in tasks:
                    records += _run_task(task)
                    bar.update(len(task))
            finally:
                _WORKER.clear()
        else:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["spanlib.maps.registration", "spanlib.data"])
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_init_worker,
                                     initargs=(job,)) as pool:
                for done in pool.map(_run_task, tasks):
                    records += done
                    bar.update(len(done))
    suffix = "" if shard == (0, 1) else f"-{shard[0]}-of-{shard[1]}"
    write_json(out / f"index{suffix}.json", {r["id"]: r["key"] for r in records if r.get("key")})
    return summarise(records, workers, shard, exemplar_id, fallback_kind)


def _previous_auto_exemplar(out: Path, ids: Sequence[str]) -> str | None:
    """The exemplar an earlier automatic choice settled on in ``out`` (resumes and shards agree)."""
    try:
        manifest = read_manifest(out)
    except MapFileError:
        return None
    chosen = manifest.get("params", {}).get("exemplar", {}).get("id")
    if manifest.get("kind") == "deformable" and manifest.get("exemplar_selection", {}).get("selection") == "auto" \
            and chosen in ids:
        return chosen
    return None


_WORKER: dict[str, Any] = {}


def _init_worker(job: _Job, limit_threads: bool = True) -> None:
    """Per-process state; a pool worker runs single-threaded (one worker per core)."""
    from spanlib.data import FolderDataset

    if limit_threads:
        import SimpleITK as sitk
        import torch

        torch.set_num_threads(1)
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    _WORKER.clear()
    _WORKER.update(job=job, dataset=FolderDataset(job.data))


def _run_task(task: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Build the maps of one batch of samples; cached ones are only checked."""
    from spanlib.maps.registration import register_batch, register_pair_sitk

    job: _Job = _WORKER["job"]
    dataset = _WORKER["dataset"]
    maps_dir = Path(job.out) / MAPS_DIR
    records: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], np.ndarray]] = []
    for index, sample_id in task:
        try:
            sample = dataset[index]
            if sample.id != sample_id:
                raise ValueError(f"dataset order changed: expected {sample_id!r} at {index}, found {sample.id!r}")
            image = _grey(sample.image)
        except Exception as error:  # noqa: BLE001 - an unreadable sample is recorded, the batch goes on
            records.append({"id": sample_id, "key": None, "status": "error", "method": None,
                            "reason": f"{type(error).__name__}: {error}", "quality": {}})
            continue
        key = map_key(content_hash(image), job.exemplar_hash, job.params_digest)
        path = maps_dir / f"{key}.npz"
        if path.is_file():
            try:
                _, info = read_maps(path, len(job.organs), job.size)
                records.append({"id": sample_id, "key": key, "status": "cached", "method": info.get("method"),
                                "reason": info.get("reason", ""), "quality": info.get("quality", {})})
                continue
            except MapFileError as error:
                rebuilt = f"rebuilt corrupt entry ({error.problem})"
        else:
            rebuilt = ""
        pending.append(({"id": sample_id, "key": key, "status": "built", "rebuilt": rebuilt}, image))
    if pending:
        images = [image for _, image in pending]
        if job.method == "torch":
            results = register_batch(images, job.exemplar_image, job.exemplar_masks, job.fallback_maps, job.config)
        else:
            results = [register_pair_sitk(im, job.exemplar_image, job.exemplar_masks, job.fallback_maps, job.config)
                       for im in images]
        for (record, _), result in zip(pending, results):
            record.update(method=result.method, reason=result.reason, quality=result.quality)
            info = {"id": record["id"], "method": result.method, "reason": result.reason, "quality": result.quality}
            save_maps(maps_dir / f"{record['key']}.npz", result.maps.astype(bool), info)
            if not record["rebuilt"]:
                record.pop("rebuilt")
            records.append(record)
    return records


def summarise(records: list[dict[str, Any]], workers: int, shard: tuple[int, int], exemplar_id: str,
              fallback_kind: str) -> dict[str, Any]:
    """The report of a deformable build."""
    methods: dict[str, int] = {}
    for record in records:
        if record["method"]:
            methods[record["method"]] = methods.get(record["method"], 0) + 1
    failures = [{"id": r["id"], "method": r["method"], "reason": r["reason"]}
                for r in records if r["status"] == "error" or r["method"] != "deformable"]
    quality: dict[str, dict[str, float]] = {}
    for name in ("ncc_identity", "ncc_affine", "ncc_deformable", "folding"):
        values = np.array([r["quality"].get(name, math.nan) for r in records if r["quality"]], dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            quality[name] = {stat: round(float(fn(values)), 4) for stat, fn in (
                ("min", np.min), ("p05", lambda v: np.percentile(v, 5)), ("median", np.median),
                ("p95", lambda v: np.percentile(v, 95)), ("max", np.max))}
    return {
        "kind": "deformable", "count": len(records),
        "built": sum(r["status"] == "built" for r in records),
        "cached": sum(r["status"] == "cached" for r in records),
        "rebuilt_corrupt": sum(bool(r.get("rebuilt")) for r in records),
        "errors": sum(r["status"] == "error" for r in records),
        "methods": methods, "fallback_template": fallback_kind, "failures": failures, "quality": quality,
        "workers": workers, "shard": f"{shard[0]}/{shard[1]}", "exemplar": exemplar_id, "records": records,
    }


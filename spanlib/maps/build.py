"""The knowledge-map builder: :func:`build_knowledge_maps` (``python -m spanlib templates build``).

It writes a knowledge-map directory (layout in :mod:`spanlib.maps.store`):

* ``triangular``: the spatial heuristic drawn at ``S x S``.
* ``global``: a small segmentation network trained on a few labelled training
  images, its probabilities averaged over the dataset (``template.npz`` keeps
  the binary map and the soft mean).
* ``deformable``: the exemplar (:func:`choose_exemplar`) registered onto every
  image, one ``maps/<key>.npz`` per image; the key hashes the image's content,
  the exemplar and the parameters, so a rerun skips what is built and rebuilds
  a corrupt or stale entry. Work is split into batches run by one
  single-threaded worker process per core (:mod:`spanlib.maps.workers`);
  ``shard=(i, n)`` takes every n-th of the sorted ids starting at i (each
  shard writes its own index and report, and the loader merges them). Images
  that fail fall back (affine, then the ``fallback`` template or the
  heuristic) and are listed in the report.

Every build ends with a summary report (``report.json``, or
``report-<i>-of-<n>.json`` for a shard): counts, failures with reasons,
methods, how many films fell back, quality distribution and time
(:func:`summarise`), and, when the set has masks of the maps' organs, the
built maps' Dice per organ against them
(:func:`spanlib.maps.quality.build_dice`). The command line
is :mod:`spanlib.maps.cli`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from spanlib.core.checkpoint import write_json
from spanlib.core.mapspec import MAP_KINDS
from spanlib.maps.heuristic import heuristic_maps
from spanlib.maps.quality import build_dice
from spanlib.maps.store import (
    MANIFEST,
    MAPS_DIR,
    TEMPLATE,
    MapFileError,
    content_hash,
    load_knowledge_maps,
    params_hash,
    read_manifest,
    read_maps,
    resize_nearest,
    save_maps,
)
from spanlib.maps.workers import Job, grey, parse_shard, run_tasks, shard_ids  # noqa: F401 - the shards' helpers, re-exported

FORMAT = "spanlib-maps/1"
METHODS = ("torch", "sitk")

# the JSON files of a map directory: indented by one, anything else written as a string
_JSON = {"indent": 1, "default": str}


# --------------------------------------------------------------------------- build


def build_knowledge_maps(
    kind: str, data: str | Path, out: str | Path, size: int | None = None, workers: int = 1,
    shard: tuple[int, int] = (0, 1), exemplar: str | None = None, split: str | None = None, method: str = "torch",
    fallback: str | Path | None = None, batch_size: int = 32, seg_train: int = 32, seg_steps: int = 150,
    seg_arch: str = "unet", overwrite: bool = False, progress: bool = False, registration_config: Any = None,
    reader: str = "folder", reader_options: dict[str, Any] | None = None, exemplar_from: str | Path | None = None,
    exemplar_reader: str = "folder", segmenter_from: str | Path | None = None, organs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Build (or resume) a knowledge-map directory; the library form of ``templates build``.

    Args:
        kind: ``triangular``, ``global`` or ``deformable``.
        data: dataset folder in the spanlib folder format.
        out: output directory.
        size: side of the stored maps (None: :func:`default_size`: the images' side for
            the heuristic, 64 for the others).
        workers: worker processes (deformable; global runs single-threaded here).
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
        reader: how to read ``data`` (a name of :data:`spanlib.data.READERS`:
            ``folder``, ``images``, ``chexpert``...).
        reader_options: that reader's options.
        exemplar_from: an annotated dataset to take the exemplar from (deformable), for a set without
            masks (the paper registers one JSRT film onto CheXpert); ``exemplar`` then names its id.
        exemplar_reader: how to read ``exemplar_from`` (and ``segmenter_from``).
        segmenter_from: an annotated dataset to train the segmentation network
            on (global), whose predictions are then averaged over ``data``:
            the paper trains on 200 JSRT films.
        organs: the maps to draw (triangular) when the dataset has no masks to name them.

    Returns:
        The summary report (also written to ``report*.json``), with the
        per-image ``records`` (deformable).

    Raises:
        ValueError: bad arguments, a dataset without masks, an unknown exemplar,
            or a directory built with other settings (without ``overwrite``).
    """
    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    if size is not None and size < 4:
        raise ValueError(f"--size must be at least 4, got {size}")
    if shard != (0, 1) and kind != "deformable":
        raise ValueError("--shard applies to --kind deformable only (the other kinds build one map set)")
    start = time.perf_counter()
    out = Path(out)
    reader_options = {**(reader_options or {}), **({"split": split} if split is not None else {})}
    source = exemplar_from if kind == "deformable" else segmenter_from if kind == "global" else None
    dataset, annotated, organs, data_info = _open_sets(kind, data, reader, reader_options, split, source,
                                                       exemplar_reader, organs if kind == "triangular" else ())
    size = size if size is not None else default_size(kind, dataset)
    if kind == "triangular":
        report = _build_triangular(out, organs, size, data_info, overwrite)
    elif kind == "global":
        report = _build_global(dataset, annotated, organs, out, size, data_info, overwrite, progress,
                               seg_arch, seg_steps, seg_train)
    else:
        report = _build_deformable(dataset, organs, out, size, workers, shard, exemplar, method, fallback,
                                   batch_size, overwrite, progress, registration_config, data_info, annotated,
                                   reader, reader_options)
    _finish_report(report, time.perf_counter() - start, out, dataset, shard)
    suffix = "" if shard == (0, 1) else f"-{shard[0]}-of-{shard[1]}"
    write_json(out / f"report{suffix}.json", report, **_JSON)
    return report


def _finish_report(report: dict[str, Any], seconds: float, out: Path, dataset: Any, shard: tuple[int, int]) -> None:
    """Time, speed and, for a whole build on a set with masks, the built maps' Dice against them (a shard sees part)."""
    report["time_s"] = round(seconds, 3)
    if report["kind"] == "deformable":
        built = report["built"]
        report["maps_per_s"] = round(built / report["time_s"], 3) if built and report["time_s"] > 0 else None
    if shard == (0, 1):
        report.update(build_dice(load_knowledge_maps(out), dataset))


DEFAULT_SIZE = 64
"""Side of stored global and deformable maps unless asked otherwise."""


def default_size(kind: str, dataset: Any) -> int:
    """The side maps are stored at unless asked: the images' side for the heuristic, else :data:`DEFAULT_SIZE`.

    The heuristic is drawn at the size of the images it is for, so that the
    maps training reads (:meth:`~spanlib.maps.store.KnowledgeMaps.maps_at`)
    are the triangles drawn at the image's own size, not a 64-pixel drawing
    enlarged. The side is the first image's longer side (every generated set
    has one square size).
    """
    if kind != "triangular" or len(dataset) == 0:
        return DEFAULT_SIZE
    return int(max(np.asarray(dataset[0].image).shape[:2]))


def _open_sets(kind: str, data: str | Path, reader: str, reader_options: dict[str, Any], split: str | None,
               source: str | Path | None, source_reader: str, unmasked: tuple[str, ...] = ()
               ) -> tuple[Any, Any, tuple[str, ...], dict[str, Any]]:
    """The dataset the maps are for, the annotated one their masks come from, its organs and the report's data entry.

    The organs are the annotated set's mask names, else ``unmasked`` (the heuristic needs no masks).

    Raises:
        ValueError: no masks to take the organs from.
    """
    from spanlib.data import open_dataset

    dataset = open_dataset(reader, data, **reader_options)
    annotated = open_dataset(source_reader, source) if source is not None else dataset
    organs = tuple(annotated.mask_names) or tuple(unmasked)
    if not organs:
        where = Path(source) if source is not None else Path(data)
        hint = "" if source is not None or kind == "triangular" else (
            "; for a set without masks take them from another set: --exemplar-from DIR (deformable) "
            "or --segmenter-from DIR (global)")
        raise ValueError(f"{where}: the dataset has no masks{hint}")
    data_info = {"name": Path(data).name, "samples": len(dataset), "split": split, "reader": reader,
                 "generator": dataset.meta.get("generator"), "seed": dataset.meta.get("seed")}
    if source is not None:
        data_info["annotated_from"] = {"path": str(source), "reader": source_reader, "samples": len(annotated)}
    return dataset, annotated, organs, data_info


def _build_triangular(out: Path, organs: tuple[str, ...], size: int, data_info: dict[str, Any], overwrite: bool
                      ) -> dict[str, Any]:
    """The spatial heuristic drawn at ``size x size``: triangles for chest organs, rings for part regions."""
    params = {"heuristic": "triangles" if "heart" in organs or "left_lung" in organs else "rings"}
    manifest = _manifest("triangular", organs, size, params, data_info)
    return _build_template(out, manifest, overwrite, lambda: (heuristic_maps(size, size, organs), None, {}))


def _build_global(dataset: Any, annotated: Any, organs: tuple[str, ...], out: Path, size: int,
                  data_info: dict[str, Any], overwrite: bool, progress: bool, seg_arch: str, seg_steps: int,
                  seg_train: int) -> dict[str, Any]:
    """A segmenter trained on ``annotated``, its probabilities averaged over ``dataset``."""
    from spanlib.maps.segmentation import SegConfig

    seg_config = SegConfig(arch=seg_arch, steps=seg_steps, n_train=seg_train)
    params = {"segmentation": seg_config.to_dict(), "ids_hash": params_hash({"ids": sorted(dataset.ids)})}
    if annotated is not dataset:
        params["trained_on_hash"] = params_hash({"ids": sorted(annotated.ids), "root": str(annotated.root)})
    manifest = _manifest("global", organs, size, params, data_info)
    return _build_template(out, manifest, overwrite,
                           lambda: _global_average(dataset, organs, size, seg_config, out, progress, annotated))


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
    write_json(out / MANIFEST, {**manifest, "created": _now(), **({"info": info} if info else {})}, **_JSON)
    return {"kind": manifest["kind"], "count": 1, "built": 1, "cached": 0, "failures": [], **info}


def _global_average(dataset: Any, organs: tuple[str, ...], size: int, config: Any, out: Path, progress: bool,
                    annotated: Any = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train (or reload) the segmenter on ``annotated`` (default: the dataset), average its probabilities over the dataset."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from spanlib.maps.registration import single_thread
    from spanlib.maps.segmentation import load_segmenter, predict_probabilities, save_segmenter, train_segmenter

    with single_thread():  # small convolutions: a second intra-op thread only adds waiting (see single_thread)
        checkpoint = out / "segmenter.pt"
        annotated = dataset if annotated is None else annotated
        digest = params_hash({"config": config.to_dict(), "organs": organs,
                              **({} if annotated is dataset else {"trained_on": str(annotated.root)})})
        model = None
        if checkpoint.is_file():
            try:
                model, _, _, info = load_segmenter(checkpoint)
                model = model if info.get("digest") == digest else None
            except ValueError:
                model = None
        if model is None:
            images, masks, used = _labelled(annotated, organs, config.n_train)
            model, info = train_segmenter(images, masks, config)
            info = {**info, "digest": digest, "train_ids": used}
            save_segmenter(checkpoint, model, config, organs, info)
        total = np.zeros((len(organs), config.size, config.size), dtype=np.float64)
        batch = 64
        for start in tqdm(range(0, len(dataset), batch), disable=not progress, desc="global average", unit="batch"):
            images = [np.asarray(s.image) for s in dataset[start : start + batch]]  # unreadable: raises, naming the file
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
            images.append(grey(sample.image))
            masks.append(stack)
            used.append(sample.id)
    if not used:
        raise ValueError(f"{dataset.root}: no sample has every mask ({', '.join(organs)}) non-empty")
    return images, masks, used


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
        return exemplar, grey(sample.image), stack, {"selection": "given"}
    images, masks, ids = _labelled(dataset, organs, candidates, train_only=True)
    if len(ids) == 1:
        return ids[0], images[0], masks[0], {"selection": "auto", "scores": {ids[0]: None}}
    others = sorted(set(dataset.ids) - set(ids))
    picked = [others[int(i)] for i in np.linspace(0, len(others) - 1, min(probes, len(others)))] if others else []
    probe_images = []
    for probe in dict.fromkeys(picked):
        try:
            probe_images.append(grey(dataset[dataset.ids.index(probe)].image))
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
                      batch_size: int, overwrite: bool, progress: bool, config: Any, data_info: dict[str, Any],
                      annotated: Any = None, reader: str = "folder", reader_options: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    from tqdm import tqdm

    from spanlib.maps.registration import RegistrationConfig
    from spanlib.maps.registration_sitk import SitkConfig

    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    if config is None:
        config = RegistrationConfig(batch_size=batch_size) if method == "torch" else SitkConfig()
    elif method == "torch":
        config = replace(config, batch_size=batch_size)
    annotated = dataset if annotated is None else annotated
    previous = _previous_auto_exemplar(out, annotated.ids) if exemplar in (None, "auto") else None
    exemplar_id, exemplar_image, exemplar_masks, selection = choose_exemplar(annotated, organs, previous or exemplar,
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
        write_json(out / MANIFEST, {**manifest, "exemplar_selection": selection, "created": _now()}, **_JSON)
    job = Job(str(dataset.root), str(out), organs, size, method, exemplar_image, exemplar_masks, exemplar_hash,
              fallback_maps, manifest["params_hash"], config, reader, dict(reader_options or {}))
    position = {sample_id: i for i, sample_id in enumerate(dataset.ids)}
    wanted = shard_ids(dataset.ids, shard)
    workers = max(1, int(workers))
    chunk = max(1, min(batch_size, math.ceil(len(wanted) / workers))) if method == "torch" else max(
        1, min(8, math.ceil(len(wanted) / workers)))
    tasks = [[(position[i], i) for i in wanted[s : s + chunk]] for s in range(0, len(wanted), chunk)]
    with tqdm(total=len(wanted), disable=not progress, desc="deformable maps", unit="map") as bar:
        records = run_tasks(job, tasks, workers, bar)
    suffix = "" if shard == (0, 1) else f"-{shard[0]}-of-{shard[1]}"
    write_json(out / f"index{suffix}.json", {r["id"]: r["key"] for r in records if r.get("key")}, **_JSON)
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
        "methods": methods, "fell_back": sum(r["method"] != "deformable" for r in records if r["method"]),
        "fallback_template": fallback_kind, "failures": failures, "quality": quality,
        "workers": workers, "shard": f"{shard[0]}/{shard[1]}", "exemplar": exemplar_id, "records": records,
    }

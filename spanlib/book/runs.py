"""Helpers shared by the book's notebooks: where things are, what preset runs.

A notebook's ``parameters`` cell holds plain scalars (the ``book`` preset);
papermill overrides them with ``notebooks/params/<preset>.yaml`` for CI
(``smoke``) and GPU (``paper``) runs. These helpers turn the scalars into
paths that work whether the notebook runs from ``notebooks/`` (Jupyter Book,
papermill, JupyterLab) or from the repository root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanlib.core.configs import REGIMENS, Config, load_config, resolve, resolve_start
from spanlib.core.mapspec import MapSpec, maps_folder
from spanlib.core.paths import data_dir, folder_lock, project_root, runs_dir  # noqa: F401 - the notebooks take paths from here
from spanlib.data import make_default_data, open_dataset
from spanlib.maps import build
from spanlib.maps.store import MANIFEST, MapFileError, read_manifest
from spanlib.pretrain.train import pretrain


def record(results_path: str | Path | None, **values: object) -> None:
    """Record named results of a notebook run for a sweep's table.

    A notebook's parameters cell has ``results_path = ""``; a sweep sets it,
    and the values recorded here land in that JSON file (merged with what
    was recorded before). With an empty path this does nothing.
    """
    if not results_path:
        return
    path = Path(results_path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


class RunHandle:
    """A finished pretraining run: where it is, its config, its summary."""

    def __init__(self, path: Path, root: Path):
        self.path = path
        self.root = root
        self.config = load_config(path / "config.yaml")
        done = path / "done.json"
        self.summary = json.loads(done.read_text()) if done.exists() else {}

    def __repr__(self) -> str:
        return f"RunHandle({self.path})"


def ensure_maps(kind: str, data: Path, out: Path, workers: int | None = None, reader: str = "folder",
                maps_from: str | None = None, organs: tuple[str, ...] = ()) -> Path:
    """Build knowledge maps (:func:`spanlib.maps.build.build_knowledge_maps`) unless built.

    The builder itself resumes: maps already built are skipped. A lock file
    beside ``out`` makes concurrent callers wait for one build. The build's
    summary is printed as ``python -m spanlib templates build`` prints it.
    For a user's own data: ``reader`` reads ``data``, and ``maps_from`` is an
    annotated folder giving the exemplar (deformable) or the segmenter's
    training films (global). ``organs``: the heuristic's maps for a ``data``
    without masks (the run's assigned heads).

    Raises:
        RuntimeError: the build failed (bad data, unreadable files).
    """
    if _maps_built(kind, out, data, reader):
        return out
    # notebooks run at once (a sweep with workers) wait here for the first to build the maps
    with folder_lock(out):
        if _maps_built(kind, out, data, reader):
            return out
        try:
            report = build.build_knowledge_maps(kind=kind, data=str(data), out=str(out), exemplar="auto",
                                                workers=workers or os.cpu_count() or 1, progress=False, reader=reader,
                                                exemplar_from=maps_from if kind == "deformable" else None,
                                                segmenter_from=maps_from if kind == "global" else None,
                                                organs=tuple(organs),
                                                overwrite=(out / MANIFEST).is_file())
        except (ValueError, OSError, KeyError) as error:
            raise RuntimeError(f"{out}: building {kind} knowledge maps failed: {error}") from error
        print(json.dumps({k: v for k, v in report.items() if k != "records"}, indent=1))
    return out


def _maps_built(kind: str, out: Path, data: Path, reader: str) -> bool:
    """Whether ``out`` holds a finished build of ``kind`` (the heuristic: drawn at the images' size).

    A triangular folder drawn at another size (an older build at 64 pixels)
    is built again: training reads the heuristic at the images' own size.
    """
    if not ((out / MANIFEST).is_file() and (out / "report.json").is_file()):
        return False
    try:
        manifest = read_manifest(out)
    except MapFileError:
        return False
    if manifest["kind"] != kind:
        return False
    return kind != "triangular" or manifest["size"] == build.default_size(kind, open_dataset(reader, data))


def knowledge_maps_dir(spec: MapSpec, preset: str, dataset: str = "chest", data: str | Path | None = None,
                       reader: str = "folder", maps_from: str | None = None, workers: int | None = None,
                       organs: tuple[str, ...] = ()) -> Path:
    """The folder of ``spec``'s maps by the one rule (:func:`spanlib.core.mapspec.maps_folder`), built if need be.

    Args:
        spec: a built kind (``triangular``, ``global``, ``deformable``).
        preset, dataset, data: whose maps: the preset's generated ``dataset``,
            or a user's own ``data`` folder (read with ``reader``).
        maps_from, organs: for a ``data`` without masks (see :func:`ensure_maps`).
    """
    folder = maps_folder(spec, preset, dataset, data)
    if folder is None:
        raise ValueError(f"knowledge maps of kind {spec.kind!r} are not built (the ground truth itself)")
    films, reader = (Path(data), reader) if data else (generated_data(preset)[dataset], "folder")
    return ensure_maps(spec.kind, films, folder, workers=workers, reader=reader, maps_from=maps_from, organs=organs)


def generated_data(preset: str) -> dict[str, Path]:
    """The preset's generated datasets, made if need be."""
    return make_default_data(preset, project_root() / "data" / "generated" / preset, seed=0)


@dataclass(frozen=True)
class RunKey:
    """What names a run of the book: preset, regimen, seed and the swept settings.

    Attributes:
        preset: ``smoke``, ``book`` or ``paper``.
        regimen: one of :data:`spanlib.core.configs.REGIMENS`.
        seed: the run's seed.
        lambda_span: SPAN's inclusion and exclusion weight (None: the preset's).
        epochs: pretraining epochs (None: the preset's).
        dataset: ``chest`` or another dataset of the book (``parts``).
        data: a user's own dataset folder instead of the generated one.
        terms: SPAN's terms: ``both`` (the method), ``inclusion`` or
            ``exclusion`` only (the paper's appendix ablation).
        renormalize: renormalise the assigned heads' attention before the
            terms (None: the preset's; see :mod:`spanlib.model.span`).
        from_start: the run continues the preset's shared start
            (:mod:`spanlib.book.start`) instead of training from random weights.
        pretrained: a local checkpoint (DINO's released weights or a timm
            state dict) the run starts from instead of the shared start: the
            paper's ImageNet DINO start (``dino_start`` is that checkpoint, frozen).
        batch_size: films per step and process (None: the preset's; a GPU
            with less memory, or a dry run on a few films).
    """

    preset: str
    regimen: str
    seed: int = 0
    lambda_span: float | None = None
    epochs: int | None = None
    dataset: str = "chest"
    data: str | None = None
    terms: str = "both"
    renormalize: bool | None = None
    from_start: bool = False
    pretrained: str | None = None
    batch_size: int | None = None

    def path(self) -> Path:
        """Where the run lives.

        ``runs/<preset>/<regimen>/seed<seed>[-lambda..][-epochs..]`` for chest
        films, ``runs/<preset>/<dataset>/<regimen>/...`` for another dataset,
        ``runs/<preset>/data-<folder name>/<regimen>/...`` for a user's own data.
        """
        name = f"seed{self.seed}"
        if self.lambda_span is not None:
            name += f"-lambda{self.lambda_span:g}"
        if self.epochs is not None:
            name += f"-epochs{self.epochs}"
        if self.terms != "both":
            name += f"-{self.terms}"
        if self.renormalize is not None:
            name += "-renormalized" if self.renormalize else "-raw"
        if self.from_start and self.regimen != "dino_start":
            name += "-from-start"
        if self.pretrained and self.regimen != "random":
            name += f"-from-{Path(self.pretrained).stem}"
        if self.batch_size is not None:
            name += f"-batch{self.batch_size}"
        base = runs_dir(self.preset) if self.dataset == "chest" else runs_dir(self.preset) / self.dataset
        if self.data:
            base = runs_dir(self.preset) / f"data-{Path(self.data).name}"
        return base / self.regimen / name


def run_dir(*key: Any, **named: Any) -> Path:
    """Where a run of the book lives: :class:`RunKey`'s fields, positional or named, to :meth:`RunKey.path`."""
    return RunKey(*key, **named).path()


def chapter_data(preset: str, kind: str = "chest", data: str | None = None, reader: str = "folder"
                 ) -> tuple[Path, str]:
    """The data a chapter runs on and its reader: a user's ``data`` when given, else the generated set."""
    if data:
        return Path(data), reader
    return data_dir(preset, kind), "folder"


# ---------------------------------------------------------------------------- the shared start


def start_dir(preset: str) -> Path:
    """Where a preset's shared start lives: ``runs/<preset>/start``."""
    return runs_dir(preset) / "start"


def has_start(preset: str) -> bool:
    """Whether the preset defines a shared start (the ``paper`` preset starts from ImageNet weights instead)."""
    return resolve_start(preset) is not None


def continues_start(preset: str) -> bool:
    """Whether the preset's regimens continue its shared start by default."""
    spec = resolve_start(preset)
    return spec is not None and spec.continued


def ensure_start(preset: str) -> Path | None:
    """Train the preset's shared start unless it is trained; its run directory (None: no start).

    A lock beside the run makes concurrent callers (a sweep's workers) wait
    for one training. A killed training resumes from its last checkpoint.
    What the start is and reports: :mod:`spanlib.book.start`.
    """
    spec = resolve_start(preset)
    if spec is None:
        return None
    cfg, datasets = spec.config, spec.datasets
    out = start_dir(preset)
    if (out / "done.json").is_file():
        return out
    paths = generated_data(preset)
    missing = [d for d in datasets if d not in paths]
    if missing:
        raise ValueError(f"preset {preset!r}: the start pools {missing}, which the preset's data does not make")
    cfg = cfg.replace(**{"run.data": [str(paths[d]) for d in datasets]})
    with folder_lock(out):
        if (out / "done.json").is_file():
            return out
        if (out / "config.yaml").is_file() and load_config(out / "config.yaml") != cfg:
            print(f"{out}: the start's configuration changed; training it again")
            shutil.rmtree(out)
        pretrain(cfg, out, resume=True)
    return out


# ---------------------------------------------------------------------------- a run of the book


def ensure_pretrained(
    preset: str,
    regimen: str,
    seed: int = 0,
    lambda_span: float | None = None,
    epochs: int | None = None,
    dataset: str = "chest",
    data: str | None = None,
    reader: str = "folder",
    maps_from: str | None = None,
    terms: str = "both",
    renormalize: bool | None = None,
    from_start: bool | None = None,
    pretrained: str | None = None,
    batch_size: int | None = None,
) -> RunHandle:
    """Make sure data, knowledge maps, the shared start and the run exist; train what is missing.

    Every step is cached on disk: the data by its generator settings, the
    maps by the templates builder's cache, the run by its ``done.json``. A
    run directory whose saved configuration differs from the one asked for
    is trained again from scratch.

    Args:
        data: pretrain on this folder (read with ``reader``) instead of the
            generated ``dataset``; the papermill parameters ``-p data DIR
            -p reader NAME`` of the chapters land here.
        maps_from: an annotated folder (folder format) for the knowledge maps
            of a ``data`` without masks: its exemplar (deformable) or its
            masks for the segmenter (global).
        terms, renormalize: as :class:`RunKey` names them.
        from_start: continue the preset's shared start (None: as the preset's
            ``start.continued`` says). ``dino_start`` is always the start
            itself, frozen; ``random`` never continues it.
        pretrained: a local checkpoint to start from instead of the shared
            start (DINO's released ``dino_deitsmall16_pretrain.pth``, a timm
            state dict; the chapters' ``pretrained`` parameter): ``dino_start``
            is that checkpoint frozen, every trained regimen continues it,
            ``random`` ignores it. Nothing is downloaded.
        batch_size: films per step (None: the preset's).

    Raises:
        FileNotFoundError: ``pretrained`` names no file.
        ValueError: ``dino_start`` asked of a preset with neither a shared
            start nor a ``pretrained`` checkpoint (it would be an untrained
            network, not DINO).
    """
    key = run_key(preset, regimen, seed, lambda_span, epochs, dataset, data, terms, renormalize, from_start,
                  pretrained, batch_size)
    cfg = run_config(key, reader, maps_from)
    out = key.path()
    _train_cached(cfg, out)
    return RunHandle(out, project_root())


def run_key(preset: str, regimen: str, seed: int = 0, lambda_span: float | None = None, epochs: int | None = None,
            dataset: str = "chest", data: str | None = None, terms: str = "both", renormalize: bool | None = None,
            from_start: bool | None = None, pretrained: str | None = None, batch_size: int | None = None
            ) -> RunKey:
    """The :class:`RunKey` of :func:`ensure_pretrained`'s arguments, with the preset's defaults filled in."""
    if terms not in ("both", "inclusion", "exclusion"):
        raise ValueError(f"terms must be both, inclusion or exclusion, not {terms!r}")
    pretrained = str(Path(pretrained).resolve()) if pretrained else None
    if pretrained and not Path(pretrained).is_file():
        raise FileNotFoundError(f"{pretrained}: pretrained checkpoint not found (the `pretrained` parameter names "
                                "a local file, e.g. DINO's dino_deitsmall16_pretrain.pth; nothing is downloaded)")
    if regimen == "dino_start" and not pretrained and not has_start(preset):
        raise ValueError(start_note(preset, None))
    if pretrained:  # the checkpoint is the start: no shared start
        from_start = False
    elif from_start is None:
        from_start = continues_start(preset)
    from_start = (bool(from_start) or regimen == "dino_start") and regimen != "random" and not pretrained
    # the frozen start has one set of weights whatever the seed: one run directory (its features cached once),
    # made with one configuration (a seed in it would make every seed's call find it "changed" and redo it)
    if regimen == "dino_start":
        seed = 0
    return RunKey(preset, regimen, seed, lambda_span, epochs, dataset, str(data) if data else None, terms,
                  renormalize, from_start, pretrained if regimen != "random" else None,
                  int(batch_size) if batch_size else None)


def start_note(preset: str, pretrained: str | None) -> str:
    """What a preset's runs start from, in one plain sentence (the chapters print it)."""
    if pretrained:
        return (f"preset {preset!r}: every trained regimen continues the checkpoint {Path(pretrained).name}; "
                "dino_start is that checkpoint, frozen")
    if has_start(preset):
        how = "continues" if continues_start(preset) else "is compared with"
        return f"preset {preset!r}: every trained regimen {how} the book's shared start; dino_start is it, frozen"
    return (f"preset {preset!r} has no `pretrained` checkpoint and no shared start: every regimen trains from "
            "scratch (random weights), and there is no dino_start row, since an untrained network is not DINO. "
            "Pass pretrained=PATH (papermill -p pretrained PATH; DINO's released ViT-S/16 weights, "
            "dino_deitsmall16_pretrain.pth) to start from DINO's ImageNet weights as the paper does")


def chapter_regimens(preset: str, pretrained: str | None = None) -> tuple[str, ...]:
    """The regimens a chapter shows: every one, less ``dino_start`` where nothing stands for DINO's start."""
    if pretrained or has_start(preset):
        return REGIMENS
    return tuple(r for r in REGIMENS if r != "dino_start")


def run_config(key: RunKey, reader: str = "folder", maps_from: str | None = None) -> Config:
    """The configuration ``key``'s run trains with; its data, shared start and knowledge maps made if need be.

    The knowledge maps of a SPAN regimen are placed by the one rule
    (:func:`spanlib.core.mapspec.maps_folder`), built, and the config names
    that folder (``span.knowledge_maps.location``), whatever their kind.
    """
    if key.data:
        paths = {key.dataset: Path(key.data)}
    else:
        paths, reader = generated_data(key.preset), "folder"
    overrides: dict[str, object] = {"run.seed": key.seed, "run.data": str(paths[key.dataset]), "run.reader": reader}
    if key.lambda_span is not None:
        overrides["span.lambda_inclusion"] = key.lambda_span
        overrides["span.lambda_exclusion"] = key.lambda_span
    if key.epochs is not None:
        overrides["optim.epochs"] = key.epochs
    if key.batch_size is not None:
        overrides["optim.batch_size"] = key.batch_size
    if key.renormalize is not None:
        overrides["span.renormalize"] = bool(key.renormalize)
    if key.from_start:
        start = ensure_start(key.preset)
        if start is not None:
            overrides["run.init_from"] = str(start)
    if key.pretrained:
        overrides["model.pretrained_path"] = key.pretrained
    cfg = resolve(key.preset, key.regimen, overrides, dataset=key.dataset)
    if key.terms != "both":  # one term alone: the other's weight to zero
        cfg = cfg.replace(**{f"span.lambda_{'exclusion' if key.terms == 'inclusion' else 'inclusion'}": 0.0})
    spec = cfg.span.knowledge_maps
    if cfg.span.assigned_heads and spec is not None and spec.built:
        folder = knowledge_maps_dir(spec, key.preset, key.dataset, key.data, reader, maps_from,
                                    organs=tuple(cfg.span.assigned_heads))
        cfg = cfg.replace(**{"span.knowledge_maps": spec.at(folder)})
    return cfg


def _train_cached(cfg: Config, out: Path) -> None:
    """Train ``cfg`` into ``out`` unless done; a run made with another configuration or start is trained again."""
    # the start a run continued, by the content of its done.json: a start trained again retrains its runs
    start_id = _start_id(cfg.run.init_from) + _file_id(cfg.model.pretrained_path)
    recorded = (out / "start-id").read_text() if (out / "start-id").is_file() else None
    if (out / "config.yaml").exists():
        if load_config(out / "config.yaml") != cfg:
            print(f"{out}: configuration changed since this run was made; training it again")
            shutil.rmtree(out)
        elif recorded is not None and recorded != start_id:
            print(f"{out}: its shared start was trained again; training it again")
            shutil.rmtree(out)
    pretrain(cfg, out, resume=True)
    if start_id:
        (out / "start-id").write_text(start_id)


def _file_id(path: str | None) -> str:
    """A fingerprint of a pretrained checkpoint a run starts from (size and modification time; '' for none)."""
    if not path or not Path(path).is_file():
        return ""
    stat = Path(path).stat()
    return f"file-{stat.st_size}-{stat.st_mtime_ns}"


def _start_id(init_from: str | None) -> str:
    """A fingerprint of the finished start a run continues ('' for none)."""
    if not init_from:
        return ""
    done = Path(init_from) / "done.json"
    return hashlib.blake2b(done.read_bytes(), digest_size=8).hexdigest() if done.is_file() else ""

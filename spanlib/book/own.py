"""The book on your own films, one command: ``python -m spanlib book --data DIR --reader images``.

Three stages, each shown as it goes and each cached, so a second call (or a
call after a killed one) redoes only what changed:

1. **Checks, before anything trains** (:func:`check_sets`): every set is
   opened and scanned (every bad file named; bad files are left out, as the
   loaders leave them out), and what a chapter needs and the set lacks is an
   error naming it: too few films for one batch, no labels for the linear
   probe, no masks to score attention against, no exemplar for the
   registered maps, no validation split to choose a baseline's head on. A
   step the set cannot serve but the book can do without is a note: the
   inspection chapter on a set without part masks keeps its SPAN backbone by
   a stated rule (:func:`spanlib.book.summary.part_regimens`).
2. **The chapters** of ``_toc.yml`` through papermill with their ``data`` /
   ``reader`` parameters (:func:`chapter_parameters`): the chest chapters
   on ``--data``, the inspection chapter on ``--parts-data``; a chapter
   that takes no data runs on the generated sets, as in the published book.
   An executed chapter is kept with a stamp of its source and parameters
   and is not run again while both stay the same; the runs and maps it made
   are cached under ``runs/<preset>/data-<name>/`` as every chapter caches them.
3. **The HTML book** (:func:`build_html`): the executed chapters in place of
   their text sources, ``jupyter-book build -W --keep-going``.

``make book DATA=DIR READER=images`` calls this verb.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from spanlib.book.summary import PART_TRAINED, TRAINED
from spanlib.core.configs import preset_names, resolve
from spanlib.core.paths import project_root, runs_dir
from spanlib.core.presets import notebook_parameters
from spanlib.data import open_dataset, scan
from spanlib.data.sample import DataError
from spanlib.data.scan import bad_samples

PARTS_CHAPTERS = ("06_inspection",)
"""Chapters whose ``data`` / ``reader`` are the inspection set (the others' are the chest films)."""



class OwnBookError(RuntimeError):
    """The book cannot be made on these sets: the message names what is missing or what failed."""


@dataclass(frozen=True)
class OwnSets:
    """The sets a book on your own films reads (empty strings: the generated set).

    Attributes:
        data, reader: the chest films the chest chapters pretrain on.
        maps_from: an annotated set giving the exemplar / the segmenter's films when ``data`` has no masks.
        eval_data, eval_reader: an annotated set attention is scored on (default: ``data``).
        select_on: where a baseline's head is chosen when the scored set has no validation split.
        parts_data, parts_reader: the inspection set (casting folders...).
    """

    data: str = ""
    reader: str = "images"
    maps_from: str = ""
    eval_data: str = ""
    eval_reader: str = "images"
    select_on: str = ""
    parts_data: str = ""
    parts_reader: str = "casting"

    def resolved(self) -> OwnSets:
        """The same sets with every folder made absolute (the chapters run from ``notebooks/``, not from here).

        ``select_on`` is a folder only when one exists by that name (else a split such as ``train``).
        """
        def absolute(path: str) -> str:
            return str(Path(path).resolve()) if path else ""

        select_on = absolute(self.select_on) if self.select_on and Path(self.select_on).is_dir() else self.select_on
        return replace(self, data=absolute(self.data), maps_from=absolute(self.maps_from),
                       eval_data=absolute(self.eval_data), select_on=select_on, parts_data=absolute(self.parts_data))

    def name(self) -> str:
        """The folder name the book's own files go under: ``data-<chest folder>`` (or the parts folder)."""
        return f"data-{Path(self.data or self.parts_data).name}"


@dataclass
class Checks:
    """What :func:`check_sets` found: ``errors`` stop the book before training, ``notes`` are said and kept."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _batch(preset: str, regimens: tuple[str, ...], dataset: str = "chest") -> int:
    return max(resolve(preset, r, dataset=dataset).optim.batch_size for r in regimens)


def _opened(what: str, reader: str, folder: str, checks: Checks, progress: bool, **options: Any) -> Any:
    """A set opened and scanned: its bad files are notes (they are left out), an unreadable set an error."""
    try:
        dataset = open_dataset(reader, folder, **options)
    except (DataError, ValueError, TypeError) as error:
        checks.errors.append(f"{what}: {error}")
        return None
    problems = scan(dataset, progress=progress)
    good = len(dataset) - len(bad_samples(dataset, problems))
    checks.notes.append(f"{what} ({reader} reader at {folder}): {len(dataset)} films, {good} good, "
                        f"{len(problems)} problem(s)")
    checks.notes += [f"  BAD {problem} (left out)" for problem in problems]
    return dataset


def _count(dataset: Any, split: str) -> int:
    return sum(record.split == split for record in dataset.records)


def _check_chest(sets: OwnSets, preset: str, checks: Checks, progress: bool) -> None:
    """The chest chapters' needs: a batch of training films, labels, masks or an exemplar, masks to score on."""
    films = _opened("--data", sets.reader, sets.data, checks, progress)
    if films is None:
        return
    organs = tuple(resolve(preset, "span_deformable").span.assigned_heads)
    batch = _batch(preset, TRAINED)
    training = _count(films, "train") or len(films)
    if training < batch:
        checks.errors.append(f"--data {sets.data}: too few films: {training} to pretrain on, the {preset} preset "
                             f"trains in batches of {batch}")
    if not films.label_names:
        checks.errors.append(f"--data {sets.data}: no labels for the linear probe (chapter 05): add labels.csv "
                             "(an id column, then one column per finding: 1, 0, -1 or empty)")
    missing = [o for o in organs if o not in films.mask_names]
    if missing and not sets.maps_from:
        checks.errors.append(f"--data {sets.data}: no exemplar for the registered maps and no films for the "
                             f"segmenter: no masks of {', '.join(missing)}; give --maps-from DIR (an annotated set)")
    if sets.maps_from:
        annotated = _opened("--maps-from", "folder", sets.maps_from, checks, False)  # as the chapters read it
        if annotated is not None and [o for o in organs if o not in annotated.mask_names]:
            checks.errors.append(f"--maps-from {sets.maps_from}: no masks of {', '.join(organs)}")
    scored = _opened("--eval-data", sets.eval_reader, sets.eval_data, checks, progress) if sets.eval_data else films
    if scored is None:
        return
    where = f"--eval-data {sets.eval_data}" if sets.eval_data else f"--data {sets.data}"
    lacking = [o for o in organs if o not in scored.mask_names]
    if lacking:
        checks.errors.append(f"{where}: no masks to score attention against ({', '.join(lacking)}); give "
                             "--eval-data DIR (an annotated set with masks/<organ>/)")
    elif not _count(scored, "test"):
        checks.errors.append(f"{where}: no test films to score attention on")
    elif not _count(scored, "val") and not sets.select_on:
        checks.errors.append(f"{where}: no validation split to choose the DINO baselines' head on (never the "
                             "test split); give --select-on SPLIT_OR_DIR")


def _check_parts(sets: OwnSets, preset: str, checks: Checks, progress: bool) -> None:
    """The inspection chapter's needs: a batch of training parts, the defect label on both splits."""
    parts = _opened("--parts-data", sets.parts_reader, sets.parts_data, checks, progress)
    if parts is None:
        return
    batch = _batch(preset, PART_TRAINED, "parts")
    if _count(parts, "train") < batch:
        checks.errors.append(f"--parts-data {sets.parts_data}: too few films: {_count(parts, 'train')} training "
                             f"parts, the {preset} preset trains in batches of {batch}")
    if not _count(parts, "test"):
        checks.errors.append(f"--parts-data {sets.parts_data}: no test parts for the few-label probe")
    if "defect" not in parts.label_names:
        checks.errors.append(f"--parts-data {sets.parts_data}: no 'defect' label for the few-label probe")
    if not parts.mask_names:
        checks.notes.append(f"--parts-data {sets.parts_data}: no part masks, so the inspection chapter cannot "
                            "choose its SPAN backbone by attention; it keeps the first SPAN regimen and says so")


def check_sets(sets: OwnSets, preset: str, progress: bool = False) -> Checks:
    """Everything the chapters need of the sets, checked before anything trains.

    Raises:
        OwnBookError: no set given.
    """
    if not sets.data and not sets.parts_data:
        raise OwnBookError("give --data DIR (chest films) and/or --parts-data DIR (an inspection set)")
    checks = Checks()
    if sets.data:
        _check_chest(sets, preset, checks, progress)
    if sets.parts_data:
        _check_parts(sets, preset, checks, progress)
    return checks


# ---------------------------------------------------------------------------- the chapters


def chapters(root: Path | None = None) -> list[str]:
    """The ``_toc.yml`` entries of the book, in order (pages and notebooks)."""
    root = root or project_root()
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(node[k] for k in ("root", "file") if isinstance(node.get(k), str))
            node = [value for value in node.values() if isinstance(value, (list, dict))]
        for item in node if isinstance(node, list) else ():
            walk(item)

    walk(yaml.safe_load((root / "_toc.yml").read_text()))
    return found


def declared_parameters(notebook: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns."""
    import jupytext

    names: set[str] = set()
    for cell in jupytext.read(notebook).cells:
        if "parameters" in cell.metadata.get("tags", []):
            names |= {line.split("=")[0].strip() for line in cell.source.splitlines()
                      if "=" in line and not line.lstrip().startswith("#")}
    return names


def chapter_parameters(notebook: Path, preset_parameters: Mapping[str, Any], sets: OwnSets) -> dict[str, Any]:
    """A chapter's papermill parameters: its preset's, and the sets it takes (only what its cell declares)."""
    if notebook.stem in PARTS_CHAPTERS:
        own = {"data": sets.parts_data, "reader": sets.parts_reader if sets.parts_data else "folder"}
    else:
        own = {"data": sets.data, "reader": sets.reader if sets.data else "folder", "maps_from": sets.maps_from,
               "eval_data": sets.eval_data, "eval_reader": sets.eval_reader if sets.eval_data else "folder",
               "select_on": sets.select_on, "parts_data": sets.parts_data,
               "parts_reader": sets.parts_reader if sets.parts_data else "folder"}
    declared = declared_parameters(notebook)
    return {k: v for k, v in {**preset_parameters, **own}.items() if k in declared or k == "preset"}


def _fingerprint(notebook: Path, parameters: Mapping[str, Any]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def run_chapter(notebook: Path, parameters: Mapping[str, Any], folder: Path, progress: bool = False
                ) -> tuple[Path, bool]:
    """Execute one chapter through papermill into ``folder/<stem>.ipynb`` unless done with the same source and parameters.

    Returns:
        ``(executed notebook, whether it was already there)``.

    Raises:
        OwnBookError: a cell failed (its number, error and the executed notebook named).
    """
    import jupytext
    import nbformat
    import papermill

    notebook = notebook.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    executed, stamp = folder / f"{notebook.stem}.ipynb", folder / f"{notebook.stem}.done"
    fingerprint = _fingerprint(notebook, parameters)
    if executed.is_file() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return executed, True
    stamp.unlink(missing_ok=True)
    staged = folder / f"{notebook.stem}.input.ipynb"
    nbformat.write(jupytext.read(notebook), staged)
    try:
        papermill.execute_notebook(str(staged), str(executed), parameters=dict(parameters), cwd=str(notebook.parent),
                                   kernel_name="python3", progress_bar=progress)
    except papermill.PapermillExecutionError as error:
        raise OwnBookError(f"{notebook.stem}: cell {error.exec_count} failed: {error.ename}: {error.evalue} "
                           f"(the executed notebook: {executed}); what it made is cached: run again once fixed"
                           ) from error
    finally:
        staged.unlink(missing_ok=True)
    stamp.write_text(fingerprint + "\n")
    return executed, False


def _shown(parameters: Mapping[str, Any]) -> str:
    """A chapter's parameters as a progress line shows them: the preset, and each set given with its reader."""
    readers = {"reader": "data", "eval_reader": "eval_data", "parts_reader": "parts_data"}
    shown = {k: v for k, v in parameters.items() if v not in ("", None) and parameters.get(readers.get(k, k))}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def run_chapters(sets: OwnSets, preset: str, folder: Path, report: Callable[[str], Any] = print,
                 progress: bool = False, only: tuple[str, ...] = ()) -> dict[str, Path]:
    """Every notebook chapter of the book (or those in ``only``, by stem) executed on the sets; entry -> executed file."""
    import jupytext

    root = project_root()
    entries = [e for e in chapters(root) if (root / f"{e}.md").is_file()
               and "kernelspec" in jupytext.read(root / f"{e}.md", fmt="md:myst").metadata]
    entries = [e for e in entries if not only or Path(e).name in only]
    preset_parameters = notebook_parameters(preset)
    done: dict[str, Path] = {}
    for i, entry in enumerate(entries, start=1):
        notebook = root / f"{entry}.md"
        parameters = chapter_parameters(notebook, preset_parameters, sets)
        start = time.perf_counter()
        report(f"[{i}/{len(entries)}] {notebook.stem}: running ({_shown(parameters)})")
        done[entry], cached = run_chapter(notebook, parameters, folder, progress)
        report(f"[{i}/{len(entries)}] {notebook.stem}: {'cached' if cached else 'done'} "
               f"in {time.perf_counter() - start:.0f} s")
    return done


# ---------------------------------------------------------------------------- the HTML book


def assemble_book(executed: Mapping[str, Path], site: Path) -> Path:
    """A copy of the book's sources in ``site`` with each executed chapter in place of its text source.

    Execution is switched off in the copied ``_config.yml``: the chapters ran already.
    """
    root = project_root()
    site.mkdir(parents=True, exist_ok=True)
    for name in ("_toc.yml", *(p.name for p in root.glob("*.bib"))):
        shutil.copy(root / name, site / name)
    for folder in ("book", "_static"):  # the pages, and the files they load (the attention browser's script)
        if (site / folder).exists():
            shutil.rmtree(site / folder)
        if (root / folder).is_dir():
            shutil.copytree(root / folder, site / folder)
    (site / "notebooks").mkdir(exist_ok=True)
    for entry in chapters(root):
        source = root / f"{entry}.md"
        if entry in executed:
            shutil.copy(executed[entry], site / f"{entry}.ipynb")
            (site / f"{entry}.md").unlink(missing_ok=True)
        elif not (site / f"{entry}.md").is_file() and source.is_file():
            shutil.copy(source, site / f"{entry}.md")
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (site / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return site


def build_html(site: Path, timeout: int = 600) -> Path:
    """``jupyter-book build SITE -W --keep-going``; the HTML folder.

    Raises:
        OwnBookError: the build failed (its output's tail in the message).
    """
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(site), "-W", "--keep-going"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise OwnBookError(f"jupyter-book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
    return site / "_build" / "html"


def own_book(sets: OwnSets, preset: str = "book", out: Path | None = None, report: Callable[[str], Any] = print,
             progress: bool = True) -> Path:
    """Check the sets, run the chapters on them, build the HTML book; its ``index.html``.

    Args:
        sets: the user's sets.
        preset: ``smoke``, ``book`` or ``paper``.
        out: where the executed chapters and the site go (default ``runs/<preset>/data-<name>/book``).
        report: called with each line of progress.
        progress: papermill's progress bar per chapter and tqdm bars of the scan.

    Raises:
        OwnBookError: what the sets lack (before anything trains), or a failed chapter or build.
    """
    sets = sets.resolved()
    out = Path(out) if out else runs_dir(preset) / sets.name() / "book"
    checks = check_sets(sets, preset, progress)
    for line in checks.notes:
        report(line)
    if checks.errors:
        raise OwnBookError("the book cannot be made on these sets (nothing was trained):\n"
                           + "\n".join(f"- {error}" for error in checks.errors))
    executed = run_chapters(sets, preset, out / "chapters", report, progress)
    report(f"building the HTML book in {out / 'site'}")
    html = build_html(assemble_book(executed, out / "site"))
    report(f"the book on your films: {html / 'index.html'}")
    return html / "index.html"


# ---------------------------------------------------------------------------- the verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``book`` verb's arguments."""
    parser.add_argument("--data", default="", help="your chest films (e.g. images/ + masks/<organ>/ + labels.csv)")
    parser.add_argument("--reader", default="images", help="how to read --data (default: images)")
    parser.add_argument("--maps-from", default="", help="an annotated set (folder format) for the maps when --data "
                        "has no masks")
    parser.add_argument("--eval-data", default="", help="an annotated set to score attention on (default: --data)")
    parser.add_argument("--eval-reader", default="images", help="how to read --eval-data (default: images)")
    parser.add_argument("--select-on", default="", help="where a baseline's head is chosen (a split or a folder)")
    parser.add_argument("--parts-data", default="", help="an inspection set for the few-label chapter")
    parser.add_argument("--parts-reader", default="casting", help="how to read --parts-data (default: casting)")
    parser.add_argument("--preset", default="book", choices=preset_names(), help="default: book")
    parser.add_argument("--out", default=None, help="default: runs/<preset>/data-<name>/book")
    parser.add_argument("--check", action="store_true", help="only check the sets (nothing runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the verb; 2 when the sets lack something or a chapter fails (named), else 0."""
    sets = OwnSets(args.data, args.reader, args.maps_from, args.eval_data, args.eval_reader, args.select_on,
                   args.parts_data, args.parts_reader)
    try:
        if args.check:
            checks = check_sets(sets, args.preset, progress=not args.quiet)
            print("\n".join(checks.notes + [f"ERROR {e}" for e in checks.errors]))
            return 2 if checks.errors else 0
        own_book(sets, args.preset, Path(args.out) if args.out else None, progress=not args.quiet)
    except OwnBookError as error:
        print(f"book: {error}", file=sys.stderr)
        return 2
    return 0

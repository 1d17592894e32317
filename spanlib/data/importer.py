"""``data import``: any reader's dataset converted to the folder format, streaming and resumable.

One sample is read, resized and written at a time, so memory stays flat
whatever the size of the set (CheXpert's 190,000 frontal films included).
Every written sample is appended to ``import-journal.csv`` as it lands; a
killed import started again skips the samples in the journal whose files are
there and goes on. A sample that fails to load (corrupt file, a mask of the
wrong size) is recorded in ``import-report.json`` with the file and the
problem, and the import goes on; so is what the reader left out while
indexing (a bad CSV row, an image lacking a mask, a mask without an image),
the rules :func:`spanlib.data.scan.scan` reports by. ``meta.json`` is written last: it marks a
complete dataset.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spanlib.data.base import RecordDataset
from spanlib.data.folder import label_cell, write_index, write_sample_files
from spanlib.data.imageio import parse_size
from spanlib.data.readers import open_dataset
from spanlib.data.sample import DataError

JOURNAL = "import-journal.csv"
REPORT = "import-report.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_id(sample_id: str) -> str:
    """A reader's id as a safe file stem (CheXpert's ``patient1/study1/view1`` -> ``patient1_study1_view1``)."""
    cleaned = _UNSAFE.sub("_", sample_id).lstrip("._-")
    if not cleaned:
        raise DataError(f"sample {sample_id!r}", "id has no letter or digit to name a file with")
    return cleaned


def _read_journal(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The journal's header and its rows by id (``([], {})`` before the first import)."""
    if not path.is_file():
        return [], {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return (rows[0] if rows else []), {row[0]: row for row in rows[1:] if row}


def import_dataset(
    reader: str | RecordDataset,
    source: str | Path | None,
    out: str | Path,
    size: int | None = None,
    bit_depth: int = 8,
    progress: bool = True,
    report: Callable[[str], Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert a dataset to the folder format.

    Args:
        reader: a reader name (:data:`spanlib.data.readers.READERS`) or an opened dataset.
        source: the dataset's folder (ignored when ``reader`` is a dataset).
        out: the folder to write.
        size: resize every sample to ``size x size`` (``None`` keeps each size).
        bit_depth: 8 or 16 bits per grey pixel in the written PNGs.
        progress: show a progress bar.
        report: called with one line per finished import (e.g. ``print``).
        **options: the reader's options (``csv``, ``uncertain``, ``masks_root``...).

    Returns:
        The report also written to ``out/import-report.json``: counts
        (``written``, ``resumed``, ``failed``), the failures with file and
        problem, and the time taken.
    """
    start = time.perf_counter()
    dataset = reader if isinstance(reader, RecordDataset) else open_dataset(reader, source, **options)
    if size is not None:
        dataset.size = parse_size(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    journal_path = out / JOURNAL
    old_header, done = _read_journal(journal_path)
    header = ["id", "split", *dataset.label_names]
    if done and old_header != header:
        raise DataError(journal_path, "journal of an import with other labels: remove the folder to start over")
    if (out / "meta.json").exists():
        (out / "meta.json").unlink()  # not complete again until this import finishes
    written, resumed, failures = _write_samples(dataset, out, header, done, bit_depth, progress)
    # what the reader left out while indexing (bad CSV rows, images lacking a mask, masks without an image)
    failures = [{"id": p.sample_id or "", "path": p.path, "problem": p.problem}
                for p in getattr(dataset, "index_problems", [])] + failures
    rows = list(_read_journal(journal_path)[1].values())
    summary = {
        "reader": getattr(dataset, "reader_name", "records"),
        "source": str(dataset.root),
        "out": str(out),
        "samples": len(dataset.records),
        "written": written,
        "resumed": resumed,
        "failed": len({f["id"] or f["path"] for f in failures}),
        "failures": failures,
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / REPORT).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not rows:
        raise DataError(dataset.root, f"no sample could be imported ({len(failures)} failure(s): see {out / REPORT})")
    write_index(out, rows, _imported_meta(dataset, size))
    if report is not None:
        report(f"{summary['reader']} at {dataset.root} -> {out}: {written} written, {resumed} already there, "
               f"{summary['failed']} failed ({out / REPORT})")
    return summary


def _write_samples(
    dataset: RecordDataset, out: Path, header: list[str], done: dict[str, list[str]], bit_depth: int, progress: bool
) -> tuple[int, int, list[dict[str, str]]]:
    """Write every sample not already in the journal, appending each to it as it lands.

    Returns:
        ``(written, resumed, failures)``; a failure names the id, the file and the problem.
    """
    label_names, mask_names = tuple(dataset.label_names), tuple(dataset.mask_names)
    journal_path = out / JOURNAL
    failures: list[dict[str, str]] = []
    written = resumed = 0
    new_journal = not journal_path.is_file()
    taken: dict[str, str] = {}
    with journal_path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new_journal:
            writer.writerow(header)
        for index, record in enumerate(tqdm(dataset.records, desc=f"import {out.name}", disable=not progress)):
            name = safe_id(record.id)
            if name in taken and taken[name] != record.id:
                failures.append({"id": record.id, "path": str(record.image),
                                 "problem": f"id clashes with {taken[name]!r} once made file-safe ({name!r})"})
                continue
            taken[name] = record.id
            if name in done and (out / "images" / f"{name}.png").is_file():
                resumed += 1
                continue
            sample, problems = dataset.try_load(index)
            if sample is None:
                failures += [{"id": record.id, "path": p.path, "problem": p.problem} for p in problems]
                continue
            try:
                sample = type(sample)(id=name, image=sample.image, masks=sample.masks, labels=sample.labels,
                                      split=sample.split)
                write_sample_files(out, sample, mask_names, bit_depth=bit_depth)
            except DataError as error:
                failures.append({"id": record.id, "path": error.path, "problem": error.problem})
                continue
            writer.writerow([name, sample.split, *(label_cell(sample.labels.get(n, math.nan)) for n in label_names)])
            handle.flush()
            written += 1
    return written, resumed, failures


def _imported_meta(dataset: RecordDataset, size: int | None) -> dict[str, Any]:
    """``meta.json`` of an imported dataset (written last: it marks the import complete)."""
    return {
        "kind": dataset.meta.get("kind", "folder"),
        "source": str(dataset.meta.get("source", "")),
        "synthetic": bool(dataset.meta.get("synthetic", False)),
        "description": f"imported with the {getattr(dataset, 'reader_name', 'records')} reader",
        "mask_names": list(dataset.mask_names),
        "label_names": list(dataset.label_names),
        "imported_from": str(dataset.root),
        "size": size,
    }

"""``python -m spanlib bench loader [--json]``: memory and images/s of the pretraining loader as the set grows.

Writes a generated chest set of ``--films`` films in the folder format (a
few hundred phantoms drawn, then written again under new ids, so writing
20,000 films takes seconds), then, for growing prefixes of it, runs the
pretraining loader (views with knowledge maps, the lazy path a CheXpert-size
set takes) over the same number of batches in a fresh process each, and
reports that process's peak resident memory and images/s. Every size runs
on the lazy path, where peak memory stays flat as the set grows; the
in-memory path (``--in-memory-at N``), measured beside it, grows with the set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from spanlib.core.configs import ViewConfig
from spanlib.data.folder import FolderDataset, write_folder_dataset
from spanlib.data.phantoms import ChestConfig, make_chest_phantom
from spanlib.data.sample import CHEST_LABELS, CHEST_ORGANS
from spanlib.pretrain.augment import ViewMaker
from spanlib.pretrain.loader import EpochBatchSampler, ViewDataset, collate

DEFAULT_SIZES = (1000, 5000, 20000)


def write_films(root: Path, films: int, distinct: int = 256, size: int = 128, seed: int = 0) -> Path:
    """A folder-format chest set of ``films`` films (``distinct`` phantoms, repeated under new ids)."""
    if (root / "meta.json").is_file() and json.loads((root / "meta.json").read_text()).get("counts", {}).get("train") == films:
        return root
    base = [make_chest_phantom(i, seed, ChestConfig(image_size=size)) for i in range(min(distinct, films))]
    copies = (type(s)(id=f"film{i:06d}", image=s.image, masks=s.masks, labels=s.labels, split="train")
              for i, s in ((i, base[i % len(base)]) for i in range(films)))
    meta = {"kind": "chest", "source": "bench loader: repeated phantoms", "synthetic": True,
            "mask_names": list(CHEST_ORGANS), "label_names": list(CHEST_LABELS)}
    return write_folder_dataset(root, copies, meta)


def _measure(root: str, films: int, batches: int, batch_size: int, img_size: int, in_memory: bool | None,
             workers: int, queue: Any) -> None:
    torch.set_num_threads(1)
    dataset = FolderDataset(root)
    dataset.records = dataset.records[:films]
    dataset.ids = dataset.ids[:films]
    views = ViewMaker(ViewConfig(kind="cxr"), img_size, CHEST_ORGANS, in_chans=1)

    def masks_as_maps(sample: Any) -> np.ndarray:
        return np.stack([sample.masks[o].astype(np.float32) for o in CHEST_ORGANS])

    start = time.perf_counter()
    data = ViewDataset(dataset, views, masks_as_maps, seed=0, in_memory=in_memory)
    built = time.perf_counter() - start
    sampler = EpochBatchSampler(len(data), batch_size, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    seen, start = 0, time.perf_counter()
    for b, batch in enumerate(loader):
        seen += batch["global"].shape[1]
        if b + 1 >= batches:
            break
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put({"films": films, "in_memory": data.in_memory, "setup_s": round(built, 2),
               "images_per_s": round(seen / elapsed, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
               "worker_peak_rss_mib": round(child_kib / 1024, 1) if workers else None})


def measure(films: tuple[int, ...] = DEFAULT_SIZES, batches: int = 20, batch_size: int = 32, img_size: int = 96,
        workers: int = 0, root: Path | None = None, in_memory_at: int | None = None) -> dict[str, Any]:
    """Measure the loader at each set size (each in a fresh process); returns the rows and the RSS growth."""
    root = Path(root or Path(tempfile.gettempdir()) / f"spanlib-bench-loader-{max(films)}")
    start = time.perf_counter()
    write_films(root, max(films))
    written_s = time.perf_counter() - start
    context = multiprocessing.get_context("spawn")
    plan = [(n, False) for n in films] + ([(in_memory_at, True)] if in_memory_at else [])
    rows = []
    for n, in_memory in plan:
        queue = context.Queue()
        proc = context.Process(target=_measure, args=(str(root), n, batches, batch_size, img_size, in_memory, workers, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    lazy = [r for r in rows if not r["in_memory"]]
    return {
        "rows": rows,
        "write_s": round(written_s, 1),
        "batches": batches,
        "batch_size": batch_size,
        "img_size": img_size,
        "workers": workers,
        "rss_growth_lazy_mib": round(lazy[-1]["peak_rss_mib"] - lazy[0]["peak_rss_mib"], 1) if len(lazy) > 1 else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spanlib bench loader", description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, nargs="+", default=list(DEFAULT_SIZES), help="set sizes to measure")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--in-memory-at", type=int, default=None, help="also measure the in-memory path at this size")
    parser.add_argument("--root", type=Path, default=None, help="where the generated set is written (kept for reruns)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(tuple(sorted(args.films)), args.batches, args.batch_size, args.img_size, args.workers, args.root,
                 args.in_memory_at)
    if args.json:
        print(json.dumps(result))
    else:
        for row in result["rows"]:
            print(row)
        print(f"peak RSS growth (lazy, smallest to largest set): {result['rss_growth_lazy_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

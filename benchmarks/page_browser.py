"""The weight of the static book's attention browser at a preset's sizes, without building the book.

What the attention chapter embeds is films, the last block's attention of
every head under every regimen and outlines; their size depends on the
number of films, the film side, the grid, the heads and the regimens, not
on how well the runs were trained. This script draws chest phantoms at the
preset's film size, makes an untrained run of every regimen with the
preset's model (``run.train: false``: saved at initialisation), the SPAN
ones with triangular maps drawn in memory, and weighs the browser
:func:`spanlib.book.page_browser.browser_data` and
:func:`spanlib.figures.page_browser.page_browser` make of them, raw and
gzipped. The built chapter prints its own weight (from the build's runs).

    OMP_NUM_THREADS=1 python benchmarks/page_browser.py --preset book
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

from spanlib.book.attention import scoring_sizes
from spanlib.book.page_browser import browser_data
from spanlib.core.configs import REGIMENS, resolve
from spanlib.data import FolderDataset
from spanlib.data.generate import data_preset, generate_dataset
from spanlib.data.phantoms import ChestConfig
from spanlib.figures.page_browser import page_browser
from spanlib.pretrain.train import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="book")
    parser.add_argument("--films", type=int, default=24)
    args = parser.parse_args()
    chest = data_preset(args.preset)["chest"]
    fields = {k: v for k, v in chest.items() if k != "splits"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate_dataset("chest", root / "chest", {"train": 1, "test": args.films}, ChestConfig(**fields))
        runs = {}
        for regimen in REGIMENS:
            overrides = {"run.data": str(data), "run.train": False}
            if resolve(args.preset, regimen).span.assigned_heads:
                overrides["span.knowledge_maps"] = "triangular"
            runs[regimen] = root / regimen
            pretrain(resolve(args.preset, regimen, overrides), runs[regimen])
        films = FolderDataset(data, split="test")
        started = time.perf_counter()
        browser = page_browser(browser_data(runs, films, scoring_sizes(args.preset)["headline"], args.films))
        seconds = time.perf_counter() - started
    html = browser.html.encode("utf-8")
    print(f"preset {args.preset}: {args.films} films at {fields.get('image_size')} px, {len(runs)} regimens; "
          f"read and drawn in {seconds:.1f} s")
    print(f"browser block {len(html) / 1e6:.2f} MB ({len(gzip.compress(html)) / 1e6:.2f} MB gzipped); "
          f"of it the data (the document's script) {browser.data_bytes / 1e3:.0f} kB, the rest Bokeh's JavaScript")


if __name__ == "__main__":
    main()

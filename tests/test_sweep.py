"""Sweeps: a grid of parameters through papermill, past failures, cached; the map builder's lock."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from spanlib.book import runs as book
from spanlib.book.sweep import combinations, combo_name, parse_grid, sweep

NOTEBOOK = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A toy chapter

```{code-cell} ipython3
:tags: [parameters]

preset = "book"
x = 1
results_path = ""
```

```{code-cell} ipython3
import os

from spanlib.book.runs import record

if x == 2:
    raise ValueError("x = 2 is not allowed")
record(results_path, square=x * x, threads=os.environ.get("OMP_NUM_THREADS", ""))
```
"""


@pytest.fixture
def toy_notebook(tmp_path) -> Path:
    path = tmp_path / "toy.md"
    path.write_text(NOTEBOOK)
    return path


def test_grid_parsing_reads_numbers_and_names():
    grid = parse_grid(["regimen=dino,span_triangular", "lambda_span=1e-2,1e-6", "seed=0,1"])
    assert grid == {"regimen": ["dino", "span_triangular"], "lambda_span": [0.01, 1e-6], "seed": [0, 1]}
    combos = combinations(grid)
    assert len(combos) == 8 and combos[0] == {"regimen": "dino", "lambda_span": 0.01, "seed": 0}
    assert combo_name({"regimen": "dino", "seed": 1}) == "regimen-dino_seed-1"
    with pytest.raises(ValueError, match="name=v1,v2"):
        parse_grid(["regimen"])


@pytest.mark.slow
def test_sweep_goes_past_a_failing_cell_records_it_and_caches_the_rest(toy_notebook, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "out"
    rows = sweep(toy_notebook, {"x": [1, 2, 3]}, out, fixed={"preset": "smoke"}, workers=2)
    by_x = {r["x"]: r for r in rows}
    assert [r["x"] for r in rows] == [1, 2, 3], "rows stay in grid order"
    assert by_x[1]["status"] == "ok" and by_x[1]["square"] == 1
    assert by_x[3]["status"] == "ok" and by_x[3]["square"] == 9
    assert by_x[2]["status"] == "failed" and "x = 2 is not allowed" in by_x[2]["error"]
    # each of the two kernels got its share of the cores
    import os

    assert by_x[1]["threads"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert "OMP_NUM_THREADS" not in os.environ, "the sweep leaves the environment as it found it"
    table = (out / "results.csv").read_text()
    assert "failed" in table and (out / "x-1.ipynb").is_file()

    again = sweep(toy_notebook, {"x": [1, 2, 3]}, out, fixed={"preset": "smoke"})
    assert [r["status"] for r in again] == ["cached", "failed", "cached"], "a failed run is retried, a done one is not"

    toy_notebook.write_text(NOTEBOOK.replace("x * x", "x * x + 1"))
    changed = sweep(toy_notebook, {"x": [3]}, out, fixed={"preset": "smoke"})
    assert changed[0]["status"] == "ok" and changed[0]["square"] == 10, "a changed notebook runs again"


def test_sweep_rejects_a_missing_notebook_and_bad_workers(tmp_path, toy_notebook):
    with pytest.raises(FileNotFoundError, match="notebook not found"):
        sweep(tmp_path / "nope.md", {"x": [1]}, tmp_path / "out")
    with pytest.raises(ValueError, match="workers"):
        sweep(toy_notebook, {"x": [1]}, tmp_path / "out", workers=0)


def test_concurrent_map_builds_wait_for_one(tmp_path, monkeypatch):
    calls = []

    def fake_build(kind, data, out, **options):
        calls.append((kind, data, out, options))
        out = Path(out)
        time.sleep(0.3)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"kind": kind, "organs": ["heart"], "size": 64}))
        (out / "report.json").write_text(json.dumps({}))
        return {"kind": kind, "records": []}

    monkeypatch.setattr("spanlib.maps.build.build_knowledge_maps", fake_build)
    out = tmp_path / "maps" / "deformable"
    threads = [threading.Thread(target=book.ensure_maps, args=("deformable", tmp_path / "data", out)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1, f"the maps were built {len(calls)} times"
    assert book.ensure_maps("deformable", tmp_path / "data", out) == out and len(calls) == 1

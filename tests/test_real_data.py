"""Real-data paths end to end, on small files the tests write: a folder of PNG films and masks, a CheXpert layout.

Evaluation never chooses anything on the test split: a baseline's head is
chosen on a validation split or a named selection set, or the command refuses.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from spanlib.book.runs import RunKey
from spanlib.book.start import continues_start
from spanlib.core.configs import resolve
from spanlib.data import CHEST_LABELS, FolderDataset, make_default_data
from spanlib.eval.evaluate import evaluate
from spanlib.eval.sets import SelectionError
from spanlib.pretrain.train import pretrain

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, array: np.ndarray, bits: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        Image.fromarray((np.clip(array, 0, 1) * 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Smoke data, a DINO run (no assigned heads) and a SPAN run, and the test split as a user's folder of films."""
    root = tmp_path_factory.mktemp("real")
    paths = make_default_data("smoke", root / "data", progress=False)
    runs = {}
    for regimen in ("dino", "span_triangular"):
        runs[regimen] = root / regimen
        pretrain(resolve("smoke", regimen, {"run.data": str(paths["chest"])}), runs[regimen])
    chest = FolderDataset(paths["chest"])
    films = root / "films"  # images/ + masks/<organ>/, 16-bit PNG films, no splits.csv
    for s in chest:
        _png(films / "images" / f"{s.id}.png", s.image, bits=16)
        for organ, mask in s.masks.items():
            _png(films / "masks" / organ / f"{s.id}.png", mask.astype(np.float32))
    with (films / "splits.csv").open("w", newline="") as f:  # a set like JSRT: train and test, no val
        w = csv.writer(f)
        w.writerow(["id", "split"])
        w.writerows([s.id, "test" if s.split == "test" else "train"] for s in chest)
    selection = root / "selection"  # another annotated set, for choosing the baseline's head
    for s in chest:
        if s.split == "val":
            _png(selection / "images" / f"{s.id}.png", s.image)
            for organ, mask in s.masks.items():
                _png(selection / "masks" / organ / f"{s.id}.png", mask.astype(np.float32))
    return {"runs": runs, "films": films, "selection": selection, "chest": paths["chest"]}


def in_process(capsys, *args: str) -> SimpleNamespace:
    """``python -m spanlib ARGS`` through the same entry point, in this process (no interpreter start)."""
    from spanlib.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spanlib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_attention_on_a_folder_of_films_from_the_command_line(world, tmp_path):
    out = tmp_path / "result.json"
    done = cli("evaluate", "attention", "--run", str(world["runs"]["dino"]), "--data", str(world["films"]),
               "--reader", "images", "--select-on", str(world["selection"]), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result["attention"]) == {"heart", "left_lung", "right_lung"}
    for organ, scores in result["attention"].items():
        assert 0 <= scores["mean"] <= 100 and scores["head_chosen"] == "best on validation"
    assert result["selection_set"] == str(world["selection"]) and result["test_set"].startswith("split 'test'")


def test_a_baseline_without_a_validation_split_is_refused(world, tmp_path, capsys):
    refused = in_process(capsys, "evaluate", "attention", "--run", str(world["runs"]["dino"]), "--data", str(world["films"]),
                  "--reader", "images", "--out", str(tmp_path / "r.json"))
    assert refused.returncode == 2
    assert "no validation split" in refused.stdout and "--select-on" in refused.stdout
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(SelectionError, match="shares images with the test set"):
        evaluate("attention", world["runs"]["dino"], world["films"], reader="images", select_on="test")


def test_span_runs_need_no_selection_and_eval_size_changes_the_input(world, tmp_path):
    run = world["runs"]["span_triangular"]
    plain = evaluate("attention", run, world["films"], reader="images", out=tmp_path / "a.json")
    assert "selection_set" not in plain and all(s["head_chosen"] == "assigned" for s in plain["attention"].values())
    bigger = evaluate("attention", run, world["films"], reader="images", eval_size=48, out=tmp_path / "b.json")
    assert bigger["eval_size"] == 48 and bigger["organs"]["heart"]["per_head_mAP"] != plain["organs"]["heart"]["per_head_mAP"]


def test_seeded_split_is_written_beside_the_result(world, tmp_path):
    films = world["films"]
    (films / "splits.csv").rename(films / "splits.off")
    try:
        result = evaluate("attention", world["runs"]["span_triangular"], films, reader="images", out=tmp_path / "s.json")
    finally:
        (films / "splits.off").rename(films / "splits.csv")
    with open(result["splits_file"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((films / "images").iterdir())) and {r["split"] for r in rows} <= {"train", "val", "test"}


def test_chexpert_linear_probe_trains_on_train_csv_and_tests_on_valid_csv(world, tmp_path, capsys):
    chest = FolderDataset(world["chest"])
    root = tmp_path / "CheXpert-v1.0-small"
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEST_LABELS]
    for csv_name, splits in (("train.csv", ("train", "val")), ("valid.csv", ("test",))):
        folder = "train" if csv_name == "train.csv" else "valid"
        with (root.mkdir(parents=True, exist_ok=True) or root / csv_name).open("w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            for s in chest:
                if s.split not in splits:
                    continue
                rel = f"{folder}/{s.id}/study1/view1_frontal.jpg"
                _png(root / rel, s.image)
                w.writerow({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": "Male", "Age": "60", "Frontal/Lateral": "Frontal",
                            "AP/PA": "PA", **{n: f"{s.labels[n]:.1f}" for n in CHEST_LABELS}})
    out = tmp_path / "linear.json"
    done = in_process(capsys, "evaluate", "linear", "--run", str(world["runs"]["dino"]), "--data", str(root), "--reader", "chexpert",
               "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["test_set"] == f"valid.csv in {root}" and result["train_images"] == sum(s.split != "test" for s in chest)
    assert result["test_images"] == sum(s.split == "test" for s in chest) and 0 <= result["mAUC"] <= 100


def test_pretrain_on_a_folder_of_films_from_the_command_line(world, tmp_path, capsys):
    out = tmp_path / "run"
    done = in_process(capsys, "pretrain", "--preset", "smoke", "--regimen", "dino", "--data", str(world["films"]), "--reader", "images",
               "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "done.json").read_text())["steps"] > 0
    assert "reader: images" in (out / "config.yaml").read_text()


def _execute(name: str, tmp_path: Path, params: dict) -> Path:
    import jupytext
    import nbformat
    import papermill

    source = next((REPO / "notebooks").glob(f"{name}_*.md"))
    unexecuted, out = tmp_path / f"{name}.ipynb", tmp_path / f"{name}.out.ipynb"
    nbformat.write(jupytext.read(source), unexecuted)
    papermill.execute_notebook(str(unexecuted), str(out), parameters=params, cwd=str(source.parent),
                               kernel_name="python3", progress_bar=False)
    return out


def test_the_data_chapter_shows_a_users_films(world, tmp_path):
    out = _execute("01", tmp_path, {"preset": "smoke", "data": str(world["films"]), "reader": "images"})
    text = out.read_text()
    assert "images reader at films" in text and "image/png" in text


@pytest.mark.slow
def test_a_chapter_runs_on_a_users_films_through_papermill(world, tmp_path):
    """The pretraining chapter with ``-p data DIR -p reader images``: maps from an annotated set, then SPAN."""
    unlabelled = tmp_path / "films"  # the user's films without masks: the maps come from `maps_from`
    (unlabelled / "images").mkdir(parents=True)
    for path in sorted((world["films"] / "images").iterdir()):
        (unlabelled / "images" / path.name).write_bytes(path.read_bytes())
    params = {"preset": "smoke", "regimen": "span_deformable", "data": str(unlabelled), "reader": "images",
              "maps_from": str(world["chest"])}
    _execute("03", tmp_path, params)
    # the smoke preset continues the shared start, so the run's directory says so (RunKey names it)
    run = RunKey("smoke", "span_deformable", data=str(unlabelled), from_start=continues_start("smoke")).path()
    assert run.parent.parent == REPO / "runs" / "smoke" / "data-films"
    assert (run / "done.json").is_file() and "reader: images" in (run / "config.yaml").read_text()
    report = json.loads((REPO / "runs" / "smoke" / "data-films" / "maps" / "deformable" / "report.json").read_text())
    assert report["count"] == len(list((unlabelled / "images").iterdir())) and report["errors"] == 0


@pytest.mark.slow
def test_the_knowledge_map_chapter_reads_its_own_maps_report_on_a_users_films(world, tmp_path):
    """Notebook 02 with ``-p data DIR``: the registration report it shows is the one of that folder's maps
    (``runs/smoke/data-<name>/maps/deformable``), not the generated set's (the notebook used to read the latter)."""
    import nbformat

    mine = tmp_path / "my-films"
    names = sorted(p.name for p in (world["films"] / "images").iterdir())[:20]
    for sub in ["images", *(f"masks/{o}" for o in ("left_lung", "right_lung", "heart"))]:
        (mine / sub).mkdir(parents=True)
        for name in names:
            (mine / sub / name).write_bytes((world["films"] / sub / name).read_bytes())
    out = _execute("02", tmp_path, {"preset": "smoke", "data": str(mine), "reader": "images"})
    shown = [o for cell in nbformat.read(out, as_version=4).cells for o in cell.get("outputs", [])
             if "deformable build" in str(o.get("data", {}).get("text/plain", ""))]
    assert len(shown) == 1
    rows = dict(line.split(None, 1) for line in shown[0]["data"]["text/plain"].splitlines()[1:] if line.strip())
    own = json.loads((REPO / "runs" / "smoke" / "data-my-films" / "maps" / "deformable" / "report.json").read_text())
    assert int(rows["count"]) == own["count"] == len(names)

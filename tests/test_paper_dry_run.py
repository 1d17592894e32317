"""A CPU dry run of the paper's sequence at full model size, through the chapters as papermill runs them.

ViT-S/16 at 224 px with DINO's 65,536-prototype head, the ``paper`` preset
(Table A.2's views, SPAN's learning rate, attention scored at 480 px), from a
checkpoint in the key format of DINO's released ``dino_deitsmall16_pretrain.pth``
written here, on a few films in each real format (CheXpert's CSV and JPEGs,
JSRT's raw films with the SCR masks, Montgomery's PNGs) imported as
``book/reproducing.md`` imports them: ``notebooks/03_pretraining`` trains
``span_deformable`` (the JSRT exemplar registered onto every CheXpert film),
``notebooks/04_attention`` scores ``dino_start`` (the checkpoint, frozen: a
baseline without assigned heads) and ``span_deformable`` at 480 px on JSRT's
test fold, the baseline's head chosen on its training fold; the SPAN run is also scored on Montgomery. One film a
step, two steps a run: it proves the path, not the paper's numbers.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import timm
import torch

from spanlib.cli import main as cli_main
from spanlib.data import open_dataset
from spanlib.data.transforms import EvaluationView
from spanlib.eval.evaluate import evaluate
from spanlib.eval.extract import cached_extract
from spanlib.eval.sets import split_of
from spanlib.model.export import load_backbone
from spanlib.model.vit import cls_attention

from test_reproducing import write_sets

REPO = Path(__file__).resolve().parents[1]
CHEXPERT_FILMS = 1
"""CheXpert training films kept: a batch of one, so a run trains two steps (two epochs: DINO's head keeps its
prototype layer frozen for the first, as the paper preset says)."""


def dino_release_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A ViT-S/16 state dict under the names of DINO's released backbone (no head), with weights of its own."""
    torch.manual_seed(123)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"] += 0.5 * torch.randn_like(state["pos_embed"])  # far from any fresh initialisation
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"):
        assert key in state  # DINO's released names
    torch.save(state, path)
    return state


def sets(root: Path) -> dict[str, Path]:
    """The three real formats, imported to the folder format at 256 px (``book/reproducing.md``'s step 1)."""
    paths = write_sets(root)
    train_csv = paths["CHEXPERT"] / "train.csv"
    with train_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    with train_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:CHEXPERT_FILMS])
    work = root / "work"
    for reader, extra in (("chexpert", []), ("jsrt", ["--masks-root", str(paths["SCR"])]), ("montgomery", [])):
        source = paths[reader.upper()]
        assert cli_main(["data", "import", "--reader", reader, "--data", str(source), "--out", str(work / reader),
                         "--size", "256", "--quiet", *extra]) == 0
    return {name: work / name for name in ("chexpert", "jsrt", "montgomery")}


def project(root: Path) -> Path:
    """A copy of the book's layout (the library linked, the chapters copied), so that its runs stay in ``root``."""
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("root: intro\n")
    (root / "spanlib").symlink_to(REPO / "spanlib")
    for name in ("03_pretraining.md", "04_attention.md"):
        shutil.copy(REPO / "notebooks" / name, root / "notebooks" / name)
    return root


def execute(book: Path, name: str, parameters: dict) -> None:
    import jupytext
    import nbformat
    import papermill

    source = book / "notebooks" / f"{name}.md"
    notebook = book / "notebooks" / f"{name}.ipynb"
    nbformat.write(jupytext.read(source), notebook)
    papermill.execute_notebook(str(notebook), str(notebook.with_suffix(".out.ipynb")), parameters=parameters,
                               cwd=str(notebook.parent), kernel_name="python3", progress_bar=False)


@pytest.mark.slow
def test_the_papers_sequence_at_full_size_from_a_dino_checkpoint(tmp_path: Path, monkeypatch):
    data = sets(tmp_path / "sets")
    weights = tmp_path / "weights" / "dino_deitsmall16_pretrain.pth"
    weights.parent.mkdir()
    released = dino_release_checkpoint(weights)
    book = project(tmp_path / "book")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = {"preset": "paper", "pretrained": str(weights), "data": str(data["chexpert"]),
              "maps_from": str(data["jsrt"]), "epochs": 2, "batch_size": 1}
    execute(book, "03_pretraining", {**common, "regimen": "span_deformable"})
    execute(book, "04_attention", {**common, "eval_data": str(data["jsrt"]), "select_on": "train",
                                   "regimens": "dino_start,span_deformable"})

    runs = book / "runs" / "paper" / "data-chexpert"
    run = {r: next((runs / r).glob("seed0-*")) for r in ("dino_start", "span_deformable")}
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["dino_start", "maps", "span_deformable"]
    span_cfg, span_backbone, span_info = load_backbone(run["span_deformable"])
    # the paper's run: ViT-S/16 at 224, 65,536 prototypes, Table A.2's views, SPAN's 1e-4, from the checkpoint
    assert (span_cfg.model.arch, span_cfg.model.img_size, span_cfg.dino.out_dim) == ("vit_small_patch16_224", 224,
                                                                                     65536)
    assert span_cfg.views.kind == "paper" and span_cfg.optim.lr == 1e-4 and not span_cfg.optim.lr_batch_scaling
    assert span_cfg.model.pretrained_path == str(weights.resolve()) and span_info["step"] == 2
    log = [json.loads(line) for line in (run["span_deformable"] / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2] and all(math.isfinite(r["loss"]) for r in log)
    assert not torch.equal(span_backbone.state_dict()["blocks.11.attn.qkv.weight"],
                           released["blocks.11.attn.qkv.weight"])  # it trained from there

    # dino_start is the checkpoint, frozen: its weights and its attention at 480 px (a 30 x 30 grid) are the checkpoint's
    start_cfg, start_backbone, _ = load_backbone(run["dino_start"])
    for key, value in released.items():
        assert torch.equal(start_backbone.state_dict()[key], value), key
    films = split_of(open_dataset("folder", data["jsrt"]), "test")
    cached = cached_extract(run["dino_start"], films, img_size=480)["attention"]
    assert tuple(cached.shape) == (len(films), 6, 30, 30)
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True)
    reference.load_state_dict(released)
    x = EvaluationView(start_cfg.views, 480, 3).stack([films[i] for i in range(len(films))])
    with torch.no_grad():
        torch.testing.assert_close(cached, cls_attention(reference.eval(), x), rtol=1e-4, atol=1e-6)

    # attention scored at 480 px on JSRT's test fold, the baseline's head chosen on its training fold
    for regimen, path in run.items():
        result = json.loads((path / "eval" / "attention-jsrt-size480.json").read_text())
        assert result["eval_size"] == 480 and result["test_images"] == len(films) == 2
        assert set(result["organs"]) == {"left_lung", "right_lung", "heart"}
        if regimen == "span_deformable":
            assert {o: s["head_chosen"] for o, s in result["organs"].items()} == dict.fromkeys(result["organs"],
                                                                                              "assigned")
        else:
            assert result["selection_set"].startswith("split 'train'")
    # the SPAN run scored on Montgomery at 480 px as book/reproducing.md scores it (its heads are assigned)
    montgomery = evaluate("attention", run["span_deformable"], data["montgomery"], eval_size=480,
                          out=tmp_path / "span-montgomery.json")
    assert set(montgomery["organs"]) == {"left_lung", "right_lung"} and montgomery["test_images"] == 4
    executed = (book / "notebooks" / "04_attention.out.ipynb").read_text()
    assert "every trained regimen continues the checkpoint dino_deitsmall16_pretrain.pth" in executed
    shutil.rmtree(book / "runs")  # 1 GB of paper-size checkpoints: kept only when the test fails

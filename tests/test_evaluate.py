import json
import math

import pytest
import torch

from spanlib.cli import main
from spanlib.core.configs import resolve
from spanlib.data import make_default_data
from spanlib.eval.evaluate import attention_scores, evaluate, extract, load_backbone
from spanlib.pretrain.train import pretrain


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    paths = make_default_data("smoke", root / "data")
    cfg = resolve("smoke", "span_triangular", {"run.data": str(paths["chest"])})
    pretrain(cfg, root / "run")
    return root / "run", paths


def test_attention_scores_on_hand_built_maps():
    attention = torch.zeros(2, 3, 2, 2)
    attention[:, 1, 0, 0] = 1.0  # head 1 looks at the top-left patch
    attention[:, 2, 1, 1] = 1.0  # head 2 at the bottom-right
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4, :4] = True
    scores = attention_scores(attention, {"heart": mask}, assigned_heads={"heart": 1})
    assert scores["heart"]["mAP"] == pytest.approx(100.0)
    assert scores["heart"]["pointing"] == pytest.approx(100.0)
    assert scores["heart"]["iou_mass60"] == pytest.approx(100.0)
    wrong = attention_scores(attention, {"heart": mask}, assigned_heads={"heart": 2})["heart"]
    assert wrong["mAP"] == pytest.approx(25.0) and wrong["pointing"] == 0.0  # AP of a useless map = prevalence
    best = attention_scores(attention, {"heart": mask}, assigned_heads={})["heart"]
    assert best["head"] == 1 and best["head_chosen"] == "best on this split"
    fixed = attention_scores(attention, {"heart": mask}, assigned_heads={}, head_choice={"heart": 2})["heart"]
    assert fixed["head"] == 2 and fixed["per_image_max_mAP"] == pytest.approx(100.0)


def test_extract_features_and_attention(smoke_run):
    run, paths = smoke_run
    from spanlib.data import FolderDataset

    cfg, model, info = load_backbone(run)
    data = FolderDataset(paths["chest"], split="test")
    out = extract(model, cfg, data, batch_size=3, n_last_blocks=2)
    assert out["features"].shape == (len(data), 2 * cfg.model.embed_dim)
    assert out["attention"].shape == (len(data), cfg.model.num_heads, 4, 4)
    assert out["ids"] == data.ids


@pytest.mark.parametrize("kind", ["attention", "linear", "knn"])
def test_evaluate_writes_json(smoke_run, kind):
    run, paths = smoke_run
    assert main(["evaluate", kind, "--run", str(run), "--data", str(paths["chest"])]) == 0
    result = json.loads((run / "eval" / f"{kind}-chest.json").read_text())
    assert result["regimen"] == "span_triangular" and result["synthetic"] is True
    if kind == "attention":
        assert set(result["organs"]) == {"left_lung", "right_lung", "heart"}
        for organ, head in (("left_lung", 0), ("right_lung", 1), ("heart", 2)):
            assert result["organs"][organ]["head"] == head and result["organs"][organ]["head_chosen"] == "assigned"
            assert 0 <= result["organs"][organ]["mAP"] <= 100
    else:
        assert 0 <= result["mAUC"] <= 100 or math.isnan(result["mAUC"])


def test_fewshot_on_parts(smoke_run):
    run, paths = smoke_run
    result = evaluate("fewshot", run, paths["parts"])
    sizes = {str(k): v for k, v in result["sizes"].items()}
    assert "4" in sizes, result.get("skipped")
    lo, hi = sizes["4"]["ci95"]
    assert 0 <= lo <= sizes["4"]["mean"] <= hi <= 100


def test_baseline_picks_head_on_validation(smoke_run, tmp_path):
    run, paths = smoke_run
    cfg = resolve("smoke", "dino_cxr", {"run.data": str(paths["chest"])})
    pretrain(cfg, tmp_path / "dino")
    result = evaluate("attention", tmp_path / "dino", paths["chest"])
    assert all(r["head_chosen"] == "best on validation" for r in result["organs"].values())


def test_the_same_evaluation_is_answered_from_its_result_file(smoke_run, tmp_path, monkeypatch):
    import os

    import spanlib.eval.evaluate as E

    run, paths = smoke_run
    out = tmp_path / "linear.json"
    first = evaluate("linear", run, paths["chest"], seed=1, out=out)
    calls = []
    real = E.load_backbone
    monkeypatch.setattr(E, "load_backbone", lambda r: calls.append(r) or real(r))
    again = evaluate("linear", run, paths["chest"], seed=1, out=out)
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True) and calls == []
    assert evaluate("linear", run, paths["chest"], seed=2, out=out)["request"]["seed"] == 2 and len(calls) == 1
    ckpt = run / "checkpoint.pt"
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the run trained again
    evaluate("linear", run, paths["chest"], seed=2, out=out)
    assert len(calls) == 2

"""The results chapter's summary over seeds and the paper's ablations, on the smoke preset."""

import json

import pytest

from spanlib.book import readings
from spanlib.book.runs import runs_dir
from spanlib.book.summary import FEWSHOT_KEPT, PART_TRAINED, TRAINED, build_ablations, build_summary, trained_runs
from spanlib.core.configs import REGIMENS
from spanlib.figures import tables

SEEDS = (0, 1)  # intervals over seeds need two (the smoke book's results chapter runs one seed, on written films)


def _interval(v):
    return isinstance(v, dict) and set(v) == {"mean", "ci95", "seeds"} and len(v["seeds"]) == len(SEEDS)


@pytest.fixture(scope="module")
def summary():
    return build_summary("smoke", seeds=SEEDS)


def test_summary_keeps_its_schema_with_intervals_over_seeds(summary):
    assert json.loads((runs_dir("smoke") / "summary.json").read_text()) == summary
    assert list(summary["regimens"]) == list(REGIMENS)
    for regimen, res in summary["regimens"].items():
        assert set(res["attention_mAP"]) == {"left_lung", "right_lung", "heart"}
        assert all(_interval(v) for v in res["attention_mAP"].values())
        for v in res["pointing"].values():  # a share of films: a Wilson interval over them, within [0, 100]
            assert set(v) == {"mean", "ci95", "seeds", "films", "interval"} and len(v["seeds"]) == len(SEEDS)
            assert 0 <= v["ci95"][0] <= v["mean"] <= v["ci95"][1] <= 100 and v["films"] > 0
        assert _interval(res["linear_mAUC"])
        lo, hi = res["linear_mAUC"]["ci95"]
        assert lo <= res["linear_mAUC"]["mean"] <= hi
        gap = res["dino_loss_below_log_k"]
        assert (gap is None) == (regimen in ("random", "dino_start")), regimen
    for name, sizes in summary["fewshot"].items():
        assert set(sizes) >= {"4", "all"} and all(_interval(v) for v in sizes.values()), name
    assert FEWSHOT_KEPT in summary["fewshot"] and "dino" in summary["fewshot"]
    assert set(summary["fewshot_kept"]) == {str(s) for s in SEEDS}
    start = summary["pretrained_start"]
    assert start["steps"] > 0 and start["log_k"] > 0
    assert start["loss_below_log_k"] == pytest.approx(start["log_k"] - start["dino_loss"])
    assert 0 <= start["knn_accuracy"] <= 100 and start["knn_chance"] == pytest.approx(10.0)
    assert start["knn_test"] > 0 and "held-out images" in readings.start_reading(start)
    dice = summary["knowledge_map_dice"]
    assert set(dice) == {"triangular", "global", "deformable"}
    assert all(set(d) == {"left_lung", "right_lung", "heart"} and all(0 <= v <= 100 for v in d.values())
               for d in dice.values())
    assert dice["deformable"]["heart"] > dice["triangular"]["heart"]  # registration follows the pose; a triangle cannot


def test_summary_tables_show_every_interval(summary):
    table = tables.summary_interval_table(summary)
    assert list(table.index) == list(REGIMENS)
    cell = table.loc["span_triangular", "attention_mAP heart"]
    assert cell.count("[") == 1 and cell.startswith(f"{summary['regimens']['span_triangular']['attention_mAP']['heart']['mean']:.1f}")
    few = tables.summary_fewshot_table(summary)
    assert list(few.index)[-1] == "all"
    assert "k-NN accuracy, shared start (%)" in tables.start_table(summary["pretrained_start"]).index
    assert list(tables.map_quality_table(summary).index) == ["triangular", "global", "deformable"]
    runs = trained_runs("smoke", SEEDS)
    assert len(runs) == (len(TRAINED) + len(PART_TRAINED)) * len(SEEDS) and all(r.summary for r in runs.values())


def test_a_start_report_written_before_a_key_was_added_is_computed_again(summary):
    from spanlib.book.start import start_dir, start_report

    path = start_dir("smoke") / "report.json"
    stale = json.loads(path.read_text())
    del stale["knn_test"]
    stale["knn_accuracy"] = -1.0
    path.write_text(json.dumps(stale))
    fresh = start_report("smoke")
    assert fresh["knn_test"] > 0 and fresh["knn_accuracy"] == summary["pretrained_start"]["knn_accuracy"]


def test_the_frozen_start_is_one_run_whatever_the_seed(summary, capsys):
    from spanlib.book.runs import ensure_pretrained

    first = ensure_pretrained("smoke", "dino_start", seed=0)
    made = (first.path / "done.json").stat().st_mtime_ns
    capsys.readouterr()
    for seed in (1, 2, 0):
        assert ensure_pretrained("smoke", "dino_start", seed=seed).path == first.path
    assert "training it again" not in capsys.readouterr().out
    assert (first.path / "done.json").stat().st_mtime_ns == made


def test_ablations_choose_lambda_on_validation_and_cover_every_term_setting():
    result = build_ablations("smoke")
    assert [row["lambda"] for row in result["lambda"]] == [0.05, 0.5, 5.0, 50.0]
    best = max(result["lambda"], key=lambda row: row["val_mAP"])
    assert result["lambda_best"] == best["lambda"]
    on_plateau = [r["lambda"] for r in result["lambda"] if r["val_mAP"] >= best["val_mAP"] - result["lambda_plateau"]]
    assert result["lambda_chosen"] == min(on_plateau)
    assert {(r["terms"], r["renormalize"]) for r in result["terms"]} == {
        (t, r) for t in ("both", "inclusion", "exclusion") for r in (True, False)}
    names = {p.name for p in (runs_dir("smoke") / "span_triangular").iterdir()}
    assert {"seed0-epochs1-inclusion-raw-from-start", "seed0-lambda0.05-epochs1-from-start"} <= names
    assert len(tables.lambda_table(result)) == 4 and len(tables.terms_table(result)) == 6
    reading = readings.ablation_reading(result)
    assert f"lambda = {result['lambda_chosen']:g}" in reading


def test_score_run_makes_exactly_the_summary_s_evaluations(summary, monkeypatch):
    """The sweeps score each run as they train it; the summary must find those results, not recompute them."""
    import spanlib.eval.evaluate as E
    from spanlib.book.runs import ensure_pretrained
    from spanlib.book.summary import score_run

    def refuse(run):
        raise AssertionError(f"{run}: evaluated again instead of read back")

    monkeypatch.setattr(E, "load_backbone", refuse)
    chest = ensure_pretrained("smoke", "span_triangular", seed=0)
    assert score_run("smoke", chest, 0) == ["attention", "linear"]  # smoke's ablations are shorter runs of their own
    lam = ensure_pretrained("smoke", "span_triangular", seed=0, lambda_span=0.5, epochs=1)
    assert score_run("smoke", lam, 0, headline=False) == ["attention", "attention on validation"]
    parts = ensure_pretrained("smoke", "span_triangular", seed=1, dataset="parts")
    assert score_run("smoke", parts, 1, "parts") == ["attention on the training parts", "fewshot", "linear"]
    dino = ensure_pretrained("smoke", "dino", seed=1)
    assert score_run("smoke", dino, 1) == ["attention", "linear"]

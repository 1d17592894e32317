"""Tables of :mod:`spanlib.figures.tables`, readings of :mod:`spanlib.book.readings`, and the result figures of :mod:`spanlib.figures.results`."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest

from spanlib.book import readings
from spanlib.figures import inspection, results, tables
from spanlib.figures.style import BookFigure

PAPER = {"heart": {"SPAN deformable": 90.0, "DINO (CheX augm.)": 30.0},
         "lung": {"SPAN deformable": 80.0, "DINO (CheX augm.)": 20.0}}
ROWS = {"dino": "DINO (CheX augm.)", "span_deformable": "SPAN deformable"}


def _score(m):
    return {"head": 1, "head_chosen": "validation", "mAP": m, "per_image_max_mAP": m + 5, "pointing": 50.0,
            "iou_mass60": 10.0}


def _attention_table():
    scores = {"dino": {"heart": _score(10.0), "lung": _score(20.0)},
              "span_deformable": {"heart": _score(60.0), "lung": _score(70.0)},
              "random": {"heart": _score(5.0), "lung": _score(6.0)}}
    return tables.attention_scores_table(scores, PAPER, ROWS)


def test_attention_scores_table_sets_the_paper_beside_ours():
    table = _attention_table()
    assert len(table) == 6
    row = table[(table.regimen == "span_deformable") & (table.organ == "heart")].iloc[0]
    assert row["mAP"] == 60.0 and row["per-image best head mAP"] == 65.0 and row["paper mAP (JSRT)"] == 90.0
    assert math.isnan(table[table.regimen == "random"]["paper mAP (JSRT)"].iloc[0])


def test_a_missing_value_shows_as_a_dash_and_stays_missing():
    table = _attention_table()
    assert isinstance(table, tables.BookFrame)
    for shown in (table, table.round(1), table.set_index(["regimen", "organ"]).T,
                  table.pivot(index="regimen", columns="organ", values=["mAP", "paper mAP (JSRT)"])):
        assert isinstance(shown, tables.BookFrame)
        html = shown._repr_html_()
        assert "NaN" not in html and tables.MISSING in html and 'class="dataframe"' in html
    assert math.isnan(table[table.regimen == "random"]["paper mAP (JSRT)"].iloc[0])  # the data are untouched
    assert "NaN" in pd.DataFrame(table)._repr_html_()  # what pandas alone shows


def test_the_ap_benchmark_table_shows_a_dash_for_scikit_learn_against_itself():
    from spanlib.bench.ap import speed_table

    result = {"general": {"ms_per_map_median": {"ours": 1.0, "sklearn": 4.0}, "speedup_vs_sklearn": {"ours": 4.0},
                          "max_abs_diff_by_path": {"ours": 0.0}}, "threads": 1}
    table = speed_table(result)
    assert list(table["path"]) == ["ours", "sklearn"] and math.isnan(table.loc[1, "speedup vs scikit-learn"])
    assert "NaN" not in table.round(4)._repr_html_()


def test_linear_probe_table_and_per_finding():
    res = {"dino": {"mAUC": 60.0, "auc": {"a": 55.0, "b": 65.0}}, "random": {"mAUC": 50.0, "auc": {"a": 50.0, "b": 50.0}}}
    table = tables.linear_probe_table(res, {"DINO (CheX augm.)": 84.3}, ROWS)
    assert table.loc["dino", "paper mAUC"] == 84.3 and math.isnan(table.loc["random", "paper mAUC"])
    assert list(tables.per_finding_auc(table).columns) == ["a", "b"]


def _fewshot():
    size = lambda m: {"mean": m, "ci95": [m - 2, m + 2], "aucs": [m] * 3}  # noqa: E731
    return inspection.fewshot_table({"dino": {"sizes": {"4": size(50.0), "8": size(55.0)}},
                                 "span": {"sizes": {"4": size(60.0), "8": size(62.0)}}})


def test_fewshot_table_check_and_verdict():
    table = _fewshot()
    assert set(table.columns) >= {"regimen", "labels", "AUC", "95% CI low", "95% CI high", "draws"}
    assert table["labels"].tolist() == [4, 8, 4, 8] and table["draws"].tolist() == [3] * 4
    check = inspection.all_labels_check({"dino": {"mAUC": 58.0}, "span": {"mAUC": 70.0}}, table)
    assert check.loc["span", "AUC, 8 labels"] == 62.0
    assert "only weakly" in readings.fewshot_verdict(check, 64, 8, 5, 128)
    assert "do carry the defects" in readings.fewshot_verdict(check, 64, 8, 5, 128, target=65.0)
    low = readings.fewshot_verdict(check, 64, 8, 5, 128, chance_bound=75.0)
    assert "close to chance" in low and "128-pixel parts at 64 pixels" in low and "70.0 AUC" in low


def _summary(n=1):
    from spanlib.eval.intervals import seed_interval

    value = (lambda m: seed_interval([m - 1.0, m, m + 1.0])) if n > 1 else (lambda m: m)
    return {"data": "phantoms", "data_description": "synthetic", "preset": "smoke", "seeds": list(range(n)),
            "regimens": {"dino": {"attention_mAP": {"heart": value(10.0), "lung": value(30.0)}, "linear_mAUC": value(60.0)},
                         "dino_cxr": {"attention_mAP": {"heart": value(15.0), "lung": value(15.0)}, "linear_mAUC": 61.0},
                         "span_deformable": {"attention_mAP": {"heart": value(50.0), "lung": value(60.0)},
                                             "linear_mAUC": value(70.0)}},
            "fewshot": {"dino": {"4": value(50.0), "8": 55.0}}}


def test_summary_tables_and_ranking():
    summary = _summary(2)
    assert "means" in readings.summary_header(summary, 2)
    assert readings.summary_header(_summary(), 1).endswith("the text below claims no ordering.")
    rows = tables.summary_attention_rows(summary, {**PAPER, "lung": PAPER["lung"]}, ROWS)
    assert rows.loc[(rows.regimen == "dino") & (rows.organ == "lung"), "this book"].iloc[0] == 30.0
    table = tables.summary_attention_table(rows, ["span_deformable", "dino", "dino_cxr"])
    assert list(table.index) == ["span_deformable", "dino", "dino_cxr"]
    assert tables.mean_attention_map(summary) == {"dino": 20.0, "dino_cxr": 15.0, "span_deformable": 55.0}
    text = readings.attention_ranking(summary, PAPER)
    assert "`span_deformable`, is +35.0 mAP from the best DINO baseline (`dino`)" in text
    assert "reports +60.0" in text and text.index("`span_deformable`: mean") < text.index("`dino`: mean")
    linear = tables.summary_linear_table(summary, {"SPAN deformable": 86.5}, ROWS)
    assert linear.loc["span_deformable", "this book"] == 70.0 and linear.loc["span_deformable", "paper"] == 86.5
    fewshot = tables.summary_fewshot_table(summary)
    assert fewshot.index.name == "labelled parts" and fewshot.loc[4, "dino"] == 50.0


def _run(train=True, loss=6.0, entropy=6.5, steps=10):
    return SimpleNamespace(config=SimpleNamespace(run=SimpleNamespace(train=train), dino=SimpleNamespace(out_dim=1024)),
                           summary={"steps": steps, "last": {"dino_loss": loss, "teacher_entropy": entropy,
                                                             "embed_std": 0.1}})


def test_health_table_and_reading():
    health = tables.health_table({"a": _run(), "b": _run(loss=6.5, steps=20), "untrained": _run(train=False)})
    assert list(health.index) == ["a", "b"] and math.isnan(health.loc["a", "inside share"])
    assert health.loc["a", "log K"] == pytest.approx(math.log(1024))
    assert readings.self_distillation_has_begun_only(health)
    text = readings.self_distillation_reading(health, "vit_small", 224, 100)
    assert text.startswith("After 20 steps at most") and "only begun" in text and "(vit_small, 224 pixels" in text
    far = tables.health_table({"a": _run(loss=2.0)})
    assert "clear progress" in readings.self_distillation_reading(far, "vit_small", 224, 100)
    # some runs learned, some did not: the reading names the ones that did not, never "every run"
    mixed = tables.health_table({"dino (chest, seed 0)": _run(loss=2.0), "dino (parts, seed 0)": _run(loss=6.0),
                                 "dino (parts, seed 1)": _run(loss=5.6), "span (chest, seed 0)": _run(loss=5.2)})
    text = readings.self_distillation_reading(mixed, "vit_small", 224, 100)
    assert "every run" not in text and "2 of 4 runs end at least 1.5 nats below log K" in text
    assert "dino (parts) (2 runs)" in text and "span (chest)" not in text


def _axes_of(figure):
    return [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]


@pytest.mark.filterwarnings("ignore:The set_bad function:PendingDeprecationWarning")  # inside seaborn
def test_result_figures_are_book_figures_and_leave_rcparams():
    before = dict(matplotlib.rcParams)
    table = _attention_table()
    bars = results.attention_map_bars(table, ["random", "dino", "span_deformable"])
    assert isinstance(bars, BookFigure) and len(bars.axes) == 1
    ticks = [line for line in bars.axes[0].lines if line.get_color() == "black"]
    assert len(ticks) == 4  # the paper's value over each bar that has one
    per_label = pd.DataFrame({"a": [50.0, 60.0], "b": [70.0, 80.0]}, index=["dino", "span"])
    heat = results.auc_heatmap(per_label)
    assert isinstance(heat, BookFigure) and len(heat.axes) == 2  # the map and its colour bar
    curves = results.fewshot_curves(_fewshot())
    assert isinstance(curves, BookFigure) and len(curves.axes[0].containers) == 2
    rows = tables.summary_attention_rows(_summary(), PAPER, ROWS)
    scatter = results.book_vs_paper(rows, list(_summary()["regimens"]))
    assert isinstance(scatter, BookFigure) and scatter.axes[0].get_title() == "Spearman rank correlation 0.60"
    assert math.isnan(results.rank_correlation(rows.dropna().iloc[:2]))
    assert dict(matplotlib.rcParams) == before


def test_ordering_lines_claim_an_order_only_where_intervals_separate():
    several = readings.ordering_lines(_summary(2))
    assert several.count("\n") == 2  # heart, lung, linear
    assert "heart attention mAP: `span_deformable` is above `dino_cxr` by 35.0, and the 95% intervals separate" in several
    assert "linear mAUC" in several
    one = readings.ordering_lines(_summary(1))
    assert one.count("no ordering is claimed") == 3


def test_map_quality_sets_dice_beside_attention_and_reads_only_separated_intervals():
    from spanlib.eval.intervals import seed_interval

    def value(m):
        return seed_interval([m - 1.0, m, m + 1.0])

    summary = {"regimens": {"span_triangular": {"attention_mAP": {"heart": value(40.0), "lung": value(50.0)}},
                            "span_global": {"attention_mAP": {"heart": value(41.0), "lung": value(52.0)}},
                            "span_deformable": {"attention_mAP": {"heart": value(60.0), "lung": value(51.0)}}},
               "knowledge_map_dice": {"triangular": {"heart": 55.0, "lung": 60.0},
                                      "global": {"heart": 62.0, "lung": 70.0},
                                      "deformable": {"heart": 85.0, "lung": 90.0}}}
    table = tables.map_quality_table(summary)
    assert list(table.index) == ["triangular", "global", "deformable"]
    assert table.loc["deformable", "Dice mean"] == 87.5 and table.loc["triangular", "Dice heart"] == 55.0
    assert table.loc["deformable", "attention mAP heart"].startswith("60.0 [")
    text = readings.map_quality_reading(summary)
    assert "`deformable` (87.5) > `global` (66.0) > `triangular` (57.5)" in text
    assert "heart attention mAP: `span_deformable` is above `span_triangular` by 20.0, and the 95% intervals separate" in text
    assert "lung attention mAP: `span_deformable` 1.0 above `span_triangular`, but the 95% intervals overlap" in text


@pytest.mark.parametrize(
    ("below", "start", "untrained", "says"),
    [
        (2.55, 8.5, 11.0, "Within sampling error that is no better than an untrained network"),
        (5.3, 14.0, 11.0, "Within sampling error that is no better than an untrained network"),
        (5.3, 30.0, 11.0, "better than no training does"),
        (0.4, 2.0, 20.0, "worse than an untrained network's"),
    ],
)
def test_start_reading_reads_the_knn_gap_against_its_sampling_error(below, start, untrained, says):
    report = {"loss_below_log_k": below, "steps": 93, "knn_test": 200, "knn_accuracy": start,
              "knn_accuracy_random": untrained, "knn_chance": 10.0}
    text = readings.start_reading(report)
    assert says in text and f"{start:.1f}% against {untrained:.1f}%" in text and "200 held-out images" in text
    assert ("past the 1.5 nats" in text) == (below >= 1.5) and ("short of the 1.5 nats" in text) == (below < 1.5)
    # the standard error of a difference of two shares of 200 images: 8.5% and 11.0% give 3.0 points
    if start == 8.5:
        assert "standard error is 3.0 points" in text

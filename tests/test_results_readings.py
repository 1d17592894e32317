"""The results chapter's readings of the references, the coverage extension and the lambda sweep
(:mod:`spanlib.book.results_readings`), their tables (:mod:`spanlib.figures.tables`) and figures
(:mod:`spanlib.figures.results`, :mod:`spanlib.figures.training`)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import matplotlib
import pytest

from spanlib.book import results_readings as rr
from spanlib.book.summary import choose_lambda
from spanlib.figures import results, tables, training
from spanlib.figures.style import BookFigure

ORGANS = ("left_lung", "right_lung", "heart")
REFS = {"oracle": {"left_lung": 95.0, "right_lung": 94.0, "heart": 90.0},
        "mean_mask": {"left_lung": 60.0, "right_lung": 62.0, "heart": 40.0},
        "maps": {"deformable": {"left_lung": 85.0, "right_lung": 86.0, "heart": 80.0},
                 "triangular": {"left_lung": 50.0, "right_lung": 50.0, "heart": 30.0}}}
KINDS = {"span_triangular": "triangular", "span_deformable": "deformable", "span_coverage": "deformable"}


def _iv(mean, half=1.0):
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": [mean - half, mean, mean + half]}


def _one(mean):
    return {"mean": mean, "ci95": None, "seeds": [mean]}


def _regimen(maps, gap=2.0, entry=_iv):
    values = dict(zip(ORGANS, maps))
    return {"attention_mAP": {o: entry(v) for o, v in values.items()},
            "attention_mAP_training": {o: entry(v - 5) for o, v in values.items()},
            "dino_loss_below_log_k": entry(gap)}


def _summary(entry=_iv, coverage=(70.0, 72.0, 50.0), coverage_gap=2.5):
    regimens = {"dino_cxr": _regimen((30.0, 40.0, 20.0), 3.0, entry),
                "span_triangular": _regimen((61.5, 70.0, 45.0), 2.0, entry),
                "span_deformable": _regimen((60.0, 64.0, 30.0), 2.9, entry),
                "span_coverage": _regimen(coverage, coverage_gap, entry)}
    return {"preset": "smoke", "seeds": [0, 1, 2] if entry is _iv else [0], "regimens": regimens,
            "attention_grid": 16, "attention_references": REFS,
            "attention_grid_training": 8, "attention_references_training": {**REFS, "maps": {}}}


def test_side_of_reads_a_reference_only_where_the_interval_is_wholly_on_one_side():
    assert rr.side_of(_iv(62.0), 60.0) == "above"
    assert rr.side_of(_iv(60.5), 60.0) == "level with"
    assert rr.side_of(_iv(58.0), 60.0) == "below"
    assert rr.side_of(_one(60.5), 60.0) == "above" and rr.side_of(59.0, 60.0) == "below"


def test_map_kinds_come_from_the_regimens_configs():
    assert rr.map_kinds("smoke") == {"span_triangular": "triangular", "span_global": "global",
                                     "span_deformable": "deformable", "span_coverage": "deformable"}


def test_references_reading_places_each_organ_and_names_who_beats_the_mean_mask():
    text = rr.references_reading(_summary(), trained_toward=KINDS)
    assert text.startswith("Attention mAP at the 16x16 grid")
    lines = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("- `")}
    assert set(lines) == {"dino_cxr", "span_triangular", "span_deformable", "span_coverage"}
    assert "left_lung 30.0 against 60.0 (below)" in lines["dino_cxr"]
    assert "54.0 to 70.0 below the oracle" in lines["dino_cxr"] and "maps" not in lines["dino_cxr"]
    assert "left_lung 60.0 against 60.0 (level with)" in lines["span_deformable"]
    assert "against the deformable maps it was trained toward, left_lung -25.0, right_lung -22.0, heart -50.0" \
        in lines["span_deformable"]
    assert "against the triangular maps it was trained toward, left_lung +11.5" in lines["span_triangular"]
    assert "against the deformable maps" in lines["span_coverage"]
    assert text.endswith("Above the mean mask on every organ: `span_triangular`, `span_coverage`.")


def test_references_reading_without_a_winner_at_the_training_grid_and_without_references():
    summary = _summary(coverage=(50.0, 72.0, 50.0))
    summary["regimens"]["span_triangular"]["attention_mAP"]["heart"] = _iv(10.0)
    assert rr.references_reading(summary, trained_toward=KINDS).endswith(
        "No regimen is above the mean mask on every organ.")
    training = rr.references_reading(_summary(), size="training", trained_toward=KINDS)
    assert training.startswith("Attention mAP at the 8x8 grid") and "trained toward" not in training
    assert "left_lung 25.0 against 60.0 (below)" in training  # the training-size scores, not the headline's
    one = rr.references_reading(_summary(entry=_one), trained_toward=KINDS)
    assert "one seed, so each value is read as it is" in one
    none = {**_summary(), "attention_references": None}
    assert rr.references_reading(none, trained_toward=KINDS).startswith("The test films carry no organ masks")


def test_final_logged_is_the_last_epochs_mean_and_reads_the_logs(tmp_path):
    records = [{"step": 1, "epoch": 0, "inside_share": 0.1}, {"step": 2, "epoch": 1, "inside_share": 0.5},
               {"event": "checkpoint", "step": 2, "epoch": 1}, {"step": 3, "epoch": 1, "inside_share": 0.7},
               {"step": 4, "epoch": 1, "inside_share": float("nan")}]
    assert rr.final_logged(records, "inside_share") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no training step logs 'inside_share'"):
        rr.final_logged([{"step": 1, "epoch": 0, "dino_loss": 3.0}], "inside_share")
    runs = {}
    for name, share in (("span_coverage (chest, seed 1)", 0.9), ("span_coverage (chest, seed 0)", 0.7),
                        ("span_coverage (parts, seed 0)", 0.1), ("dino_cxr (chest, seed 0)", None)):
        run = tmp_path / name.replace(" ", "_")
        run.mkdir()
        lines = [{"step": 1, "epoch": 0, "dino_loss": 3.0, **({"inside_share": share} if share else {})}]
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs[name] = SimpleNamespace(path=run)
    logs = rr.run_logs(runs, ["span_coverage", "dino_cxr", "span_global"])
    assert list(logs["span_coverage"]) == [0, 1] and list(logs["dino_cxr"]) == [0] and logs["span_global"] == {}
    assert logs["dino_cxr"][0] == [{"step": 1, "epoch": 0, "dino_loss": 3.0}]
    assert rr.final_inside_shares({"span_coverage": logs["span_coverage"]}) == {"span_coverage": [0.7, 0.9]}


def test_coverage_reading_says_when_the_extension_beats_the_papers_loss():
    text = rr.coverage_reading(_summary(), {"span_deformable": [0.4, 0.5], "span_coverage": 0.8})
    assert "- heart: `span_coverage` 50.0, `span_deformable` 30.0 (+20.0, intervals separate)" in text
    assert "2.90 nats below log K with `span_deformable`, 2.50 with `span_coverage` and 3.00 with `dino_cxr`" in text
    assert ("`span_deformable` 0.10 nats short of `dino_cxr` (within the 0.5-nat bar); `span_coverage` 0.50 nats "
            "short of `dino_cxr` (within the 0.5-nat bar)") in text
    assert "put `span_deformable` 45.0% and `span_coverage` 80.0% of their attention inside" in text
    assert text.endswith("beats the paper's loss on every organ, with separate intervals. `span_coverage` keeps "
                         "DINO's objective within the bar.")


def test_coverage_reading_says_plainly_when_it_does_not():
    mixed = rr.coverage_reading(_summary(coverage=(70.0, 63.5, 20.0), coverage_gap=2.0), {})
    assert "- right_lung: `span_coverage` 63.5, `span_deformable` 64.0 (-0.5, intervals overlap)" in mixed
    assert "inside their maps" not in mixed
    assert "`span_coverage` 1.00 nats short of `dino_cxr` (more than the 0.5-nat bar)" in mixed
    ahead = rr.coverage_reading(_summary(coverage_gap=3.4), {})
    assert "`span_coverage` 0.40 nats further below log K than `dino_cxr`" in ahead and "`span_coverage` 0.40 nats short" not in ahead
    assert mixed.endswith("does not beat the paper's loss on every organ: above with separate intervals on 1 of 3, "
                          "below on 1. `span_coverage` costs DINO's objective more than the 0.5-nat bar.")
    worse = rr.coverage_reading(_summary(coverage=(50.0, 50.0, 20.0)), {})
    assert "does not beat the paper's loss: it is below on every organ" in worse
    one = rr.coverage_reading(_summary(entry=_one), {"span_coverage": [0.8]})
    assert "no ordering of the two is claimed" in one and "(+10.0, no interval)" in one
    # seeds that agree to the last digit give intervals of no width: a gap below LEVEL is read as level
    flat = _summary(entry=lambda m: _iv(m, 0.0), coverage=(60.01, 64.0, 50.0))
    text = rr.coverage_reading(flat, {})
    assert "- left_lung: `span_coverage` 60.0, `span_deformable` 60.0 (+0.0, level)" in text
    assert "above with separate intervals on 1 of 3, below on 0" in text


def _ablations(chosen, lambdas=(0.5, 5.0, 50.0, 500.0)):
    return {"lambda_chosen": chosen,
            "lambda": [{"lambda": lam, "val_mAP": 40.0 + (lam == chosen), "dino_loss_below_log_k": 2.0 - i / 10}
                       for i, lam in enumerate(lambdas)]}


@pytest.mark.parametrize(("chosen", "says"), [
    (5.0, "inside the swept range."), (0.5, "the smallest value swept"), (500.0, "the largest value swept")])
def test_lambda_sweep_reading_says_where_the_choice_falls(chosen, says):
    text = rr.lambda_sweep_reading(_ablations(chosen))
    assert text.startswith(f"The sweep runs lambda from 0.5 to 500 (4 values); validation chooses {chosen:g} (41.0 mAP)")
    assert says in text
    assert "the only value swept" in rr.lambda_sweep_reading(_ablations(5.0, (5.0,)))


def test_lambda_sweep_reading_names_the_plateau_the_choice_stands_on():
    rows = [{"lambda": lam, "val_mAP": v} for lam, v in ((0.5, 20.0), (5.0, 30.1), (50.0, 30.6), (500.0, 30.7))]
    chosen = choose_lambda(rows)
    assert chosen == 5.0 and choose_lambda(rows, plateau=0.05) == 500.0
    text = rr.lambda_sweep_reading({"lambda": rows, "lambda_chosen": chosen, "lambda_plateau": 1.0})
    assert ("validation chooses 5 (30.1 mAP), the smallest weight within 1 points of the best (30.7 at 500; "
            "3 of the 4 weights score within it), inside the swept range.") in text
    with pytest.raises(ValueError, match="no rows"):
        choose_lambda([])


def test_reference_and_size_tables():
    refs = tables.references_table(REFS)
    assert list(refs.index) == ["oracle (masks pooled to the grid)", "mean mask of the training films",
                                "deformable maps as attention", "triangular maps as attention"]
    assert refs.loc["mean mask of the training films", "heart"] == 40.0
    assert tables.summary_references_table({}).empty
    assert list(tables.summary_references_table(_summary(), "training").index)[-1] == "mean mask of the training films"
    headline = {"dino": {"heart": {"mAP": 20.0}}, "span_deformable": {"heart": {"mAP": 60.0}}}
    trained = {"dino": {"heart": {"mAP": 25.0}}, "span_deformable": {"heart": _iv(50.0)}}
    sizes = tables.attention_sizes_table(headline, trained, {"headline": 128, "training": 64})
    assert sizes.loc["span_deformable", ("128 px (headline)", "heart")] == 60.0
    assert sizes.loc["span_deformable", ("64 px (training)", "heart")] == 50.0


def test_result_figures_draw_bars_reference_lines_and_the_sweep():
    before = dict(matplotlib.rcParams)
    summary = _summary()
    fig = results.attention_against_references(summary)
    assert isinstance(fig, BookFigure) and len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.patches) == len(summary["regimens"])
        assert [line.get_label() for line in ax.lines if line.get_label() in ("oracle", "mean mask", "deformable maps")] \
            == ["oracle", "mean mask", "deformable maps"]
    oracle = next(line for line in fig.axes[2].lines if line.get_label() == "oracle")
    assert oracle.get_ydata()[0] == 90.0  # the heart's
    no_maps = results.attention_against_references(summary, size="training")
    assert "deformable maps" not in [line.get_label() for line in no_maps.axes[0].lines]
    sweep = results.lambda_sweep(_ablations(5.0))
    assert isinstance(sweep, BookFigure) and len(sweep.axes) == 2
    assert all(ax.get_xscale() == "log" for ax in sweep.axes)
    assert list(sweep.axes[1].lines[0].get_ydata()) == pytest.approx([2.0, 1.9, 1.8, 1.7])
    assert sweep.axes[0].lines[1].get_xdata()[0] == 5.0  # the chosen lambda marked
    assert dict(matplotlib.rcParams) == before


def test_tradeoff_curves_put_the_baseline_in_the_loss_panel_only():
    span = {"span_deformable": [{"step": s, "epoch": 0, "dino_loss": 4.0, "inside_share": 0.3} for s in (1, 2)],
            "span_coverage": [{"step": s, "epoch": 0, "dino_loss": 4.2, "inside_share": 0.6} for s in (1, 2, 3, 4)]}
    base = {"dino_cxr": [{"step": s, "epoch": 0, "dino_loss": 3.8} for s in (1, 2)]}
    fig = training.tradeoff_curves(span, base, log_k=math.log(256))
    assert isinstance(fig, BookFigure) and len(fig.axes) == 2
    share, loss = fig.axes
    assert [line.get_label() for line in share.lines] == ["span_deformable", "span_coverage"]
    assert [line.get_label() for line in loss.lines] == ["span_deformable", "span_coverage", "dino_cxr", "log K"]
    assert loss.lines[-1].get_ydata()[0] == pytest.approx(math.log(256))


def test_coverage_settings_are_read_from_the_configs():
    book = rr.coverage_settings("book")
    assert book.startswith("In the `book` preset, `span_coverage` trains toward the same maps as `span_deformable` "
                           "(deformable) with the terms' weights coverage 20, inclusion 0, exclusion 0 "
                           "(`span_deformable`: coverage 0, inclusion 50, exclusion 50)")
    assert "stepped at 30 times the learning rate (`span_deformable`: 10)" in book
    assert "batch 16 against 32, so 2 times the steps" in book and "3 epochs against 2" in book
    paper = rr.coverage_settings("paper")
    assert "times the learning rate" not in paper and "batch" not in paper


def test_paper_ordering_reading_reads_each_link_of_each_organ():
    summary = _summary()
    summary["regimens"]["span_global"] = _regimen((50.0, 67.0, 35.0), 2.0)
    summary["regimens"]["random"] = _regimen((20.0, 69.5, 10.0), 0.0)
    text = rr.paper_ordering_reading(summary)
    assert text.startswith("The paper's ordering, deformable > global > triangular > the best baseline")
    lines = {line.split(":")[0][2:]: line for line in text.splitlines() if line.startswith("- ")}
    # left lung: 60 > 50 holds; 50 < 61.5 reversed; 61.5 > 30 (dino_cxr, the best baseline there) holds
    assert lines["left_lung"] == ("- left_lung: `span_deformable` 60.0 > `span_global` 50.0: holds; `span_global` 50.0 > "
                                  "`span_triangular` 61.5: reversed; `span_triangular` 61.5 > `dino_cxr` 30.0: holds")
    # right lung: the triangular 70.0 against random 69.5 (the best baseline there): intervals overlap
    assert "`span_triangular` 70.0 > `random` 69.5: intervals overlap" in lines["right_lung"]
    assert text.endswith("3 of the 9 links hold.")  # left 2, right 0, heart 1 (35 < 45: reversed)
    one = rr.paper_ordering_reading(_summary(entry=_one))
    assert "no interval" in one and one.endswith("0 of the 6 links hold.")  # no span_global in _summary

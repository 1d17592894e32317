import math

import numpy as np
import pytest
from scipy import stats

from spanlib.eval.intervals import compare, intervals_separate, seed_interval


def test_seed_interval_is_students_t_interval():
    values = [60.0, 62.0, 64.0]
    got = seed_interval(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert got["mean"] == pytest.approx(62.0) and got["seeds"] == values
    assert got["ci95"] == pytest.approx([62.0 - half, 62.0 + half])
    assert half == pytest.approx(4.968, abs=1e-3)


def test_one_seed_has_no_interval_and_nan_is_left_out():
    assert seed_interval([70.0]) == {"mean": 70.0, "ci95": None, "seeds": [70.0]}
    got = seed_interval([50.0, float("nan"), 52.0])
    assert got["mean"] == pytest.approx(51.0) and got["ci95"] is not None and len(got["seeds"]) == 3


def test_intervals_separate_and_the_sentences():
    low, high = seed_interval([50.0, 51.0, 52.0]), seed_interval([60.0, 61.0, 62.0])
    close = seed_interval([50.5, 53.0, 55.0])
    assert intervals_separate(low, high) is True and intervals_separate(low, close) is False
    assert intervals_separate(low, seed_interval([55.0])) is None
    assert "intervals separate" in compare("span", high, "dino", low, "heart mAP")
    assert compare("span", high, "dino", low, "heart mAP").startswith("heart mAP: span is above dino by 10.0")
    assert "overlap: no ordering" in compare("span", close, "dino", low, "heart")
    assert "no ordering is claimed" in compare("span", seed_interval([60.0]), "dino", seed_interval([50.0]), "heart")


def test_wilson_interval_stays_within_0_and_100():
    from spanlib.eval.intervals import wilson_interval

    for share, n in ((0.0, 8), (100.0, 8), (12.5, 8), (50.0, 200), (99.0, 3)):
        lo, hi = wilson_interval(share, n)
        assert 0.0 <= lo <= share <= hi <= 100.0
    lo, hi = wilson_interval(0.0, 8)
    assert lo == 0.0 and hi > 0.0  # not degenerate at the edge, as a t interval of identical seeds would be
    # the textbook value: 8 of 20 films, 95% -> [21.9, 61.3] (Wilson 1927; Newcombe 1998, method 3)
    lo, hi = wilson_interval(40.0, 20)
    assert lo == pytest.approx(21.88, abs=0.01) and hi == pytest.approx(61.34, abs=0.01)
    assert wilson_interval(50.0, 400)[1] - wilson_interval(50.0, 400)[0] < wilson_interval(50.0, 25)[1] - wilson_interval(50.0, 25)[0]
    with pytest.raises(ValueError):
        wilson_interval(101.0, 10)
    with pytest.raises(ValueError):
        wilson_interval(50.0, 0)


def test_share_interval_of_seeds_that_a_t_interval_would_push_below_0():
    from spanlib.eval.intervals import seed_interval, share_interval

    seeds = [0.0, 0.0, 25.0]  # a t interval over three seeds runs below 0
    assert seed_interval(seeds)["ci95"][0] < 0
    out = share_interval(seeds, n_films=8)
    assert out["mean"] == pytest.approx(25 / 3) and out["seeds"] == seeds and out["films"] == 8
    lo, hi = out["ci95"]
    assert 0.0 <= lo < out["mean"] < hi <= 100.0
    assert "Wilson" in out["interval"]
    assert share_interval([math.nan], 8)["ci95"] is None

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

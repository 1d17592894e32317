"""Results over seeds: the mean with a 95% interval, and whether two intervals separate.

A mean of a continuous score (an mAP, an AUC) gets Student's t interval
over the seeds (:func:`seed_interval`). A share of films (the pointing
game: how many films' most attended patch falls inside the organ) gets a
Wilson score interval over the films instead (:func:`share_interval`): a t
interval over three seeds of a share can run below 0 or above 100, a Wilson
interval stays within [0, 100] and is not degenerate at 0 or 100.

A claim that one regimen beats another is made only where the intervals of
the two do not overlap; with one seed there is no interval, and no ordering
is claimed (:func:`intervals_separate` returns ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def seed_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "ci95", "seeds"}`` of per-seed values: Student's t interval of the mean.

    Non-finite values (a metric undefined for one seed) are left out of the
    mean and the interval but kept in ``seeds``. ``ci95`` is ``None`` with
    fewer than two finite values.
    """
    seeds = [float(v) for v in values]
    finite = np.array([v for v in seeds if math.isfinite(v)], dtype=float)
    mean = float(finite.mean()) if finite.size else math.nan
    ci95 = None
    if finite.size >= 2:
        half = float(stats.t.ppf(0.5 + level / 2, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size))
        ci95 = [mean - half, mean + half]
    return {"mean": mean, "ci95": ci95, "seeds": seeds}


def intervals_separate(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """Whether two :func:`seed_interval` results have disjoint intervals (``None``: one lacks an interval)."""
    if a.get("ci95") is None or b.get("ci95") is None:
        return None
    (lo_a, hi_a), (lo_b, hi_b) = a["ci95"], b["ci95"]
    return hi_a < lo_b or hi_b < lo_a


def compare(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any], what: str) -> str:
    """One sentence on ``a`` against ``b`` that claims an ordering only where the intervals separate."""
    higher, lower = (name_a, name_b) if a["mean"] >= b["mean"] else (name_b, name_a)
    gap = abs(a["mean"] - b["mean"])
    verdict = intervals_separate(a, b)
    if verdict is None:
        n = min(len(a["seeds"]), len(b["seeds"]))
        return (f"{what}: {higher} {gap:.1f} above {lower}, from {n} seed{'s' if n != 1 else ''}: no interval, "
                "so no ordering is claimed.")
    if verdict:
        return f"{what}: {higher} is above {lower} by {gap:.1f}, and the 95% intervals separate."
    return f"{what}: {higher} {gap:.1f} above {lower}, but the 95% intervals overlap: no ordering can be read."


def wilson_interval(share: float, n: int, level: float = 0.95) -> list[float]:
    """Wilson's score interval of a share in percent observed on ``n`` films, in percent (within [0, 100]).

    Args:
        share: the observed share, in percent, in [0, 100].
        n: the number of films it was observed on (at least 1).
        level: the interval's coverage.

    Raises:
        ValueError: a share outside [0, 100] or no film.
    """
    if n < 1:
        raise ValueError(f"a share needs at least one film, got n={n}")
    if not 0.0 <= share <= 100.0:
        raise ValueError(f"a share in percent must be in [0, 100], got {share}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = share / 100.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half) * 100.0, min(1.0, centre + half) * 100.0]


def share_interval(values: Sequence[float], n_films: int, level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "ci95", "seeds", "films", "interval"}`` of per-seed shares (percent) of the same ``n_films`` films.

    The mean is over the seeds; ``ci95`` is :func:`wilson_interval` of that
    mean over the films (the films are what is sampled: a seed's share is of
    the same films), so it stays within [0, 100] with any number of seeds.
    Non-finite values are left out of the mean as in :func:`seed_interval`;
    ``ci95`` is ``None`` when no value is finite.
    """
    out = seed_interval(values, level)
    out["ci95"] = wilson_interval(out["mean"], n_films, level) if math.isfinite(out["mean"]) else None
    out["films"] = int(n_films)
    out["interval"] = "Wilson score interval over the films"
    return out

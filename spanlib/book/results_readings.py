"""Readings of the results chapter (07) about the attention's references, the coverage extension and lambda.

Split from :mod:`spanlib.book.readings` (which would pass its size bound):

* :func:`references_reading`: each regimen's headline attention against the
  references on the same films and grid (:mod:`spanlib.eval.references`);
* :func:`coverage_reading`: the paper's loss (``span_deformable``) against the
  book's extension (``span_coverage``) on the same maps;
* :func:`lambda_sweep_reading`: where the validation choice of lambda falls in
  the swept range;
* :func:`paper_ordering_reading`: the paper's ordering of map kinds, link by
  link and organ by organ;

and what the coverage reading is given: the runs' logs (:func:`run_logs`) and
the inside share at their end (:func:`final_inside_shares`).

A regimen's score is placed above or below a reference only where its 95%
interval over seeds lies wholly on one side (one seed: its value).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from spanlib.book.readings import self_distillation_reading
from spanlib.book.summary import trained_runs
from spanlib.core.checkpoint import read_log
from spanlib.core.configs import REGIMENS, resolve
from spanlib.eval.intervals import intervals_separate
from spanlib.figures.training import tradeoff_curves

LEVEL = 0.05
"""Two attention mAPs closer than this (points) are read as level, whatever their intervals (a run whose seeds
agree to the last digit has an interval of no width)."""

DINO_BAR_NATS = 0.5
"""A SPAN regimen keeps DINO's objective if its loss ends at most this many nats less far below log K than ``dino_cxr``."""


def _entry(v: Any) -> dict[str, Any]:
    """A summary number as ``{"mean", "ci95", "seeds"}`` (a bare value: one seed, no interval)."""
    if isinstance(v, Mapping) and "mean" in v:
        return {"ci95": None, "seeds": [v["mean"]], **v}
    return {"mean": float(v), "ci95": None, "seeds": [float(v)]}


def side_of(v: Any, reference: float) -> str:
    """``above``, ``below`` or ``level with``: a summary number against a fixed reference.

    With a 95% interval the number is above (below) only where the whole
    interval is; with one seed its value decides.
    """
    e = _entry(v)
    lo, hi = e["ci95"] if e["ci95"] is not None else (e["mean"], e["mean"])
    if lo > reference:
        return "above"
    if hi < reference:
        return "below"
    return "level with"


def map_kinds(preset: str, regimens: Sequence[str] = REGIMENS) -> dict[str, str]:
    """SPAN regimen -> the kind of knowledge map its assigned heads are trained toward (from its config)."""
    kinds = {}
    for regimen in regimens:
        span = resolve(preset, regimen).span
        if span.assigned_heads and span.knowledge_maps is not None:
            kinds[regimen] = span.knowledge_maps.kind
    return kinds


def _regimen_against_references(regimen: str, scores: Mapping[str, Any], refs: Mapping[str, Any],
                                 kind: str | None) -> tuple[str, bool]:
    """One bullet: a regimen's organs against the mean mask, the oracle and (SPAN) its maps; and whether it
    is above the mean mask on every organ."""
    organs = [o for o in scores if o in refs["mean_mask"]]
    sides = {o: side_of(scores[o], refs["mean_mask"][o]) for o in organs}
    means = {o: _entry(scores[o])["mean"] for o in organs}
    prior = ", ".join(f"{o} {means[o]:.1f} against {refs['mean_mask'][o]:.1f} ({sides[o]})" for o in organs)
    short = [refs["oracle"][o] - means[o] for o in organs if o in refs["oracle"]]
    text = f"- `{regimen}`: against the mean mask, {prior}"
    if short:
        text += f"; {min(short):.1f} to {max(short):.1f} below the oracle"
    maps = refs.get("maps", {}).get(kind or "", {})
    if maps:
        text += (f"; against the {kind} maps it was trained toward, "
                 + ", ".join(f"{o} {means[o] - maps[o]:+.1f}" for o in organs if o in maps))
    return text + ".", bool(organs) and all(s == "above" for s in sides.values())


def references_reading(summary: Mapping[str, Any], size: str = "headline",
                       trained_toward: Mapping[str, str] | None = None) -> str:
    """Each regimen's attention mAP per organ against the references on the same films and grid (Markdown).

    Per regimen and organ: above, below or level with the training films' mean
    mask (a head that learned only where the organ lies on average); how far
    below the oracle (the masks pooled to the grid); and, for a SPAN regimen,
    the gap to the maps it was trained toward scored as attention. Ends with
    the regimens above the mean mask on every organ, if any.

    Args:
        summary: :func:`spanlib.book.summary.build_summary`'s result.
        size: ``headline`` (the preset's evaluation size) or ``training``.
        trained_toward: SPAN regimen -> map kind (default: :func:`map_kinds` of the summary's preset).
    """
    suffix = "" if size == "headline" else "_training"
    refs = summary.get(f"attention_references{suffix}")
    if not refs:
        return "The test films carry no organ masks, so the attention has no references to be read against."
    kinds = dict(trained_toward) if trained_toward is not None else map_kinds(summary["preset"], summary["regimens"])
    grid = summary[f"attention_grid{suffix}"]
    lines, above_everywhere = [], []
    for regimen, res in summary["regimens"].items():
        line, above = _regimen_against_references(regimen, res[f"attention_mAP{suffix}"], refs, kinds.get(regimen))
        lines.append(line)
        if above:
            above_everywhere.append(f"`{regimen}`")
    n = len(summary.get("seeds", [])) or 1
    head = (f"Attention mAP at the {grid}x{grid} grid, "
            + ("each regimen's mean over seeds, placed above or below a reference only where its 95% interval is "
               "wholly on that side:" if n > 1 else "one seed, so each value is read as it is:"))
    verdict = ("Above the mean mask on every organ: " + ", ".join(above_everywhere) + "." if above_everywhere else
               "No regimen is above the mean mask on every organ.")
    return head + "\n\n" + "\n".join(lines) + "\n\n" + verdict


def final_logged(records: Sequence[Mapping[str, Any]], key: str) -> float:
    """The mean of a logged quantity over the last epoch's training steps (the end of training).

    One step's value is one batch's; the last epoch's mean is steadier.
    Records without a ``step``, with an ``event`` or without the key are skipped.

    Raises:
        ValueError: no training step logs ``key``.
    """
    steps = [r for r in records if "step" in r and not r.get("event") and isinstance(r.get(key), (int, float))
             and math.isfinite(r[key])]
    if not steps:
        raise ValueError(f"no training step logs {key!r}")
    last = max(r.get("epoch", 0) for r in steps)
    values = [float(r[key]) for r in steps if r.get("epoch", 0) == last]
    return sum(values) / len(values)


def run_logs(runs: Mapping[str, Any], regimens: Sequence[str], dataset: str = "chest") -> dict[str, dict[int, list]]:
    """Regimen -> seed -> the records of that run's ``log.jsonl``.

    Args:
        runs: :func:`spanlib.book.summary.trained_runs`'s result: ``"<regimen> (<dataset>, seed <s>)"`` -> a
            run handle (with ``.path``).
        regimens: the regimens to read.
        dataset: the runs' dataset.
    """
    logs: dict[str, dict[int, list]] = {r: {} for r in regimens}
    for name, run in runs.items():
        found = re.fullmatch(r"(.+) \((.+), seed (\d+)\)", name)
        if found and found.group(1) in logs and found.group(2) == dataset:
            logs[found.group(1)][int(found.group(3))] = read_log(Path(run.path) / "log.jsonl")
    return {r: dict(sorted(by_seed.items())) for r, by_seed in logs.items()}


def final_inside_shares(logs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]]) -> dict[str, list[float]]:
    """Regimen -> each seed's inside share at the end of training (:func:`final_logged` of :func:`run_logs`)."""
    return {regimen: [final_logged(records, "inside_share") for records in by_seed.values()]
            for regimen, by_seed in logs.items()}


def _mean(values: float | Sequence[float]) -> float:
    values = [values] if isinstance(values, (int, float)) else list(values)
    return sum(values) / len(values)


def _against_bar(regimen: str, ahead: float, bar: str, nats: float) -> str:
    """One regimen's DINO loss against the bar's: ``ahead`` nats further below log K (negative: short of it)."""
    if ahead >= 0:
        return f"`{regimen}` {ahead:.2f} nats further below log K than `{bar}`"
    within = "within" if -ahead <= nats else "more than"
    return f"`{regimen}` {-ahead:.2f} nats short of `{bar}` ({within} the {nats:g}-nat bar)"


def coverage_reading(summary: Mapping[str, Any], inside_share: Mapping[str, float | Sequence[float]],
                     paper: str = "span_deformable", extension: str = "span_coverage", bar: str = "dino_cxr",
                     nats: float = DINO_BAR_NATS) -> str:
    """The paper's loss against the book's coverage extension on the same maps (Markdown).

    Per organ, the headline attention mAP of both (an ordering only where the
    seeds' intervals separate); DINO's loss below log K of each against
    ``bar`` (kept if at most ``nats`` less far below); the share of the
    assigned heads' attention inside their maps at the end of training.

    Args:
        summary: :func:`spanlib.book.summary.build_summary`'s result.
        inside_share: regimen -> the inside share (0..1) at the end of training, one value or one per seed
            (:func:`final_inside_shares`).
    """
    regimens = summary["regimens"]
    a, b = regimens[paper]["attention_mAP"], regimens[extension]["attention_mAP"]
    wins, losses, lines, unread = [], [], [], 0
    for organ in a:
        ea, eb = _entry(a[organ]), _entry(b[organ])
        gap = eb["mean"] - ea["mean"]
        apart = intervals_separate(ea, eb)
        note = ("level" if abs(gap) < LEVEL else "no interval" if apart is None
                else "intervals separate" if apart else "intervals overlap")
        lines.append(f"- {organ}: `{extension}` {eb['mean']:.1f}, `{paper}` {ea['mean']:.1f} ({gap:+.1f}, {note})")
        unread += apart is None
        if note == "intervals separate":
            (wins if gap > 0 else losses).append(organ)
    gaps = {r: _entry(regimens[r]["dino_loss_below_log_k"])["mean"] for r in (paper, extension, bar)}
    kept = {r: gaps[r] >= gaps[bar] - nats for r in (paper, extension)}
    dino = (f"DINO's loss ends {gaps[paper]:.2f} nats below log K with `{paper}`, {gaps[extension]:.2f} with "
            f"`{extension}` and {gaps[bar]:.2f} with `{bar}`: "
            + "; ".join(_against_bar(r, gaps[r] - gaps[bar], bar, nats) for r in kept) + ".")
    shares = [f"`{r}` {100 * _mean(inside_share[r]):.1f}%" for r in (paper, extension) if r in inside_share]
    inside = ("At the end of training the assigned heads put " + " and ".join(shares)
              + " of their attention inside their maps." if shares else "")
    n = len(a)
    if unread == n:
        verdict = "From one seed there is no interval, so no ordering of the two is claimed"
    elif len(wins) == n:
        verdict = "The coverage regimen beats the paper's loss on every organ, with separate intervals"
    elif len(losses) == n:
        verdict = "The coverage regimen does not beat the paper's loss: it is below on every organ, with separate intervals"
    else:
        verdict = (f"The coverage regimen does not beat the paper's loss on every organ: above with separate "
                   f"intervals on {len(wins)} of {n}, below on {len(losses)}")
    verdict += (f". `{extension}` keeps DINO's objective within the bar." if kept[extension] else
                f". `{extension}` costs DINO's objective more than the {nats:g}-nat bar.")
    head = f"The paper's loss (`{paper}`) and the book's extension (`{extension}`) train toward the same maps. Attention mAP:"
    return "\n\n".join(p for p in (head, "\n".join(lines), dino, inside, verdict) if p)


PAPER_CHAIN = ("span_deformable", "span_global", "span_triangular")
"""The paper's ordering of its regimens by knowledge map, best first (its Table 1)."""
BASELINES = ("random", "dino_start", "dino", "dino_cxr")


def paper_ordering_reading(summary: Mapping[str, Any], chain: Sequence[str] = PAPER_CHAIN,
                           baselines: Sequence[str] = BASELINES) -> str:
    """Per organ, whether deformable > global > triangular > the best baseline holds, link by link (Markdown).

    A link holds only where the two 95% intervals over seeds separate in the
    paper's direction; it is reversed where they separate the other way. The
    best baseline of an organ is the one with the highest mean there.
    """
    regimens = summary["regimens"]
    chain = [r for r in chain if r in regimens]
    bases = [b for b in baselines if b in regimens]
    if len(chain) < 2 and not bases:
        return "This build has no two of the paper's regimens to order."
    lines, held, total = [], 0, 0
    for organ in regimens[chain[0]]["attention_mAP"]:
        scores = {r: _entry(regimens[r]["attention_mAP"][organ]) for r in [*chain, *bases]}
        best = max(bases, key=lambda b: scores[b]["mean"]) if bases else None
        steps = [*chain, best] if best else chain
        links = []
        for upper, lower in zip(steps, steps[1:]):
            a, b = scores[upper], scores[lower]
            apart = intervals_separate(a, b)
            verdict = ("no interval" if apart is None else "intervals overlap" if not apart
                       else "holds" if a["mean"] > b["mean"] else "reversed")
            held += verdict == "holds"
            total += 1
            links.append(f"`{upper}` {a['mean']:.1f} > `{lower}` {b['mean']:.1f}: {verdict}")
        lines.append(f"- {organ}: " + "; ".join(links))
    head = (f"The paper's ordering, deformable > global > triangular > the best baseline, read organ by organ on "
            f"the test films ({summary.get('attention_grid', '?')}x{summary.get('attention_grid', '?')} grid); a "
            f"link holds only where the seeds' 95% intervals separate:")
    tail = f"{held} of the {total} links hold."
    return "\n\n".join([head, "\n".join(lines), tail])


def lambda_sweep_reading(ablations: Mapping[str, Any]) -> str:
    """The lambda chosen on validation, the plateau it stands on, and whether it lies at an edge of the range (Markdown).

    The choice is :func:`spanlib.book.summary.choose_lambda`'s: the smallest
    lambda within ``lambda_plateau`` points of the best validation mAP.
    """
    rows = sorted(ablations["lambda"], key=lambda r: r["lambda"])
    chosen = ablations["lambda_chosen"]
    row = next(r for r in rows if r["lambda"] == chosen)
    best = max(rows, key=lambda r: r["val_mAP"])
    lo, hi = rows[0]["lambda"], rows[-1]["lambda"]
    text = (f"The sweep runs lambda from {lo:g} to {hi:g} ({len(rows)} values); validation chooses {chosen:g} "
            f"({row['val_mAP']:.1f} mAP), ")
    if len(rows) == 1:
        return text + "the only value swept: the sweep says nothing about the choice."
    plateau = ablations.get("lambda_plateau")
    if plateau is not None and best["lambda"] != chosen:
        on = [r["lambda"] for r in rows if r["val_mAP"] >= best["val_mAP"] - plateau]
        text += (f"the smallest weight within {plateau:g} points of the best ({best['val_mAP']:.1f} at "
                 f"{best['lambda']:g}; {len(on)} of the {len(rows)} weights score within it), ")
    if chosen == lo:
        return text + "the smallest value swept: the best lambda may lie below the range."
    if chosen == hi:
        return text + "the largest value swept: the best lambda may lie above the range."
    return text + "inside the swept range."


def coverage_settings(preset: str, paper: str = "span_deformable", extension: str = "span_coverage") -> str:
    """What the extension changes against the paper's regimen in a preset, read from both configs (Markdown)."""
    a, b = resolve(preset, paper), resolve(preset, extension)
    def weights(span: Any) -> str:
        return (f"coverage {span.lambda_coverage:g}, inclusion {span.lambda_inclusion:g}, "
                f"exclusion {span.lambda_exclusion:g}")

    changes = [f"the terms' weights {weights(b.span)} (`{paper}`: {weights(a.span)})"]
    if b.span.attention_lr_scale != a.span.attention_lr_scale:
        changes.append(f"the last block's query/key/value projection and the position embedding stepped at "
                       f"{b.span.attention_lr_scale:g} times the learning rate (`{paper}`: "
                       f"{a.span.attention_lr_scale:g})")
    if b.optim.batch_size != a.optim.batch_size:
        changes.append(f"batch {b.optim.batch_size} against {a.optim.batch_size}, so "
                       f"{a.optim.batch_size / b.optim.batch_size:g} times the steps over the same films")
    if b.optim.epochs != a.optim.epochs:
        changes.append(f"{b.optim.epochs} epochs against {a.optim.epochs}")
    if len(changes) == 1:
        changes.append("the same steps and learning rates")
    same = "the same" if b.span.knowledge_maps == a.span.knowledge_maps else "other"
    return (f"In the `{preset}` preset, `{extension}` trains toward {same} maps as `{paper}` "
            f"({b.span.knowledge_maps.kind}) with " + "; ".join(changes) + ".")


def paper_health_reading(health: Any) -> str:
    """:func:`spanlib.book.readings.self_distillation_reading` of the health table, against the paper preset's run."""
    paper = resolve("paper", "span_deformable")
    return self_distillation_reading(health, paper.model.arch, paper.model.img_size, paper.optim.epochs)


@dataclass
class CoverageEvidence:
    """What the coverage section reads: every trained run, the SPAN regimens' and ``dino_cxr``'s logs, the shares.

    Attributes:
        runs: :func:`spanlib.book.summary.trained_runs`.
        spans: the SPAN regimens of the summary.
        logs: :func:`run_logs` of ``spans`` and ``dino_cxr``.
        shares: :func:`final_inside_shares` of the SPAN regimens.
    """

    runs: dict[str, Any]
    spans: list[str]
    logs: dict[str, dict[int, list]]
    shares: dict[str, list[float]]


def coverage_evidence(preset: str, summary: Mapping[str, Any], data: str | None = None,
                      parts_data: str | None = None) -> CoverageEvidence:
    """The runs :func:`spanlib.book.summary.build_summary` trained, and what :func:`coverage_reading` needs of them."""
    runs = trained_runs(preset, summary["seeds"], data=data or None, parts_data=parts_data or None)
    spans = [r for r in summary["regimens"] if r.startswith("span_")]
    logs = run_logs(runs, [*spans, "dino_cxr"])
    return CoverageEvidence(runs, spans, logs, final_inside_shares({r: logs[r] for r in spans}))


def coverage_tradeoff(preset: str, evidence: CoverageEvidence, seed: int) -> Figure:
    """:func:`spanlib.figures.training.tradeoff_curves` of one seed's SPAN runs beside ``dino_cxr`` and log K."""
    return tradeoff_curves({r: evidence.logs[r][seed] for r in evidence.spans},
                           {"dino_cxr": evidence.logs["dino_cxr"][seed]},
                           log_k=math.log(resolve(preset, "dino_cxr").dino.out_dim))

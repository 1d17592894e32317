"""The book's headline numbers over seeds, and the paper's ablations.

:func:`build_summary` trains (or loads) every regimen at every seed, scores it
and writes ``runs/<preset>/summary.json``: per regimen the attention mAP and
pointing game per organ, the linear mAUC and how far DINO's loss got below
log K; per few-label regimen the AUC at 4, 8, 16, 32 labels and with every
label; each kind of knowledge map's Dice against the true masks; the shared
start's report. Every number is ``{"mean", "ci95",
"seeds"}`` (:func:`spanlib.eval.intervals.seed_interval`: Student's t over the
seeds), but for the pointing game, a share of films, whose ``ci95`` is a
Wilson score interval over the test films, within [0, 100]
(:func:`spanlib.eval.intervals.share_interval`).

:func:`build_ablations` runs the paper's two ablations on the chest films at
one seed: the weight lambda of both terms over two orders of magnitude
(chosen by attention mAP on the *validation* split, never the test split),
and inclusion only / exclusion only / both, each with the raw and the
renormalised attention.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spanlib.book.attention import attention_at, attention_references
from spanlib.book.runs import (
    RunHandle,
    RunKey,
    chapter_data,
    chapter_regimens,
    continues_start,
    ensure_pretrained,
    generated_data,
    has_start,
    knowledge_maps_dir,
    project_root,
    runs_dir,
)
from spanlib.book.start import final_record, loss_below_log_k, start_report
from spanlib.core.configs import load_preset, resolve
from spanlib.core.mapspec import MAP_KINDS, MapSpec
from spanlib.data import open_dataset
from spanlib.eval.evaluate import evaluate
from spanlib.eval.intervals import seed_interval, share_interval
from spanlib.eval.sets import split_of, test_set
from spanlib.maps.quality import dice_scores
from spanlib.maps.store import load_knowledge_maps

FEWSHOT_BASELINES = ("random", "dino_start", "dino", "dino_cxr")
"""Few-label baselines: untrained, the shared start frozen, DINO's own views (the paper's baseline), the chest views."""

PART_SPAN_REGIMENS = ("span_triangular",)
"""The SPAN regimens trained on parts; per seed the one with the best attention mAP is kept (the paper's protocol).
The book trains the heuristic one only (ring maps of rim and hub), to stay in its time budget."""

FEWSHOT_KEPT = "span_best"
"""The name of the kept SPAN backbone in ``fewshot``."""

TRAINED = ("dino", "dino_cxr", "span_triangular", "span_global", "span_deformable", "span_coverage")
"""The chest regimens that train (``random`` and ``dino_start`` are not trained)."""

PART_TRAINED = tuple(r for r in FEWSHOT_BASELINES + PART_SPAN_REGIMENS if r in TRAINED)
"""The parts regimens that train."""


def trained_runs(preset: str, seeds: Sequence[int], data: str | None = None, parts_data: str | None = None
                 ) -> dict[str, RunHandle]:
    """Every trained run of :func:`build_summary` (already made), named ``"<regimen> (<dataset>, seed <s>)"``."""
    from_start = continues_start(preset)
    runs = {}
    for dataset, names, own in (("chest", TRAINED, data), ("parts", PART_TRAINED, parts_data)):
        for regimen in names:
            for seed in seeds:
                key = RunKey(preset, regimen, seed, dataset=dataset, data=own, from_start=from_start)
                runs[f"{regimen} ({dataset}, seed {seed})"] = RunHandle(key.path(), project_root())
    return runs


def dino_gap(run) -> float | None:
    """A trained run's final DINO loss below log K, or None for an untrained baseline."""
    if not run.config.run.train:
        return None
    return loss_below_log_k(final_record(run.path), run.config.dino.out_dim)


def _mean_map(attention: dict[str, Any]) -> float:
    return sum(s["mAP"] for s in attention.values()) / len(attention)


def _interval_tree(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """``[{a: {b: x}}, ...]`` over seeds -> ``{a: {b: seed_interval([x, ...])}}``; None values stay None."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: _interval_tree([p[k] for p in per_seed]) for k in first}
    if first is None:
        return None
    return seed_interval([float(p) for p in per_seed])


def part_regimens(preset: str, seed: int, parts: Path, parts_data: str | None, parts_reader: str,
                  pretrained: str | None = None) -> dict[str, Any]:
    """The parts runs of one seed: the baselines and the SPAN run with the best attention mAP.

    The SPAN backbone is chosen by attention mAP on the parts' *training*
    split (the pretraining images, never the test split), as the paper keeps
    the backbone with the best attention for its few-label probe. A set
    without part masks (a real inspection set, such as the casting folders)
    has nothing to score attention against: the first of
    :data:`PART_SPAN_REGIMENS` is kept, and ``rule`` says so. That is checked
    before anything trains.

    Returns:
        ``{"runs": {name: RunHandle}, "kept": regimen, "kept_name": FEWSHOT_KEPT,
        "attention": {regimen: mAP} (empty without masks), "rule": how it was kept, in words}``.
    """
    masked = bool(open_dataset(parts_reader, parts).mask_names)
    shown = chapter_regimens(preset, pretrained)
    runs = {r: ensure_pretrained(preset, r, seed=seed, dataset="parts", data=parts_data, reader=parts_reader,
                                 pretrained=pretrained)
            for r in FEWSHOT_BASELINES + PART_SPAN_REGIMENS if r in shown}
    attention = {r: _mean_map(evaluate("attention", runs[r].path, parts, reader=parts_reader, test_on="train",
                                       out=runs[r].path / "eval" / "attention-parts-train.json")["organs"])
                 for r in (PART_SPAN_REGIMENS if masked else ())}
    if masked:
        kept, rule = max(attention, key=attention.get), "best attention mAP on the training parts"
    else:
        kept = PART_SPAN_REGIMENS[0]
        rule = (f"the set has no part masks to score attention against, so the first SPAN regimen, "
                f"`{kept}`, is kept without a choice")
    chosen = {r: runs[r] for r in FEWSHOT_BASELINES if r in runs}
    chosen[FEWSHOT_KEPT] = runs[kept]
    return {"runs": chosen, "kept": kept, "kept_name": FEWSHOT_KEPT, "attention": attention, "rule": rule}


def map_dice(preset: str, data: str | None = None, reader: str = "folder", maps_from: str | None = None
             ) -> dict[str, dict[str, float]] | None:
    """Dice (percent) of each kind of knowledge map against the true masks of the test films, per organ.

    The maps are the very ones the ``span_<kind>`` runs trained with: the
    folder the one rule places (:func:`spanlib.book.runs.knowledge_maps_dir`),
    built with the runs' organs, read at each film's size as the loader reads
    them (:meth:`~spanlib.maps.store.KnowledgeMaps.maps_at`). ``data``,
    ``reader``, ``maps_from``: a user's chest films, as :func:`ensure_pretrained`
    takes them (default: the generated phantoms). None when the test films
    carry no organ masks.
    """
    chest, reader = (Path(data), reader) if data else (generated_data(preset)["chest"], "folder")
    test = split_of(open_dataset(reader, chest), "test")
    if not test.mask_names:
        return None
    out = {}
    for kind in MAP_KINDS:
        organs = tuple(resolve(preset, f"span_{kind}").span.assigned_heads)
        folder = knowledge_maps_dir(MapSpec(kind), preset, "chest", data, reader, maps_from, organs=organs)
        scores = dice_scores(load_knowledge_maps(folder), test, skip_missing=True)
        if not all(scores.values()):
            return None
        out[kind] = {organ: 100.0 * sum(v) / len(v) for organ, v in scores.items()}
    return out


def score_run(preset: str, run: RunHandle, seed: int, dataset: str = "chest", headline: bool = True) -> list[str]:
    """Every evaluation :func:`build_summary` and :func:`build_ablations` make of one book run, made now.

    Each evaluation's result file answers the same evaluation later
    (:func:`spanlib.eval.evaluate.evaluate`), so a sweep that scores its runs
    as it trains them (``make book``: two runs at a time) leaves the results
    chapter only reading. For the preset's generated data. ``headline``: a run
    of the headline tables (else an ablation run: attention only). Returns
    the evaluations made.
    """
    data, _ = chapter_data(preset, dataset)
    regimen = run.config.regimen
    done = []
    if dataset == "parts":
        if regimen in PART_SPAN_REGIMENS:
            evaluate("attention", run.path, data, test_on="train", out=run.path / "eval" / "attention-parts-train.json")
            done.append("attention on the training parts")
        evaluate("fewshot", run.path, data, seed=seed)
        evaluate("linear", run.path, data, seed=seed)
        return done + ["fewshot", "linear"]
    for size in ("headline", "training") if headline else ("headline",):  # the ablations read the headline size
        attention_at(preset, run.path, data, size=size)
    done.append("attention")
    if headline:
        evaluate("linear", run.path, data, seed=seed)
        done.append("linear")
    if not headline or _ablations_reuse(preset, regimen, seed):
        attention_at(preset, run.path, data, split="val")
        done.append("attention on validation")
    return done


def _ablations_reuse(preset: str, regimen: str, seed: int) -> bool:
    """Whether :func:`build_ablations` scores this headline run itself (its lambda row at the preset's lambda)."""
    if "ablations" not in load_preset(preset):
        return False
    settings = ablation_settings(preset)
    if regimen != settings["regimen"] or seed != int(settings["seed"]) or settings.get("epochs") is not None:
        return False
    span = resolve(preset, regimen).span
    return span.lambda_inclusion == span.lambda_exclusion and span.lambda_inclusion in map(float, settings["lambdas"])


def _fewshot_over_seeds(preset: str, seeds: Sequence[int], parts: Path, parts_data: str | None, parts_reader: str,
                        pretrained: str | None) -> tuple[list[dict], dict[str, Any]]:
    """Per seed, the few-shot and all-label AUCs of the parts regimens kept, and which were kept."""
    fewshot_seeds, kept = [], {}
    for seed in seeds:
        chosen = part_regimens(preset, seed, parts, parts_data, parts_reader, pretrained)
        kept[str(seed)] = chosen["kept"]
        row = {}
        for name, run in chosen["runs"].items():
            few = evaluate("fewshot", run.path, parts, seed=seed, reader=parts_reader)
            every = evaluate("linear", run.path, parts, seed=seed, reader=parts_reader)
            row[name] = {**{str(n): s["mean"] for n, s in few["sizes"].items()}, "all": every["mAUC"]}
        fewshot_seeds.append(row)
    return fewshot_seeds, kept


def build_summary(
    preset: str,
    seeds: Sequence[int] = (0, 1, 2),
    data: str | None = None,
    reader: str = "folder",
    maps_from: str | None = None,
    eval_data: str | None = None,
    eval_reader: str = "folder",
    select_on: str | None = None,
    parts_data: str | None = None,
    parts_reader: str = "folder",
    pretrained: str | None = None,
) -> dict[str, Any]:
    """Every regimen's results over seeds: ``{"mean", "ci95", "seeds"}`` per number (``ci95`` None for one seed).

    Trains or loads each run (cached) and evaluates it (features cached);
    values in percent, DINO's loss gap in nats. Written to
    ``runs/<preset>/summary.json`` (for a user's ``data``:
    ``runs/<preset>/data-<name>/summary.json``).

    Args:
        data, reader, maps_from: the chest pretraining set (default: the
            generated phantoms), as :func:`ensure_pretrained` takes them.
        eval_data, eval_reader: the annotated set attention is scored on
            (default: ``data``).
        select_on: where a baseline's head is chosen when the evaluation set
            has no validation split.
        parts_data, parts_reader: the inspection set (default: the generated parts).
        pretrained: the checkpoint every regimen continues (see :func:`ensure_pretrained`).
    """
    chest, reader = chapter_data(preset, "chest", data, reader)
    scored, eval_reader = chapter_data(preset, "chest", eval_data or data, eval_reader if eval_data else reader)
    parts, parts_reader = chapter_data(preset, "parts", parts_data, parts_reader)

    n_films = len(test_set(open_dataset(eval_reader, scored), scored, None, eval_reader, {})[0])
    regimens: dict[str, dict] = {}
    for regimen in chapter_regimens(preset, pretrained):
        per_seed = []
        for seed in seeds:
            run = ensure_pretrained(preset, regimen, seed=seed, data=data, reader=reader, maps_from=maps_from,
                                    pretrained=pretrained)
            att = attention_at(preset, run.path, scored, eval_reader, select_on)
            att_training = attention_at(preset, run.path, scored, eval_reader, select_on, size="training")
            lin = evaluate("linear", run.path, chest, seed=seed, reader=reader)
            per_seed.append({"attention_mAP": {o: s["mAP"] for o, s in att.items()},
                             "attention_mAP_training": {o: s["mAP"] for o, s in att_training.items()},
                             "pointing": {o: s["pointing"] for o, s in att.items()},
                             "linear_mAUC": lin["mAUC"], "dino_loss_below_log_k": dino_gap(run)})
        regimens[regimen] = _interval_tree(per_seed)
        # a share of films: a Wilson interval over the films, within [0, 100] (spanlib.eval.intervals)
        regimens[regimen]["pointing"] = {o: share_interval(v["seeds"], n_films)
                                         for o, v in regimens[regimen]["pointing"].items()}

    fewshot_seeds, kept = _fewshot_over_seeds(preset, seeds, parts, parts_data, parts_reader, pretrained)
    meta = open_dataset(reader, chest).meta
    root = runs_dir(preset) / f"data-{chest.name}" if data else runs_dir(preset)
    summary = {
        "data": "synthetic" if meta.get("synthetic") else "real",
        "data_description": meta.get("description", ""),
        "preset": preset,
        "seeds": list(seeds),
        "units": "percent (dino_loss_below_log_k: nats)",
        "pretrained_start": start_report(preset) if has_start(preset) else None,
        "regimens": regimens,
        "fewshot": _interval_tree(fewshot_seeds),
        "fewshot_kept": kept,
        "knowledge_map_dice": map_dice(preset, data, reader, maps_from),
        **(attention_references(preset, data, reader, maps_from, eval_data, eval_reader) or {}),
    }
    out = root / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


TERMS = ("both", "inclusion", "exclusion")
"""SPAN's terms in the appendix ablation."""


LAMBDA_PLATEAU = 1.0
"""Validation mAP points within which a lambda counts as on the best one's plateau (:func:`choose_lambda`)."""


def choose_lambda(sweep: list[dict[str, Any]], plateau: float = LAMBDA_PLATEAU) -> float:
    """The smallest lambda whose validation mAP is within ``plateau`` points of the sweep's best.

    Where the score levels off, the arg-max is a coin toss among weights that
    score alike, and the largest of them lets the prior take most of the step
    from DINO; the smallest weight on the plateau is the choice that the data
    support (the one-standard-error habit of model selection, with a stated
    tolerance in place of an error bar a single seed cannot give).

    Args:
        sweep: rows with ``lambda`` and ``val_mAP``.
        plateau: tolerance in mAP points.
    """
    if not sweep:
        raise ValueError("the lambda sweep has no rows to choose from")
    best = max(row["val_mAP"] for row in sweep)
    return min(row["lambda"] for row in sweep if row["val_mAP"] >= best - plateau)


def ablation_settings(preset: str) -> dict[str, Any]:
    """The preset's ``ablations`` section: ``regimen``, ``lambdas``, ``seed``, ``epochs`` (None: the preset's)."""
    section = load_preset(preset).get("ablations")
    if not section:
        raise ValueError(f"preset {preset!r} has no 'ablations' section (regimen, lambdas, seed)")
    return {"regimen": "span_deformable", "seed": 0, "epochs": None, **section}


def build_ablations(preset: str) -> dict[str, Any]:
    """The lambda sweep and the inclusion/exclusion ablation, scored on validation and test.

    Returns (also written to ``runs/<preset>/ablations.json``)::

        {"regimen", "seed",
         "lambda": [{"lambda", "val_mAP", "test_mAP": {organ}, "pointing": {organ}, "dino_loss_below_log_k"}],
         "lambda_chosen": :func:`choose_lambda` of the sweep, "lambda_best": the lambda with the best val_mAP,
         "terms": [{"terms", "renormalize", "val_mAP", "test_mAP": {organ}, ...}]}

    The terms rows use the preset's lambda, so that "both, renormalised" is
    the headline run itself; the sweep's choice is reported beside them.
    """
    settings = ablation_settings(preset)
    regimen, seed = settings["regimen"], int(settings["seed"])
    chest, _ = chapter_data(preset, "chest")

    def scored(**key: Any) -> dict[str, Any]:
        run = ensure_pretrained(preset, regimen, seed=seed, **key)
        val = attention_at(preset, run.path, chest, split="val")
        test = attention_at(preset, run.path, chest)
        return {"val_mAP": _mean_map(val),
                "test_mAP": {o: s["mAP"] for o, s in test.items()},
                "pointing": {o: s["pointing"] for o, s in test.items()},
                "dino_loss_below_log_k": dino_gap(run)}

    default = resolve(preset, regimen).span
    epochs = settings.get("epochs")
    lambdas = [float(v) for v in settings["lambdas"]]
    # the same run keys as the Makefile's ablation sweeps: lambda explicit, terms and renormalize explicit
    headline = _ablations_reuse(preset, regimen, seed)

    def lambda_key(lam: float) -> float | None:
        """None (the headline run itself) for the preset's own lambda at the preset's epochs."""
        return None if headline and lam == default.lambda_inclusion else lam

    sweep = [{"lambda": lam, **scored(lambda_span=lambda_key(lam), epochs=epochs)} for lam in lambdas]
    chosen = choose_lambda(sweep)
    by_lambda = {row["lambda"]: row for row in sweep}

    def term_row(t: str, r: bool) -> dict[str, Any]:
        if t == "both" and r == default.renormalize and default.lambda_inclusion in by_lambda:
            same = by_lambda[default.lambda_inclusion]  # the sweep's run at the preset's lambda is this setting
            return {k: v for k, v in same.items() if k != "lambda"}
        return scored(terms=t, renormalize=r, epochs=epochs)

    terms = [{"terms": t, "renormalize": r, **term_row(t, r)} for t in TERMS for r in (True, False)]
    result = {"regimen": regimen, "seed": seed, "epochs": epochs, "preset_lambda": default.lambda_inclusion,
              "lambda": sweep, "lambda_chosen": chosen, "lambda_plateau": LAMBDA_PLATEAU,
              "lambda_best": max(sweep, key=lambda row: row["val_mAP"])["lambda"], "terms": terms}
    out = runs_dir(preset) / "ablations.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result

"""The book's attention numbers: at which size they are scored, and what they are read against.

The headline attention mAP of a regimen is scored at the preset's evaluation
size (:func:`spanlib.core.presets.evaluation_size`: the paper rescales films
to 480 px for its attention maps of a model trained at 224; the book scores
at twice its training size), with the position embeddings interpolated; the
score at the training size is kept beside it. Both come with their
references on the same test films and grid (:mod:`spanlib.eval.references`):
the masks pooled to the grid, the training films' mean mask, and each kind
of knowledge map scored as attention.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanlib.book.runs import chapter_data, chapter_regimens, ensure_pretrained, knowledge_maps_dir
from spanlib.core.configs import resolve
from spanlib.core.mapspec import MAP_KINDS, MapSpec
from spanlib.core.presets import evaluation_size
from spanlib.data import open_dataset
from spanlib.eval.evaluate import evaluate
from spanlib.eval.references import dataset_references
from spanlib.eval.sets import split_of
from spanlib.maps.store import load_knowledge_maps


def patch_size(preset: str) -> int:
    """The patch side of a preset's ViT (its ``model.patch_size``, else the one its timm name gives)."""
    model = resolve(preset, "dino").model
    if model.patch_size:
        return int(model.patch_size)
    found = re.search(r"patch(\d+)", model.arch)
    if not found:
        raise ValueError(f"preset {preset!r}: cannot tell the patch size of {model.arch!r}; set model.patch_size")
    return int(found.group(1))


def scoring_sizes(preset: str) -> dict[str, int]:
    """``{"headline": side, "training": side}``: the input sides attention is scored at (equal without an evaluation size)."""
    training = resolve(preset, "dino").model.img_size
    return {"headline": evaluation_size(preset) or training, "training": training}


def attention_file(run: Path, data: Path, size: int | None, split: str | None = None) -> Path:
    """Where an attention evaluation of a run at one size lives (the training size: the evaluator's own name)."""
    if size is None:  # the names the training-size evaluations always had
        return run / "eval" / (f"attention-{split}.json" if split else f"attention-{Path(data).name}.json")
    name = f"attention-{Path(data).name}" + (f"-{split}" if split else "") + (f"-size{size}" if size else "")
    return run / "eval" / f"{name}.json"


def attention_at(preset: str, run: Path, data: Path, reader: str = "folder", select_on: str | None = None,
                 split: str | None = None, size: str = "headline") -> dict[str, Any]:
    """One run's attention scores per organ at the preset's ``headline`` or ``training`` size.

    Args:
        split: the test split (None: the evaluator's own test set).
        size: ``headline`` (the preset's evaluation size) or ``training``.

    Returns:
        :func:`spanlib.eval.evaluate.attention_scores`'s per-organ results.
    """
    sizes = scoring_sizes(preset)
    side = None if sizes[size] == sizes["training"] else sizes[size]
    out = attention_file(Path(run), Path(data), side, split)
    return evaluate("attention", run, data, reader=reader, select_on=select_on, test_on=split, eval_size=side,
                    out=out)["organs"]


def attention_references(preset: str, data: str | None = None, reader: str = "folder", maps_from: str | None = None,
                         eval_data: str | None = None, eval_reader: str = "folder") -> dict[str, Any] | None:
    """The references of the attention tables at the headline and the training grid, percent, test films.

    Returns:
        ``{"attention_grid": side, "attention_references": {...},
        "attention_grid_training": side, "attention_references_training": {...}}``
        (the references as :func:`spanlib.eval.references.attention_references`
        gives them), or None when the test films carry no masks. The maps'
        references need the maps of the test films, so they are given only
        where attention is scored on the pretraining set itself.
    """
    chest, reader = chapter_data(preset, "chest", data, reader)
    scored, eval_reader = chapter_data(preset, "chest", eval_data or data, eval_reader if eval_data else reader)
    test = split_of(open_dataset(eval_reader, scored), "test")
    if not test.mask_names:
        return None
    train = split_of(open_dataset(reader, chest), "train")
    stores = {}
    if scored == chest:
        for kind in MAP_KINDS:
            organs = tuple(resolve(preset, f"span_{kind}").span.assigned_heads)
            stores[kind] = load_knowledge_maps(knowledge_maps_dir(MapSpec(kind), preset, "chest", data, reader,
                                                                  maps_from, organs=organs))
    patch = patch_size(preset)
    sizes = scoring_sizes(preset)
    out: dict[str, Any] = {}
    for which, suffix in (("headline", ""), ("training", "_training")):
        grid = sizes[which] // patch
        out[f"attention_grid{suffix}"] = grid
        out[f"attention_references{suffix}"] = dataset_references(test, train, grid, stores)
    return out


@dataclass
class ChapterScores:
    """What the attention chapter shows of one seed: its runs, where they are scored, their scores, the references.

    Attributes:
        runs: regimen -> the seed's run (:class:`spanlib.book.runs.RunHandle`).
        data, reader: the films attention is scored on.
        scores, scores_training: regimen -> organ -> scores at the headline and the training size.
        sizes: :func:`scoring_sizes`.
        references: :func:`attention_references` (None without masks).
    """

    runs: dict[str, Any]
    data: Path
    reader: str
    scores: dict[str, Any]
    scores_training: dict[str, Any]
    sizes: dict[str, int]
    references: dict[str, Any] | None

    def test_films(self) -> Any:
        """The test split of the films attention is scored on (what the chapter's browsers show)."""
        return split_of(open_dataset(self.reader, self.data), "test")


def chapter_scores(preset: str, seed: int = 0, data: str | None = None, reader: str = "folder",
                   maps_from: str | None = None, eval_data: str | None = None, eval_reader: str = "folder",
                   select_on: str | None = None, pretrained: str | None = None, regimens: str | Sequence[str] = "",
                   epochs: int | None = None, batch_size: int | None = None) -> ChapterScores:
    """Every regimen of one seed trained (or loaded) and scored at both sizes, with the references: the
    attention chapter's call (its parameters as the chapter has them; empty strings mean none).

    ``pretrained``: the checkpoint every regimen continues (:func:`~spanlib.book.runs.ensure_pretrained`);
    without it or a shared start there is no ``dino_start`` row (:func:`~spanlib.book.runs.chapter_regimens`).
    ``regimens``: the regimens to show (a list, or names joined by commas; empty: every one); ``epochs`` and
    ``batch_size``: the runs' (None: the preset's), for a short run on a few films.
    """
    data, maps_from, eval_data, select_on = data or None, maps_from or None, eval_data or None, select_on or None
    pretrained = pretrained or None
    scored, scored_reader = chapter_data(preset, "chest", eval_data or data, eval_reader if eval_data else reader)
    chosen = [r for r in (regimens.split(",") if isinstance(regimens, str) else regimens) if r.strip()]
    names = [r for r in chapter_regimens(preset, pretrained) if not chosen or r in {c.strip() for c in chosen}]
    runs = {r: ensure_pretrained(preset, r, seed=seed, data=data, reader=reader, maps_from=maps_from,
                                 pretrained=pretrained, epochs=epochs, batch_size=batch_size)
            for r in names}
    return ChapterScores(
        runs=runs, data=scored, reader=scored_reader,
        scores={r: attention_at(preset, run.path, scored, scored_reader, select_on) for r, run in runs.items()},
        scores_training={r: attention_at(preset, run.path, scored, scored_reader, select_on, size="training")
                         for r, run in runs.items()},
        sizes=scoring_sizes(preset),
        references=attention_references(preset, data, reader, maps_from, eval_data, eval_reader))

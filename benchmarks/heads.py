"""Experiments behind `benchmarks/heads.md`: what gets SPAN's assigned heads onto the organs.

Trains variations of one SPAN regimen on the book preset's chest films
(continuing the book's shared start), scores each run's assigned heads on the
validation and test films at the training grid and at a finer evaluation size,
and prints them beside the references of :mod:`spanlib.eval.references` (the
masks pooled to the grid, the training films' mean mask, the maps themselves)
and beside DINO's loss at the end of the run.

Usage (after `make book` made the data, the maps and the start)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heads.py --root . --out /tmp/heads \\
        --variant "paper-l50-e2: span.lambda_inclusion=50 span.lambda_exclusion=50" \\
        --variant "cov5-e2: span.lambda_inclusion=0 span.lambda_exclusion=0 span.lambda_coverage=5"

Each variant is ``name: key=value ...`` (dotted config overrides). With
``--seeds-table OUT...`` it prints, instead, one Markdown row per folder of
``<regimen>-s<seed>/results.json`` runs: the test mAP at the evaluation size
as mean and 95% t interval over the seeds (``spanlib.eval.intervals``, as the
book), DINO's final loss and the inside share, each a mean over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from spanlib.core.configs import parse_override, resolve
from spanlib.data import open_dataset
from spanlib.eval.evaluate import evaluate
from spanlib.eval.references import attention_references
from spanlib.eval.sets import split_of
from spanlib.maps.store import load_knowledge_maps
from spanlib.pretrain.train import pretrain


def references(chest: Path, maps_root: Path, grid: int, kinds=("triangular", "global", "deformable")) -> dict:
    data = open_dataset("folder", chest)
    test, train = split_of(data, "test"), split_of(data, "train")
    organs = list(test.mask_names)
    test_samples = [test[i] for i in range(len(test))]
    test_masks = {o: [s.masks[o] for s in test_samples] for o in organs}
    train_masks = {o: [train[i].masks[o] for i in range(len(train))] for o in organs}
    maps = {}
    for kind in kinds:
        folder = maps_root / kind
        if not (folder / "manifest.json").is_file():
            continue
        store = load_knowledge_maps(folder)
        per = [store.maps_for(s.id) for s in test_samples]
        maps[kind] = {o: [m[store.organs.index(o)] for m in per] for o in organs if o in store.organs}
    return attention_references(test_masks, train_masks, grid, maps)


def final_dino_loss(run: Path, last: int = 3) -> float:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"dino_loss"' in line]
    tail = records[-last:]
    return sum(r["dino_loss"] for r in tail) / len(tail)


def scale_also(prefixes: list[str]) -> None:
    """Experiment only: the learning-rate scale of the SPAN section also applies to these parameter prefixes."""
    from spanlib.model import dino

    plain = dino.param_groups

    def widened(model, lr_scales=None):
        if lr_scales:
            scale = next(iter(lr_scales.values()))
            lr_scales = {**lr_scales, **{p: scale for p in prefixes}}
        return plain(model, lr_scales)

    dino.param_groups = widened


def seeds_table(folders: list[Path], eval_size: int = 128) -> str:
    """One Markdown row per (folder, regimen): seeds' mean and 95% interval, as the book reports them."""
    from statistics import mean

    from spanlib.eval.intervals import seed_interval

    lines = []
    for folder in folders:
        by_regimen: dict[str, list[dict]] = {}
        for result in sorted(folder.glob("*-s*/results.json")):
            regimen = result.parent.name.rsplit("-s", 1)[0]
            by_regimen.setdefault(regimen, []).extend(json.loads(result.read_text())["runs"].values())
        for regimen, rows in by_regimen.items():
            cells = []
            for organ in ("left_lung", "right_lung", "heart"):
                iv = seed_interval([r[f"test_eval{eval_size}"][organ] for r in rows])
                cells.append(f"{iv['mean']:.1f} [{iv['ci95'][0]:.1f}, {iv['ci95'][1]:.1f}]")
            lines.append(f"| {folder.name} | {regimen} | {len(rows)} | " + " | ".join(cells)
                         + f" | {mean(r['dino_loss'] for r in rows):.2f} | {mean(r['inside_share'] for r in rows):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="a built book (data, maps, start)")
    parser.add_argument("--out", type=Path, help="where the runs go (not needed with --seeds-table)")
    parser.add_argument("--regimen", default="span_deformable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--seeds-table", nargs="*", type=Path, default=None, help="folders of finished runs to tabulate")
    parser.add_argument("--scale-also", nargs="*", default=[], help="more parameter prefixes the lr scale applies to")
    args = parser.parse_args()
    if args.seeds_table is not None:
        print(seeds_table(args.seeds_table, args.eval_size))
        return
    if args.scale_also:
        scale_also(args.scale_also)
    root = args.root.resolve()
    chest = root / "data/generated/book/chest"
    kind = args.regimen.removeprefix("span_")
    results = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        overrides = dict(parse_override(t) for t in rest.split())
        overrides.update({"run.data": str(chest), "run.seed": args.seed,
                          "run.init_from": str(root / "runs/book/start")})
        if args.regimen.startswith("span_") and kind != "triangular":
            overrides.setdefault("span.knowledge_maps", str(root / "runs/book/maps" / kind))
        cfg = resolve("book", args.regimen, overrides)
        out = args.out / name.strip()
        start = time.perf_counter()
        pretrain(cfg, out, resume=True)
        row = {"seconds": round(time.perf_counter() - start, 1), "dino_loss": final_dino_loss(out),
               "log_k": math.log(cfg.dino.out_dim)}
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "inside_share" in line]
        row["inside_share"] = log[-1]["inside_share"] if log else None
        for size in (None, args.eval_size):
            tag = "train_grid" if size is None else f"eval{size}"
            for split in ("val", "test"):
                res = evaluate("attention", out, chest, test_on=split, eval_size=size,
                               out=out / "eval" / f"attention-{split}-{tag}.json")
                row[f"{split}_{tag}"] = {o: round(s["mean"], 1) for o, s in res["attention"].items()}
        results[name.strip()] = row
        print(name, json.dumps(row), flush=True)
    model = resolve("book", args.regimen).model
    grids = (model.img_size // model.patch_size, args.eval_size // model.patch_size)
    refs = {f"grid{g}": references(chest, root / "runs/book/maps", g) for g in grids}
    print("references", json.dumps(refs), flush=True)
    (args.out / "results.json").write_text(json.dumps({"runs": results, "references": refs}, indent=1))


if __name__ == "__main__":
    main()

"""The benchmarks of ``python -m spanlib bench``: each runs on a tiny configuration
and returns its documented keys. Timings are never asserted."""

from __future__ import annotations

import json

import pytest

from spanlib.bench import ap, byol, loader, register, step
from spanlib.bench.cli import BENCHES


def test_every_bench_has_one_cli_and_one_measure() -> None:
    import importlib

    assert {"step", "ap", "register", "byol", "loader"} <= set(BENCHES)
    for module_name, _ in BENCHES.values():
        assert callable(importlib.import_module(module_name).main), module_name
    for module in (step, ap, register, byol, loader):
        assert callable(module.measure), module.__name__
        assert not hasattr(module, "run") and not hasattr(module, "add_arguments"), module.__name__


def test_step_parses_the_reference_flags() -> None:
    args = step.parser().parse_args(["--json", "--arch", "vit_small_patch16_224", "--img-size", "224", "--batch", "16",
                                     "--out-dim", "65536", "--local-crops", "0", "--threads", "2", "--amp", "off"])
    assert (args.arch, args.img_size, args.batch, args.out_dim, args.local_crops, args.threads, args.amp) == (
        "vit_small_patch16_224", 224, 16, 65536, 0, 2, "off")
    over = step.step_overrides(args.arch, args.img_size, args.batch, args.out_dim, args.local_crops, args.amp)
    assert over["model.arch"] == "vit_small_patch16_224" and over["model.embed_dim"] is None
    assert over["model.img_size"] == 224 and over["optim.batch_size"] == 16 and over["dino.out_dim"] == 65536
    assert over["views.local_crops_number"] == 0 and over["run.amp"] == "off" and "views.kind" not in over
    assert step.step_overrides(local_crops=2)["views.kind"] == "dino"
    defaults = step.parser().parse_args([])
    assert defaults.arch is None and defaults.threads is None and step.step_overrides() == {}


def test_step_measure_tiny() -> None:
    result = step.measure("book", steps=1, warmup=0, img_size=32, batch=2, out_dim=64, local_crops=0, threads=1)
    for key in ("dino_images_per_s", "span_images_per_s", "span_overhead", "matmul_share", "matmul_gflops",
                "dino_step_gflop", "threads", "batch_size", "img_size", "out_dim", "local_crops"):
        assert key in result, key
    assert result["threads"] == 1 and result["batch_size"] == 2 and result["img_size"] == 32
    assert result["out_dim"] == 64 and result["local_crops"] == 0
    assert result["dino_images_per_s"] > 0 and result["matmul_share"] > 0
    json.dumps(result)


def test_ap_measure_tiny_matches_sklearn(capsys: pytest.CaptureFixture[str]) -> None:
    result = ap.measure(maps=6, size=32, grid=4, steps=2, warmup=0)
    for key in ("speedup_attention_maps", "speedup_general", "max_abs_diff", "general", "general_signed", "attention"):
        assert key in result, key
    assert result["max_abs_diff"] <= 1e-6
    assert set(result["attention"]["ms_per_map_median"]) >= {"sklearn", "ours_patch_with_counts", "ours_pixel"}
    assert ap.main(["--json", "--maps", "4", "--size", "16", "--grid", "4", "--steps", "2", "--kinds", "attention"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["max_abs_diff"] <= 1e-6 and "speedup_attention_maps" in printed and "general" not in printed


def test_register_measure_tiny() -> None:
    result = register.measure(n=2, ref_n=1, rounds=1, workers=1, image_size=64, map_size=32, candidates=1,
                              variants="", no_global=True)
    for key in ("maps_per_s", "cpu_ms_per_map", "maps_per_s_per_worker", "hours_190k_films_16_cores", "dice_mean",
                "reference_maps_per_s", "speedup"):
        assert key in result, key
    assert result["workers"] == 1 and result["n"] == 2
    with pytest.raises(TypeError):
        register.measure(not_an_option=1)


def test_byol_measure_tiny() -> None:
    result = byol.measure(steps=1, warmup=0, batch_size=2)
    for key in ("seconds_per_step", "images_per_second", "relative_to_object_bf16_1_thread",
                "object_step_parts_seconds"):
        assert key in result, key
    assert result["batch_size"] == 2 and len(result["seconds_per_step"]) == 4


def test_dispatcher_runs_a_bench(capsys: pytest.CaptureFixture[str]) -> None:
    from spanlib.cli import main

    assert main(["bench", "ap", "--json", "--maps", "2", "--size", "16", "--grid", "4", "--steps", "1",
                 "--kinds", "general"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] <= 1e-6


def test_loader_measure_tiny(tmp_path) -> None:
    result = loader.measure(films=(12,), batches=1, batch_size=4, img_size=24, root=tmp_path / "films",
                            in_memory_at=12)
    rows = result["rows"]
    assert [(r["films"], r["in_memory"]) for r in rows] == [(12, False), (12, True)]
    assert all(r["peak_rss_mib"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert result["rss_growth_lazy_mib"] is None  # one size: no growth to report

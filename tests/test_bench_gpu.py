"""The GPU check (``python -m spanlib bench gpu``): it refuses without CUDA, and its report says what it measured.

The check's CPU dry run (``--cpu-dry-run``: the same code at the smoke
preset's size, torchrun killed and resumed included) takes about half a
minute and is run by hand, not here, to keep the suite in its budget.
"""

from __future__ import annotations

import pytest
import torch

from spanlib.bench.gpu import main, report


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would run")
def test_the_check_refuses_without_cuda(capsys, tmp_path):
    assert main(["--out", str(tmp_path / "gpu.md")]) == 2
    assert "no CUDA device" in capsys.readouterr().out and not (tmp_path / "gpu.md").exists()


def _result(span: float, preset: str = "paper") -> dict:
    return {"preset": preset, "device": "NVIDIA H100", "torch": "2", "cuda": "13", "seconds": 300.0,
            "step": [{"batch": 28, "dino_images_per_s": 900.0, "span_images_per_s": span, "span_overhead": 1.1,
                      "matmul_share": 0.5, "peak_gib": 10.0, "amp": "bfloat16"},
                     {"batch": 512, "error": "out of memory"}],
            "loader": [{"views": "paper", "workers": 8, "batch": 64, "images_per_s": 2000.0}],
            "evaluation": [{"size": 480, "grid": (30, 30), "images": 512, "images_per_s": 800.0, "peak_gib": 2.0}],
            "resume": {"steps": 40, "checkpoint_every": 13, "killed_near_step": 14, "resumed_rc": 0,
                       "uninterrupted_rc": 0, "finished": 40, "max_loss_difference": 1e-3,
                       "killed_before_the_end": True}}


def test_the_report_judges_the_goal_by_the_span_step():
    assert "best measured: 1200 (met)" in report(_result(1200.0))
    assert "best measured: 800 (not met)" in report(_result(800.0))
    assert "(a CPU dry run: not a measurement of the goal)" in report(_result(1200.0, preset="smoke"))
    text = report(_result(800.0))
    assert "| 512 | out of memory |" in text and "| 480 | 30x30 | 512 | 800 | 2.0 |" in text
    assert "finished 40 steps" in text and "too late" not in text
    late = _result(800.0)
    late["resume"]["killed_before_the_end"] = False
    assert "too late: the run had finished, so nothing was resumed" in report(late)

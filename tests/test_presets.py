"""Presets in one place: each ``spanlib/presets/<name>.yaml`` holds the data sizes and the notebook parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spanlib.cli import main
from spanlib.core.configs import preset_names
from spanlib.core.presets import notebook_parameters, preset_section
from spanlib.data import data_preset
from spanlib.data.generate import KINDS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["smoke", "book", "paper"])
def test_every_preset_has_data_sizes_and_notebook_parameters(name):
    assert name in preset_names()
    sizes = data_preset(name)
    assert tuple(sizes) == KINDS and all(sum(entry["splits"].values()) > 0 for entry in sizes.values())
    parameters = notebook_parameters(name)
    assert parameters["preset"] == name and all(isinstance(v, (str, int, float, bool)) for v in parameters.values())


def test_a_copy_each_time_and_a_clear_error():
    data_preset("smoke")["chest"]["splits"]["train"] = 0
    assert data_preset("smoke")["chest"]["splits"]["train"] > 0
    with pytest.raises(ValueError, match="no 'nothing' section"):
        preset_section("smoke", "nothing")


def test_params_verb_prints_what_papermill_reads(capsys):
    assert main(["params", "smoke"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == notebook_parameters("smoke") and printed["step_steps"] == 2


def test_sweep_verb_passes_the_presets_notebook_parameters(monkeypatch, tmp_path):
    import spanlib.book.cli as sweep_cli

    seen = {}

    def fake_sweep(notebook, grid, out, fixed=None, timeout=None, workers=1):
        seen.update(fixed=fixed, grid=grid)
        return [{"status": "ok"}]

    monkeypatch.setattr(sweep_cli, "sweep", fake_sweep)
    assert main(["sweep", "--notebook", "x.md", "--preset", "smoke", "--param", "seed=0,1", "--out", str(tmp_path)]) == 0
    assert seen == {"fixed": notebook_parameters("smoke"), "grid": {"seed": [0, 1]}}


def test_no_second_home_for_presets():
    assert not (REPO / "notebooks" / "params").exists()
    assert not (REPO / "spanlib" / "data" / "presets.py").exists()

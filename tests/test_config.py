import re
import tomllib
from pathlib import Path

import pytest
import yaml

from spanlib.core.configs import REGIMENS, load_config, parse_override, resolve
from spanlib.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["smoke", "book", "paper"])
@pytest.mark.parametrize("regimen", REGIMENS)
def test_every_preset_resolves_every_regimen(preset, regimen):
    cfg = resolve(preset, regimen)
    assert cfg.regimen == regimen
    assert bool(cfg.span.assigned_heads) == regimen.startswith("span_")
    assert cfg.run.train == (regimen not in ("random", "dino_start"))
    if regimen == "dino":
        assert cfg.views.kind == "dino"
    elif regimen not in ("random", "dino_start"):  # the paper's chest views are its Table A.2
        assert cfg.views.kind == ("paper" if preset == "paper" else "cxr")


def test_paper_preset_is_the_papers_configuration():
    cfg = resolve("paper", "span_deformable")
    assert (cfg.model.arch, cfg.model.img_size, cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.lr) == (
        "vit_small_patch16_224", 224, 28, 30, 1e-4)
    assert not cfg.optim.lr_batch_scaling  # appendix A.3: SPAN's 1e-4 is the rate itself
    assert cfg.views.kind == "paper" and resolve("paper", "dino_cxr").optim.lr == 1e-3
    assert cfg.optim.optimizer == "adam" and cfg.dino.out_dim == 65536
    assert cfg.span.assigned_heads == {"left_lung": 0, "right_lung": 1, "heart": 2}


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = resolve("smoke", "span_triangular", {"optim.epochs": 7, "span.lambda_inclusion": 0.25})
    assert cfg.optim.epochs == 7 and cfg.span.lambda_inclusion == 0.25
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert cfg.replace(**{"run.seed": 3}).run.seed == 3


def test_bad_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown OptimConfig fields \\['epochz'\\]"):
        resolve("smoke", "dino", {"optim.epochz": 1})
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve("nope", "dino")
    with pytest.raises(ValueError, match="unknown regimen"):
        resolve("smoke", "dinosaur")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="key=value"):
        parse_override("optim.epochs")
    assert parse_override("optim.lr=1e-3") == ("optim.lr", 1e-3)


def test_cli_help_lists_verbs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("data", "templates", "pretrain", "evaluate", "bench"):
        assert verb in out


def _requirement_names(reqs):
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _requirement_names(project["dependencies"] + project["optional-dependencies"]["test"]
                                + project["optional-dependencies"]["lab"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _requirement_names([p for p in pip if not p.startswith("-e")])
    assert listed == wanted

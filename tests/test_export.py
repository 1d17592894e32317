"""``export``: a run's backbone as a plain timm state dict that loads without spanlib."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from spanlib.cli import main
from spanlib.core.configs import resolve
from spanlib.data import make_default_data
from spanlib.model.export import export_backbone, load_backbone, load_exported
from spanlib.pretrain.train import pretrain


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    paths = make_default_data("smoke", root / "data", progress=False)
    pretrain(resolve("smoke", "span_triangular", {"run.data": str(paths["chest"])}), root / "run")
    return root / "run"


def test_export_writes_weights_that_timm_loads_alone(smoke_run, tmp_path):
    out = tmp_path / "exported"
    result = export_backbone(smoke_run, out)
    assert result["step"] > 0 and (out / "model.safetensors").is_file() and (out / "spanlib.yaml").is_file()
    config = json.loads((out / "config.json").read_text())
    _, teacher, _ = load_backbone(smoke_run)
    x = torch.rand(2, config["model_args"]["in_chans"], config["model_args"]["img_size"], config["model_args"]["img_size"])
    with torch.no_grad():
        expected = teacher(x)
        # 1. timm alone, through pretrained_cfg_overlay
        via_overlay = load_exported(out)(x)
        # 2. timm + load_state_dict, the plain way
        plain = timm.create_model(config["architecture"], pretrained=False, num_classes=0, **config["model_args"])
        plain.load_state_dict(load_file(str(out / "model.safetensors")))
        via_state_dict = plain.eval()(x)
    torch.testing.assert_close(via_overlay, expected)
    torch.testing.assert_close(via_state_dict, expected)


def test_student_differs_from_teacher_and_cli(smoke_run, tmp_path, capsys):
    assert main(["export", "--run", str(smoke_run), "--out", str(tmp_path / "s"), "--which", "student"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parameters"] > 0
    student = load_file(str(tmp_path / "s" / "model.safetensors"))
    export_backbone(smoke_run, tmp_path / "t")
    teacher = load_file(str(tmp_path / "t" / "model.safetensors"))
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    assert main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().out


def test_a_conv_stem_run_is_refused_with_what_loads_it(tmp_path):
    from conftest import toy_samples

    cfg = resolve("smoke", "dino_cxr", {"model.stem": "conv", "span.knowledge_maps": "masks"})
    pretrain(cfg, tmp_path / "run", samples=toy_samples())
    with pytest.raises(ValueError, match="'conv' stem .* timm alone cannot build.*load_backbone"):
        export_backbone(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _, backbone, _ = load_backbone(tmp_path / "run")  # spanlib itself loads it
    assert backbone(torch.randn(1, 3, cfg.model.img_size, cfg.model.img_size)).shape[-1] == backbone.num_features

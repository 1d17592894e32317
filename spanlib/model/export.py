"""A trained run's backbone out of spanlib: a plain timm state dict in safetensors, its config beside it.

``python -m spanlib export --run RUN --out DIR`` writes::

    DIR/model.safetensors   the teacher's (or student's) ViT weights, timm's key names, no head
    DIR/config.json         what timm needs to build it again (architecture and the shape overrides)
    DIR/spanlib.yaml        the run's whole spanlib configuration, for the record

and the weights load with nothing of spanlib::

    cfg = json.load(open("DIR/config.json"))
    model = timm.create_model(cfg["architecture"], pretrained=True, num_classes=0, **cfg["model_args"],
                              pretrained_cfg_overlay={"file": "DIR/model.safetensors"})
    # or: model = timm.create_model(..., pretrained=False); model.load_state_dict(safetensors.torch.load_file(...))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from safetensors.torch import save_file

from spanlib.core.checkpoint import load_checkpoint, write_json
from spanlib.core.configs import Config
from spanlib.model.vit import build_vit, shape_overrides

WHICH = ("teacher", "student")
WEIGHTS = "model.safetensors"
TIMM_CONFIG = "config.json"


def load_backbone(run: str | Path, which: str = "teacher") -> tuple[Config, torch.nn.Module, dict[str, Any]]:
    """The run's configuration and its (teacher) backbone, in eval mode.

    Args:
        run: a run directory holding ``checkpoint.pt``.
        which: ``"teacher"`` (DINO publishes the teacher) or ``"student"``.

    Returns:
        ``(config, backbone, {"step": ...})``.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    state = load_checkpoint(Path(run) / "checkpoint.pt", mmap=True)  # the weights only: the optimiser stays on disk
    cfg = Config.from_dict(state["config"])
    model = build_vit(cfg.model.replace(pretrained_path=None))
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in state[which].items() if k.startswith(prefix)}
    model.load_state_dict(weights)
    return cfg, model.eval(), {"step": int(state["step"])}


def timm_config(cfg: Config) -> dict[str, Any]:
    """What ``timm.create_model`` needs to build the backbone of a run again."""
    m = cfg.model
    model_args = {**shape_overrides(m), "img_size": m.img_size, "in_chans": m.in_chans}
    return {
        "architecture": m.arch,
        "num_classes": 0,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [m.in_chans, m.img_size, m.img_size],
            "mean": [cfg.views.mean] * m.in_chans,
            "std": [cfg.views.std] * m.in_chans,
            "num_classes": 0,
        },
    }


def export_backbone(run: str | Path, out: str | Path, which: str = "teacher") -> dict[str, Any]:
    """Write a run's backbone as ``model.safetensors`` with ``config.json`` and ``spanlib.yaml`` beside it.

    Args:
        run: a run directory holding ``checkpoint.pt``.
        out: the folder to write (created).
        which: ``"teacher"`` or ``"student"``.

    Returns:
        ``{"weights", "config", "step", "tensors", "parameters"}``.

    Raises:
        ValueError: the run's ViT has a stem timm does not know (``model.stem: conv``).
    """
    cfg, model, info = load_backbone(run, which)
    if cfg.model.stem != "patch":
        raise ValueError(f"{run}: its ViT has a {cfg.model.stem!r} stem (model.stem), which timm alone cannot build; "
                         "export writes timm-only backbones: load this one with spanlib.model.export.load_backbone")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "source": "spanlib", "which": which, "step": str(info["step"])})
    tmp.replace(out / WEIGHTS)
    config = {**timm_config(cfg), "spanlib": {"run": str(run), "regimen": cfg.regimen, "which": which, "step": info["step"]}}
    write_json(out / TIMM_CONFIG, config)
    (out / "spanlib.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return {
        "weights": str(out / WEIGHTS),
        "config": str(out / TIMM_CONFIG),
        "step": info["step"],
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
    }


def load_exported(folder: str | Path) -> torch.nn.Module:
    """Build an exported backbone with timm alone, from its ``config.json`` and ``model.safetensors``."""
    folder = Path(folder)
    config = json.loads((folder / TIMM_CONFIG).read_text(encoding="utf-8"))
    return timm.create_model(
        config["architecture"],
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay={"file": str(folder / WEIGHTS), "num_classes": 0},
        **config["model_args"],
    ).eval()

"""``book/reproducing.md``'s command sequence for the paper's experiment, run as written on small files.

The block is taken from the page itself, so the page cannot drift from what
works: its paths point at small sets written here in each real format
(CheXpert CSV + JPEG, JSRT raw ``.IMG`` + SCR GIF masks, Montgomery PNG), the
``smoke`` preset stands in for ``paper``, one process for ``torchrun`` and 64
pixels for 256; DINO's weights are a local checkpoint of the smoke model.
Each command runs through the command line's own entry point in this process.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spanlib.cli import main as cli_main
from spanlib.core.configs import resolve
from spanlib.data import CHEST_LABELS, ChestConfig, make_chest_phantom
from spanlib.model.vit import build_vit

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "book" / "reproducing.md"


def page_block() -> str:
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("## The paper's experiment"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _upsample(mask: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(mask.astype(np.uint8), np.ones((factor, factor), np.uint8)) * 255


def write_sets(root: Path) -> dict[str, Path]:
    config = ChestConfig(image_size=64)
    films = [make_chest_phantom(i, seed=5, config=config) for i in range(26)]
    # CheXpert: 18 training films, 8 in valid.csv
    chexpert = root / "CheXpert-v1.0-small"
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEST_LABELS]
    for csv_name, folder, chunk in (("train.csv", "train", films[:18]), ("valid.csv", "valid", films[18:])):
        chexpert.mkdir(parents=True, exist_ok=True)
        with (chexpert / csv_name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            for i, s in enumerate(chunk):
                rel = f"{folder}/patient{i:05d}/study1/view1_frontal.jpg"
                _save(chexpert / rel, (s.image * 255).astype(np.uint8), quality=95)
                writer.writerow({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": "Female", "Age": "70",
                                 "Frontal/Lateral": "Frontal", "AP/PA": "AP",
                                 **{n: f"{s.labels[n]:.1f}" for n in CHEST_LABELS}})
    # JSRT: 2048 x 2048 12-bit raw films (0 = white), SCR masks at 1024 in fold1 (train) and fold2 (test)
    jsrt, scr = root / "jsrt", root / "scr"
    (jsrt / "All247images").mkdir(parents=True)
    scr_names = {"left_lung": "left lung", "right_lung": "right lung", "heart": "heart"}
    for i, s in enumerate(films[:4]):
        key = f"JPC{'L' if i % 2 == 0 else 'N'}N{i + 1:03d}"
        raw = np.round((1 - np.kron(s.image, np.ones((32, 32), np.float32))) * 4095).astype(">u2")
        raw.tofile(jsrt / "All247images" / f"{key}.IMG")
        for organ, folder in scr_names.items():
            _save(scr / "scratch" / ("fold1" if i < 2 else "fold2") / "masks" / folder / f"{key}.gif",
                  _upsample(s.masks[organ], 16))
    # Montgomery: PNG films with left and right lung masks, all of them a test set
    montgomery = root / "MontgomerySet"
    for i, s in enumerate(films[4:8]):
        name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
        _save(montgomery / "CXR_png" / name, (s.image * 255).astype(np.uint8))
        _save(montgomery / "ManualMask" / "leftMask" / name, s.masks["left_lung"].astype(np.uint8) * 255)
        _save(montgomery / "ManualMask" / "rightMask" / name, s.masks["right_lung"].astype(np.uint8) * 255)
    # "DINO's ImageNet weights": a plain state dict of the smoke model, on local disk
    weights = root / "weights" / "dino_smoke.pth"
    weights.parent.mkdir()
    torch.manual_seed(1)
    torch.save(build_vit(resolve("smoke", "dino").model).state_dict(), weights)
    return {"CHEXPERT": chexpert, "JSRT": jsrt, "SCR": scr, "MONTGOMERY": montgomery, "DINO": weights,
            "WORK": root / "work"}


def commands(block: str, paths: dict[str, Path]) -> list[list[str]]:
    """The block's spanlib commands as argument lists, its variables set to ``paths``.

    Continuation lines are joined and ``$NAME`` expanded as bash would; every
    command must be ``python -m spanlib ...`` or ``torchrun ... -m spanlib ...``
    (anything else fails the test, so the page stays a plain sequence of verbs).
    The ``smoke`` preset stands in for ``paper`` and 64 pixels for 256.
    """
    env = {name: str(path) for name, path in paths.items()}
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        assignment = re.match(r"^([A-Z]+)=(\S+)$", line)
        if assignment:
            assert assignment.group(1) in env, f"the page sets {assignment.group(1)}, which the test does not provide"
            continue
        argv = shlex.split(re.sub(r"\$([A-Z]+)", lambda m: env[m.group(1)], line))
        if argv[:3] == ["python", "-m", "spanlib"]:
            argv = argv[3:]
        elif argv[0] == "torchrun" and "-m" in argv and argv[argv.index("-m") + 1] == "spanlib":
            argv = argv[argv.index("-m") + 2:]
        else:
            raise AssertionError(f"not a spanlib command: {line}")
        argv = ["smoke" if a == "paper" and argv[i - 1] == "--preset" else a for i, a in enumerate(argv)]
        argv = ["64" if a == "256" and argv[i - 1] == "--size" else a for i, a in enumerate(argv)]
        out.append(argv)
    return out


@pytest.mark.slow
def test_the_papers_command_sequence_runs_as_written(tmp_path: Path):
    block = page_block()
    assert "data import" in block and "--exemplar-from" in block and "--select-on" in block and "export" in block
    paths = write_sets(tmp_path)
    steps = commands(block, paths)
    assert [s[0] for s in steps] == ["data"] * 3 + ["templates"] + ["pretrain"] * 2 + ["evaluate"] * 5 + ["export"]
    for argv in steps:  # in this process: the same verbs and arguments, without an interpreter start per command
        assert cli_main(argv) == 0, argv
    work = paths["WORK"]
    assert json.loads((work / "chexpert" / "import-report.json").read_text())["written"] == 18
    maps = json.loads((work / "maps" / "deformable" / "report.json").read_text())
    assert maps["count"] == 18 and maps["exemplar"] == "JPCLN001"
    results = {p.stem: json.loads(p.read_text()) for p in (work / "results").glob("*.json")}
    assert set(results) == {"span-jsrt", "span-montgomery", "dino-jsrt", "dino-montgomery", "span-linear"}
    assert set(results["span-jsrt"]["attention"]) == {"heart", "left_lung", "right_lung"}
    assert set(results["span-montgomery"]["attention"]) == {"left_lung", "right_lung"}
    assert results["dino-jsrt"]["selection_set"].startswith("split 'train'")
    assert results["dino-jsrt"]["test_set"].startswith("split 'test'") and results["dino-jsrt"]["test_images"] == 2
    assert results["span-linear"]["test_set"].startswith("valid.csv") and results["span-linear"]["test_images"] == 8
    assert (work / "export" / "span_deformable" / "model.safetensors").is_file()
    config = (work / "runs" / "span_deformable" / "config.yaml").read_text()
    assert str(paths["DINO"]) in config

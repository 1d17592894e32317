"""The supervised ceiling: two networks trained with every label, on the view a frozen probe sees."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spanlib.core.configs import resolve
from spanlib.data import PartConfig, make_cast_part
from spanlib.data.sample import Sample
from spanlib.eval.ceiling import small_cnn, supervised_ceiling, train_supervised
from spanlib.book.readings import ceiling_reading


def _spots(n: int, seed: int) -> list[Sample]:
    """Noise images, half of them with a bright 6x6 square somewhere: a label any CNN learns."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        image = (0.3 + 0.05 * rng.standard_normal((32, 32))).astype(np.float32)
        spot = i % 2 == 1
        if spot:
            y, x = rng.integers(2, 24, 2)
            image[y:y + 6, x:x + 6] = 0.9
        samples.append(Sample(id=f"s{seed}_{i}", image=image, masks={}, labels={"defect": float(spot)}, split="train"))
    return samples


def test_small_cnn_maps_images_to_its_last_width():
    net = small_cnn(3, widths=(4, 8, 12))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 12)


def test_a_cnn_learns_a_visible_spot_and_the_result_is_cached(tmp_path):
    cfg = resolve("smoke", "dino_cxr")
    out = tmp_path / "ceiling.json"
    result = supervised_ceiling(cfg, _spots(96, 0), _spots(40, 1), "defect", epochs=8, out=out)
    assert set(result["auc"]) == {"vit", "vit_conv_stem", "cnn"} and result["train"] == 96 and result["img_size"] == cfg.model.img_size
    assert result["auc"]["cnn"] > 90.0  # the label is plainly in the images
    assert all(0.0 <= a <= 100.0 for a in result["auc"].values())
    stored = json.loads(out.read_text())
    assert stored["result"] == result
    # the same request is read back, not trained again; another request trains again
    stored["result"]["auc"]["cnn"] = -1.0
    out.write_text(json.dumps(stored))
    assert supervised_ceiling(cfg, _spots(96, 0), _spots(40, 1), "defect", epochs=8, out=out)["auc"]["cnn"] == -1.0
    assert supervised_ceiling(cfg, _spots(96, 0), _spots(40, 1), "defect", epochs=1, out=out)["auc"]["cnn"] != -1.0
    # a test set that differs in one image far down the list (the 60th) is another request
    supervised_ceiling(cfg, _spots(96, 0), _spots(60, 1), "defect", epochs=1, out=out)
    stored = json.loads(out.read_text())
    stored["result"]["auc"]["cnn"] = -1.0
    out.write_text(json.dumps(stored))
    other = _spots(60, 1)
    other[-1] = _spots(60, 2)[-1]
    assert supervised_ceiling(cfg, _spots(96, 0), other, "defect", epochs=1, out=out)["auc"]["cnn"] != -1.0


def test_training_is_seeded_and_labels_are_checked():
    x = torch.randn(16, 3, 16, 16)
    y = torch.tensor([0.0, 1.0] * 8)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)  # the same initial network twice
        runs.append(train_supervised(small_cnn(3, (4, 4, 4)), 4, x, y, x[:4], epochs=2, seed=3))
    assert runs[0].shape == (4,) and np.array_equal(runs[0], runs[1])
    torch.manual_seed(7)
    assert not np.array_equal(runs[0], train_supervised(small_cnn(3, (4, 4, 4)), 4, x, y, x[:4], epochs=2, seed=4))
    parts = [make_cast_part(i, 0, PartConfig(image_size=32)) for i in range(4)]
    unlabelled = [Sample(id="x", image=parts[0].image, masks={}, labels={}, split="train")]
    with pytest.raises(ValueError, match="carry no label 'defect'"):
        supervised_ceiling(resolve("smoke", "dino_cxr"), unlabelled, parts, "defect", epochs=1)
    one_class = [p for p in parts if p.labels["defect"] == parts[0].labels["defect"]]
    with pytest.raises(ValueError, match="one value of 'defect'"):
        supervised_ceiling(resolve("smoke", "dino_cxr"), parts, one_class, "defect", epochs=1)


def test_a_run_with_the_conv_stem_trains_no_twin(tmp_path):
    cfg = resolve("smoke", "dino_cxr", {"model.stem": "conv"})
    result = supervised_ceiling(cfg, _spots(24, 0), _spots(12, 1), "defect", epochs=1)
    assert set(result["auc"]) == {"vit", "cnn"} and result["stem"] == "conv"


@pytest.mark.parametrize(
    ("vit", "conv", "cnn", "probe", "says"),
    [
        (55.0, 54.0, 50.0, 52.0, "do not show it clearly enough"),
        (57.9, None, 91.0, 56.5, "does not learn them even with the labels"),
        (57.9, 60.0, 91.0, 56.5, "does not learn them even with the labels"),
        (57.6, 70.3, 90.2, 55.7, "the same transformer learns part of them"),
        (92.0, 93.0, 91.0, 56.5, "the self-supervised runs have not"),
        (92.0, None, 91.0, 80.0, "hold part of what the backbone can learn"),
    ],
)
def test_ceiling_reading_follows_the_numbers(vit, conv, cnn, probe, says):
    auc = {"vit": vit, "cnn": cnn} | ({} if conv is None else {"vit_conv_stem": conv})
    text = ceiling_reading({"auc": auc, "train": 800, "epochs": 30, "img_size": 64, "stem": "patch"}, probe)
    assert says in text and f"{cnn:.1f} AUC" in text and f"{probe:.1f} for the best frozen features" in text
    if conv is None:
        assert "the same ViT with a convolutional stem" not in text
    else:
        assert f"the same ViT with a convolutional stem {conv:.1f}" in text

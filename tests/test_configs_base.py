"""The one frozen-configuration base (spanlib.core.configs.FrozenConfig) and the presets read through it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from spanlib.attention_study.config import PRESETS, StudyConfig, StudyPreset, Variant, study_preset
from spanlib.byol.config import BYOL_PRESETS, BYOL_STUDIES, ByolConfig, ByolStudy, byol_config, byol_study
from spanlib.core.configs import (
    Config,
    FrozenConfig,
    OptimConfig,
    ViewConfig,
    load_config,
    merge,
    parse_override,
    parse_overrides,
    resolve,
    to_plain,
    unflatten,
)


@dataclass(frozen=True)
class Inner(FrozenConfig):
    size: int = 3
    scale: tuple[float, float] = (0.5, 1.0)


@dataclass(frozen=True)
class Outer(FrozenConfig):
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    widths: tuple[int, ...] = (1, 2)
    heads: dict[str, int] = field(default_factory=dict)
    items: tuple[Inner, ...] = ()
    limit: int | None = None


def test_to_dict_is_plain_nested_data():
    cfg = Outer(items=(Inner(size=1),), heads={"a": 0})
    data = cfg.to_dict()
    assert data == {"name": "x", "inner": {"size": 3, "scale": [0.5, 1.0]}, "widths": [1, 2], "heads": {"a": 0},
                    "items": [{"size": 1, "scale": [0.5, 1.0]}], "limit": None}
    assert json.loads(json.dumps(data)) == data
    assert to_plain((1, {"a": (2, 3)}, [Inner()])) == [1, {"a": [2, 3]}, [{"size": 3, "scale": [0.5, 1.0]}]]


def test_from_dict_round_trips_and_restores_tuples_and_sections():
    cfg = Outer(name="y", inner=Inner(size=5, scale=(0.1, 0.2)), widths=(4, 8, 16), items=(Inner(size=2),), limit=7)
    back = Outer.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.widths, tuple) and isinstance(back.inner, Inner) and isinstance(back.items[0], Inner)
    assert Outer.from_dict({}) == Outer()  # missing keys keep their defaults


def test_yaml_round_trip(tmp_path):
    cfg = Outer(inner=Inner(size=9), widths=(3,))
    path = tmp_path / "cfg.yaml"
    text = cfg.to_yaml(path)
    assert path.read_text() == text
    assert Outer.from_yaml(path) == cfg
    run = resolve("smoke", "span_global", {"run.seed": 4})
    run.to_yaml(tmp_path / "run.yaml")
    assert Config.from_yaml(tmp_path / "run.yaml") == run == load_config(tmp_path / "run.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Outer.from_yaml(tmp_path / "nope.yaml")


def test_unknown_keys_are_named_with_where_and_a_guess():
    with pytest.raises(ValueError, match=r"Outer\.inner: unknown Inner fields \['sise'\].*did you mean 'size'"):
        Outer.from_dict({"inner": {"sise": 1}})
    with pytest.raises(ValueError, match=r"somewhere: unknown Outer fields \['bogus'\]"):
        Outer.from_dict({"bogus": 1}, where="somewhere")
    with pytest.raises(ValueError, match=r"Outer\.inner: expected a mapping, got int"):
        Outer.from_dict({"inner": 3})
    with pytest.raises(ValueError, match=r"missing required ByolStudy fields \['ablation_k'\]"):
        ByolStudy.from_dict({"workers": 2})
    with pytest.raises(ValueError, match=r"unknown StudyConfig fields \['heads'\]"):
        StudyConfig().replace(heads=3)


def test_replace_keeps_frozen_and_validates():
    cfg = Outer()
    new = cfg.replace(name="z", widths=[5, 6])
    assert (new.name, new.widths) == ("z", (5, 6)) and cfg == Outer()
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.name = "w"  # type: ignore[misc]
    with pytest.raises(ValueError, match="pooling"):
        ByolConfig().replace(pooling="nope")
    assert cfg.replace() is cfg


def test_dotted_overrides():
    cfg = Outer()
    assert cfg.replace(**{"inner.size": 4}).inner == Inner(size=4)
    assert cfg.replace(inner={"size": 4}).inner == Inner(size=4)  # a section mapping is merged
    assert cfg.with_overrides(["inner.scale=[0.2, 0.3]", "limit=2"]) == Outer(inner=Inner(scale=(0.2, 0.3)), limit=2)
    assert cfg.with_overrides({"name": "q"}).name == "q"
    assert parse_overrides(["a.b=1e-3"]) == {"a.b": 1e-3} and parse_override("x=null") == ("x", None)
    assert unflatten({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}}
    run = resolve("smoke", "dino").replace(**{"optim.epochs": 3, "views.global_crop_scale": [0.3, 1.0]})
    assert run.optim == OptimConfig(**{**resolve("smoke", "dino").optim.__dict__, "epochs": 3})
    assert run.views.global_crop_scale == (0.3, 1.0) and isinstance(run.views, ViewConfig)


def test_every_config_uses_the_base():
    for cls in (Config, ByolConfig, ByolStudy, StudyConfig, Variant, StudyPreset):
        assert issubclass(cls, FrozenConfig) and cls.__dataclass_params__.frozen, cls
        for name in ("to_dict", "from_dict", "replace", "to_yaml", "from_yaml"):
            assert name not in vars(cls), (cls, name)  # one implementation, the base's


def test_byol_presets_are_the_pinned_values():
    assert list(BYOL_PRESETS) == ["smoke", "book", "paper"] and BYOL_PRESETS["book"] == {}
    assert byol_config("book") == ByolConfig()
    paper = byol_config("paper")
    assert (paper.image_size, paper.widths, paper.k, paper.optim.lr, paper.optim.weight_decay) == (128, (64, 128, 256, 512), 64,
                                                                                        1e-3, 1e-6)
    assert paper.crop_scale == (0.08, 1.0) and paper.blur_sigma == (0.1, 2.0) and paper.threads == 8
    assert BYOL_PRESETS["smoke"]["widths"] == (8, 16)  # the YAML list, as the config holds it
    assert byol_config("smoke", k=3, widths=[8, 16, 32]).widths == (8, 16, 32)
    assert byol_study("book") == ByolStudy(ablation_k=(2, 8, 32), workers=2, n_show=4, refine_batch=64)
    assert BYOL_STUDIES["paper"].ablation_k == (4, 16, 64)


def test_study_presets_are_the_pinned_values():
    assert list(PRESETS) == ["smoke", "book", "paper"]
    book = study_preset("book")
    assert book.base == StudyConfig() and (book.n_eval, book.n_show, book.monitor_every, book.n_monitor) == (
        200, 2, 20, 100)
    assert [v.name for v in book.variants] == ["untrained", "dino_same", "nce_same", "dino_digit", "nce_digit",
                                               "dino_digit_crops2", "dino_digit_crops4", "dino_digit_lowres",
                                               "dino_digit_bigpatch"]
    assert book.config("dino_digit_crops4").optim.batch_size == 8
    assert book.config("dino_digit_lowres").model.img_size == 32
    assert book.label("dino_digit_lowres") == "DINO, digit-only, 32 px input"
    assert book.comparisons["crops per branch"] == ("dino_digit", "dino_digit_crops2", "dino_digit_crops4")
    paper = study_preset("paper").base
    assert (paper.model.img_size, paper.model.embed_dim, paper.model.depth, paper.steps, paper.dino.out_dim,
            paper.optim.lr) == (112, 384, 12, 3000, 65536, 5e-4)
    assert paper.dino.use_bn_in_head is False and paper.dino.freeze_last_layer == 300
    smoke = study_preset("smoke")
    assert (smoke.base.model.embed_dim, smoke.base.steps, smoke.config("dino_digit_crops2").optim.batch_size) == (
        32, 2, 4)
    assert StudyPreset.from_dict(smoke.to_dict()) == smoke  # the whole preset round-trips


def test_bf16_autocast_only_where_it_is_native(monkeypatch):
    from spanlib.core import device

    assert device.bf16_fast("cuda") is True
    device.cpu_bf16_native.cache_clear()
    monkeypatch.setattr(device.Path, "read_text", lambda self: "flags : fpu sse avx2 fma")
    assert device.bf16_fast("cpu") is False
    device.cpu_bf16_native.cache_clear()
    monkeypatch.setattr(device.Path, "read_text", lambda self: "flags : fpu avx2 avx512f avx512_bf16")
    assert device.bf16_fast("cpu") is True
    device.cpu_bf16_native.cache_clear()

import pytest
import torch

from spanlib.core.configs import ModelConfig
from spanlib.model.vit import build_vit, cls_attention, explicit_attention, forward_with_attention, load_pretrained


def test_cls_attention_equals_explicit_softmax(tiny_model_cfg):
    model = build_vit(tiny_model_cfg).eval()
    x = torch.randn(3, 3, 32, 32)
    probe = cls_attention(model, x)
    assert probe.shape == (3, 6, 4, 4)
    with explicit_attention(model) as captured:
        model(x)
    assert len(captured) == 1, "the explicit path must run exactly once (last block only)"
    ref = captured[0][:, :, 0, model.num_prefix_tokens :].reshape(3, 6, 4, 4)
    torch.testing.assert_close(probe, ref, atol=1e-5, rtol=0)
    # CLS-to-CLS dropped: rows sum to one minus the CLS self-attention
    torch.testing.assert_close(probe.sum((-2, -1)), 1 - captured[0][:, :, 0, 0], atol=1e-5, rtol=0)


def test_fused_attention_stays_on_and_probe_sees_it(tiny_model_cfg):
    model = build_vit(tiny_model_cfg)
    fused_before = [b.attn.fused_attn for b in model.blocks]
    features, attention = forward_with_attention(model, torch.randn(2, 3, 32, 32))
    assert [b.attn.fused_attn for b in model.blocks] == fused_before
    assert attention.abs().sum() > 0 and torch.isfinite(attention).all()
    assert features.shape == (2, 48)


def test_cls_attention_is_differentiable(tiny_model_cfg):
    model = build_vit(tiny_model_cfg)
    a = cls_attention(model, torch.randn(2, 3, 32, 32))
    a[:, 0, 0, 0].sum().backward()
    assert model.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0


def test_probe_on_other_resolution(tiny_model_cfg):
    model = build_vit(tiny_model_cfg).eval()
    assert cls_attention(model, torch.randn(1, 3, 48, 40)).shape == (1, 6, 6, 5)


def test_load_pretrained_from_dino_style_checkpoint(tiny_model_cfg, tmp_path):
    source = build_vit(tiny_model_cfg)
    state = {"teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    state["teacher"]["head.mlp.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "dino.pth"
    torch.save(state, path)
    target = build_vit(tiny_model_cfg)
    load_pretrained(target, path)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    cfg = ModelConfig(**{**tiny_model_cfg.__dict__, "pretrained_path": str(path)})
    torch.testing.assert_close(build_vit(cfg).pos_embed, source.pos_embed)


def test_load_pretrained_errors_name_the_file(tiny_model_cfg, tmp_path):
    model = build_vit(tiny_model_cfg)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(model, tmp_path / "missing.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_pretrained(model, bad)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ValueError, match="other.pth"):
        load_pretrained(model, other)


def test_probe_reads_any_block(tiny_model_cfg):
    model = build_vit(tiny_model_cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with explicit_attention(model, block=0) as captured:
        model(x)
    ref = captured[0][:, :, 0, 1:].reshape(2, 6, 4, 4)
    torch.testing.assert_close(cls_attention(model, x, block=0), ref, atol=1e-5, rtol=0)


def test_conv_stem_keeps_the_token_grid_and_the_probe_sees_it(tiny_model_cfg):
    model = build_vit(tiny_model_cfg.replace(stem="conv")).eval()
    stem = model.patch_embed.proj
    strided = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3 and all(m.kernel_size == (3, 3) for m in strided)  # 8 = 2 ** 3
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in stem.modules())
    x = torch.randn(3, 3, 32, 32)
    probe = cls_attention(model, x)
    assert probe.shape == (3, 6, 4, 4)
    with explicit_attention(model) as captured:
        model(x)
    torch.testing.assert_close(probe, captured[0][:, :, 0, model.num_prefix_tokens:].reshape(3, 6, 4, 4),
                               atol=1e-5, rtol=0)
    assert cls_attention(model, torch.randn(1, 3, 48, 40)).shape == (1, 6, 6, 5)  # local crops of other sizes
    # a single image sees the same function as in a batch: nothing in the backbone depends on the batch
    torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=0)
    # its weights are the backbone's, saved and loaded as any other
    other = build_vit(tiny_model_cfg.replace(stem="conv"))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.eval()(x), model(x))


def test_unknown_stem_and_odd_patch_are_refused(tiny_model_cfg):
    with pytest.raises(ValueError, match="model.stem 'hybrid' unknown"):
        build_vit(tiny_model_cfg.replace(stem="hybrid"))
    with pytest.raises(ValueError, match="power-of-two patch"):
        build_vit(tiny_model_cfg.replace(stem="conv", patch_size=6, img_size=36))

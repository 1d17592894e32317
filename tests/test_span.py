import pytest
import torch

from spanlib.core.configs import ModelConfig
from spanlib.model.span import inside_share, maps_to_grid, span_loss
from spanlib.model.vit import build_vit, cls_attention


def _attention(inside: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One head, a 2x2 grid; map = left column; ``inside`` of the mass on it."""
    maps = torch.zeros(1, 1, 4, 4)
    maps[..., :2] = 1
    a = torch.tensor([[[[inside / 2, (1 - inside) / 2], [inside / 2, (1 - inside) / 2]]]])
    return a, maps


def test_maps_to_grid_is_patch_coverage():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, :3] = 1
    torch.testing.assert_close(maps_to_grid(maps, (2, 2))[0, 0], torch.tensor([[0.5, 0.25], [0.0, 0.0]]))


@pytest.mark.parametrize("renormalize", [True, False])
def test_signs_reward_inside_and_penalize_outside(renormalize):
    a_out, maps = _attention(0.2)
    a_in, _ = _attention(0.8)
    lo = span_loss(a_in, maps, [0], 1.0, 1.0, renormalize).loss
    hi = span_loss(a_out, maps, [0], 1.0, 1.0, renormalize).loss
    assert lo < hi, "attention inside the map must cost less than attention outside"
    # each term separately has the sign the paper's text describes
    inc = span_loss(a_in, maps, [0], 1.0, 0.0, renormalize).loss
    assert inc == pytest.approx(-0.8)
    exc = span_loss(a_in, maps, [0], 0.0, 1.0, renormalize).loss
    assert exc == pytest.approx(0.2)


def test_gradient_descent_moves_attention_into_the_map():
    torch.manual_seed(0)
    model = build_vit(ModelConfig(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=6, drop_path_rate=0.0))
    x = torch.randn(4, 3, 32, 32)
    maps = torch.zeros(4, 3, 32, 32)
    maps[..., :12] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = inside_share(cls_attention(model, x), maps, [0, 1, 2]).mean()
    for _ in range(20):
        terms = span_loss(cls_attention(model, x), maps, [0, 1, 2], 1.0, 1.0)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    after = inside_share(cls_attention(model, x), maps, [0, 1, 2]).mean()
    assert after > before + 0.2


def test_raw_row_can_escape_to_cls():
    """On the raw row the exclusion term falls when attention leaves the patches."""
    a, maps = _attention(0.3)
    escaped = a * 0.1  # 90% of the mass moved to the CLS token, same share inside
    raw = span_loss(escaped, maps, [0], 1.0, 1.0, renormalize=False).loss
    assert raw < span_loss(a, maps, [0], 1.0, 1.0, renormalize=False).loss
    assert span_loss(escaped, maps, [0], 1.0, 1.0).loss == pytest.approx(span_loss(a, maps, [0], 1.0, 1.0).loss)


def test_only_assigned_heads_are_constrained():
    a = torch.rand(2, 6, 4, 4, requires_grad=True)
    maps = torch.rand(2, 2, 32, 32)
    span_loss(a, maps, [1, 4], 1.0, 1.0).loss.backward()
    touched = a.grad.abs().sum(dim=(0, 2, 3)) > 0
    assert touched.tolist() == [False, True, False, False, True, False]


def test_shape_errors():
    with pytest.raises(ValueError, match="2 knowledge maps for 3"):
        span_loss(torch.rand(1, 6, 2, 2), torch.rand(1, 2, 8, 8), [0, 1, 2], 1, 1)

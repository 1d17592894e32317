import pytest
import torch

from spanlib.core.configs import ModelConfig
from spanlib.model.span import coverage_loss, inside_share, maps_to_grid, span_loss
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


# ---------------------------------------------------------------- the coverage term (an extension)


def _soft_map(seed: int = 0) -> torch.Tensor:
    """A map with every patch partly covered, ``[1, 1, 8, 8]`` on a 4x4 grid: the target has full support."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, 8, 8, generator=g) < 0.6).float().clamp_min(0.05)


def test_the_coverage_terms_gradient_vanishes_at_the_normalised_map():
    maps = _soft_map()
    target = maps_to_grid(maps, (4, 4))
    target = target / target.sum()
    for scale in (1.0, 0.3):  # the CLS row need not sum to one over the patches
        a = (scale * target).clone().requires_grad_(True)
        terms = coverage_loss(a, maps, [0], 2.0)
        terms.loss.backward()
        assert terms.loss.item() == pytest.approx(0.0, abs=1e-6)
        assert a.grad.abs().max().item() < 1e-5
    # and through the attention's logits (a softmax over CLS and patches), as training sees it
    logits = torch.log(torch.cat([torch.tensor([0.5]), 0.5 * target.flatten()])).requires_grad_(True)
    a = torch.softmax(logits, 0)[1:].view(1, 1, 4, 4)
    coverage_loss(a, maps, [0], 1.0).loss.backward()
    assert logits.grad.abs().max().item() < 1e-6


def test_the_coverage_term_is_lowest_at_the_map_and_the_papers_terms_are_not():
    """A head piled on the map's best patch satisfies the paper's terms as well as one that covers the map;
    the coverage term prefers covering."""
    maps = torch.zeros(1, 1, 8, 8)
    maps[..., :, :4] = 1  # left half of the film
    target = maps_to_grid(maps, (4, 4))
    covering = target / target.sum()
    piled = torch.zeros(1, 1, 4, 4)
    piled[0, 0, 0, 0] = 1.0
    for a in (covering, piled):
        assert span_loss(a, maps, [0], 1.0, 1.0).loss.item() == pytest.approx(-1.0)
    assert coverage_loss(covering, maps, [0], 1.0).loss < coverage_loss(piled, maps, [0], 1.0).loss - 1.0
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        other = (covering + 0.2 * torch.rand(1, 1, 4, 4, generator=g))
        assert coverage_loss(other, maps, [0], 1.0).loss > coverage_loss(covering, maps, [0], 1.0).loss


def test_gradient_descent_on_the_coverage_term_spreads_attention_over_the_map():
    torch.manual_seed(0)
    model = build_vit(ModelConfig(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                                  num_heads=6, drop_path_rate=0.0))
    x = torch.randn(4, 3, 32, 32)
    maps = torch.zeros(4, 3, 32, 32)
    maps[..., :12] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = coverage_loss(cls_attention(model, x), maps, [0, 1, 2], 1.0)
    for _ in range(20):
        terms = coverage_loss(cls_attention(model, x), maps, [0, 1, 2], 1.0)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    last = coverage_loss(cls_attention(model, x), maps, [0, 1, 2], 1.0)
    assert last.loss < 0.5 * first.loss
    assert last.inside_share > first.inside_share + 0.2


def test_a_view_without_its_map_adds_no_coverage_term():
    a = torch.rand(2, 6, 4, 4, requires_grad=True)
    maps = torch.rand(2, 2, 32, 32)
    maps[1, 0] = 0  # the crop of image 1 holds none of organ 0
    terms = coverage_loss(a, maps, [1, 4], 1.0)
    assert torch.isfinite(terms.loss)
    terms.loss.backward()
    assert a.grad[1, 1].abs().sum() == 0 and a.grad[0, 1].abs().sum() > 0
    assert a.grad[:, [0, 2, 3, 5]].abs().sum() == 0


def test_the_config_picks_the_papers_terms_the_coverage_term_or_both():
    from spanlib.core.configs import SpanConfig
    from spanlib.model.span import span_terms, uses_span

    a, maps = torch.rand(2, 6, 4, 4), torch.rand(2, 2, 32, 32)
    heads = {"left_lung": 1, "heart": 4}
    paper = SpanConfig(assigned_heads=heads, lambda_inclusion=3.0, lambda_exclusion=2.0)
    coverage = SpanConfig(assigned_heads=heads, lambda_coverage=5.0)
    both = SpanConfig(assigned_heads=heads, lambda_inclusion=3.0, lambda_exclusion=2.0, lambda_coverage=5.0)
    assert span_terms(a, maps, [1, 4], paper).loss == span_loss(a, maps, [1, 4], 3.0, 2.0).loss
    assert span_terms(a, maps, [1, 4], coverage).loss == coverage_loss(a, maps, [1, 4], 5.0).loss
    assert span_terms(a, maps, [1, 4], both).loss.item() == pytest.approx(
        (span_loss(a, maps, [1, 4], 3.0, 2.0).loss + coverage_loss(a, maps, [1, 4], 5.0).loss).item())
    assert [uses_span(c) for c in (paper, coverage, both, SpanConfig(), SpanConfig(lambda_coverage=1.0))] == [
        True, True, True, False, False]

"""The ViT backbone (timm) and the attention probe.

``cls_attention`` reads the last block's attention of the CLS query over the
patch tokens, per head. timm's fused attention never materialises the
attention matrix, so a hook on the attention module would see nothing;
instead we capture the last block's ``qkv`` projection (which both paths
compute) and form the one softmax row we need, ``softmax(q_cls k^T / sqrt(d))``.
Every block keeps the fused kernel; the extra cost is one ``[heads, 1, N]``
row. The result is differentiable and equals the explicit attention of the
same block (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from spanlib.core.configs import ModelConfig


SHAPE_FIELDS = ("patch_size", "embed_dim", "depth", "num_heads")
"""ModelConfig fields that override the timm architecture's own shape when set."""


def shape_overrides(cfg: ModelConfig) -> dict[str, int]:
    """The keyword arguments of ``timm.create_model`` that give the backbone the configured shape."""
    return {k: getattr(cfg, k) for k in SHAPE_FIELDS if getattr(cfg, k) is not None}


STEMS = ("patch", "conv")
"""The token stems :func:`build_vit` knows (``ModelConfig.stem``)."""


class ConvStem(PatchEmbed):
    """A convolutional stem in place of ViT's patchify convolution (Xiao et al. 2021).

    ``log2(patch)`` 3x3 convolutions of stride 2, each with group norm and
    GELU, channels doubling up to the embedding width, then a 1x1 projection:
    the same token grid as a ``patch`` x ``patch`` patchify, so attention maps,
    knowledge maps and every probe keep their shapes. On little data it gives
    the tokens local detectors that a patchify stem must learn from scratch
    (benchmarks/start.md: the cast parts). Group norm rather than batch norm:
    nothing in the backbone depends on the batch, so teacher, student and a
    single evaluation image see the same function.

    Raises:
        ValueError: a patch size that is not a power of two.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        patch = self.patch_size[0]
        if patch != self.patch_size[1] or patch < 2 or patch & (patch - 1):
            raise ValueError(f"the conv stem needs a square power-of-two patch, got {self.patch_size}")
        stages = patch.bit_length() - 1
        in_chans, embed_dim = self.proj.in_channels, self.proj.out_channels
        width = max(embed_dim >> (stages - 1), 16)
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(min(8, width // 4), width), nn.GELU()]
            in_chans, width = width, min(2 * width, embed_dim)
        layers.append(nn.Conv2d(in_chans, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


def build_vit(cfg: ModelConfig) -> VisionTransformer:
    """Create the backbone: a timm ViT without classifier (``num_classes=0``).

    Args:
        cfg: model configuration; ``None`` fields keep the timm defaults.

    Returns:
        The ViT, with ``dynamic_img_size`` so local crops of another size work.
    """
    overrides = shape_overrides(cfg)
    if cfg.stem not in STEMS:
        raise ValueError(f"model.stem {cfg.stem!r} unknown; known: {', '.join(STEMS)}")
    if cfg.stem == "conv":
        overrides["embed_layer"] = ConvStem
    model = timm.create_model(
        cfg.arch,
        pretrained=False,
        num_classes=0,
        img_size=cfg.img_size,
        in_chans=cfg.in_chans,
        drop_path_rate=cfg.drop_path_rate,
        dynamic_img_size=True,
        **overrides,
    )
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{cfg.arch}: spanlib needs a timm VisionTransformer, got {type(model).__name__}")
    if cfg.pretrained_path:
        load_pretrained(model, cfg.pretrained_path)
    return model


def load_pretrained(model: VisionTransformer, path: str | Path) -> dict[str, list[str]]:
    """Initialise ``model`` from a local checkpoint (never downloaded).

    Accepts a plain timm/DINO state dict, DINO's training checkpoint
    (``{"teacher": ..., "student": ...}``; the teacher is used, as DINO
    publishes it) or a spanlib checkpoint; ``module.`` and ``backbone.``
    prefixes are stripped and position embeddings resized by timm's filter.

    Returns:
        ``{"missing": [...], "unexpected": [...]}`` keys of the load.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no usable ViT weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot read as a torch checkpoint ({exc})") from exc
    for key in ("teacher", "state_dict", "model", "student"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("head."):
            continue  # DINO projection head or a classifier: not part of the backbone
        cleaned[key] = value
    try:
        cleaned = checkpoint_filter_fn(cleaned, model)
        result = model.load_state_dict(cleaned, strict=False)
    except (RuntimeError, KeyError, ValueError) as exc:  # shapes of another architecture
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise ValueError(f"{path}: its weights do not fit this {type(model).__name__} "
                         f"(embed_dim {model.embed_dim}, {len(model.blocks)} blocks): {detail}") from exc
    backbone_keys = set(model.state_dict())
    loaded = backbone_keys - set(result.missing_keys)
    if not loaded:
        raise ValueError(f"{path}: no key matches the {type(model).__name__} backbone "
                         f"(found keys such as {sorted(cleaned)[:4]}; expected cls_token, pos_embed, "
                         "patch_embed.proj.weight, blocks.0.attn.qkv.weight, ...)")
    if result.missing_keys:
        raise ValueError(f"{path}: checkpoint lacks backbone weights {result.missing_keys[:5]}...")
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def patch_grid(model: VisionTransformer, height: int, width: int) -> tuple[int, int]:
    """The token grid for an input of ``height`` x ``width`` pixels."""
    ph, pw = model.patch_embed.patch_size
    return height // ph, width // pw


class AttentionProbe:
    """Captures one block's qkv projection during a normal forward pass.

    Use as a context manager around the forward, then call :meth:`attention`.

    Args:
        model: the ViT.
        block: which block to read (default: the last, as SPAN does).
    """

    def __init__(self, model: VisionTransformer, block: int = -1):
        self.model = model
        self.attn = model.blocks[block].attn
        self._qkv: torch.Tensor | None = None
        self._handle = None

    def __enter__(self) -> "AttentionProbe":
        self._qkv = None
        self._handle = self.attn.qkv.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._qkv = output

    def attention(self, grid: tuple[int, int]) -> torch.Tensor:
        """CLS-query attention over patch tokens: ``[B, heads, gh, gw]``.

        Raises:
            RuntimeError: no forward pass went through the last block.
        """
        if self._qkv is None:
            raise RuntimeError("attention probe saw no forward pass of the last block")
        attn = self.attn
        qkv = self._qkv
        batch, tokens, _ = qkv.shape
        qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])
        logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # [B, H, 1, N]
        weights = logits.softmax(dim=-1)[:, :, 0, self.model.num_prefix_tokens:]
        gh, gw = grid
        if weights.shape[-1] != gh * gw:
            raise RuntimeError(f"attention has {weights.shape[-1]} patch tokens, expected a {gh}x{gw} grid")
        return weights.reshape(batch, attn.num_heads, gh, gw)


def forward_with_attention(
    model: VisionTransformer, images: torch.Tensor, block: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass returning the pooled features and the CLS attention.

    Returns:
        ``(features [B, D], attention [B, heads, gh, gw])`` of ``block``.
    """
    with AttentionProbe(model, block) as probe:
        features = model(images)
    return features, probe.attention(patch_grid(model, *images.shape[-2:]))


def cls_attention(model: VisionTransformer, images: torch.Tensor, block: int = -1) -> torch.Tensor:
    """A block's CLS-query attention over patches, per head (the last by default).

    Args:
        model: a timm ViT.
        images: ``[B, C, H, W]``.
        block: index into ``model.blocks``.

    Returns:
        ``[B, heads, H / patch, W / patch]``, differentiable; CLS-to-CLS (and
        any register tokens) excluded, so a head's row sums to one minus its
        attention to the prefix tokens.
    """
    return forward_with_attention(model, images, block)[1]


@contextmanager
def explicit_attention(model: VisionTransformer, block: int = -1) -> Iterator[list[torch.Tensor]]:
    """Reference path for tests: unfuse one block and record its softmax matrix."""
    attn = model.blocks[block].attn
    saved = attn.fused_attn
    captured: list[torch.Tensor] = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o))
    attn.fused_attn = False
    try:
        yield captured
    finally:
        attn.fused_attn = saved
        handle.remove()

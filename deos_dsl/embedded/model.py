"""A small LLaVA-style VQA model in plain PyTorch.

``pixels [B,3,96,96]`` -> ``model.vision`` (8x8 patch ViT: CLS + 144 patch tokens, learned
positions, pre-norm blocks) -> ``model.projector`` (2-layer MLP on the 144 patch tokens, CLS
excluded) -> ``model.decoder`` (causal pre-norm transformer over ``[visual tokens; question
tokens]``) -> ``model.head`` (answer logits read from the LAST token, always the "?" token).

Every block's ``forward`` takes and returns exactly the residual stream ``x [B, N, D]`` and
reads its sizes from ``x``, so tokens may be dropped between blocks.  No data-dependent
control flow: the model traces with ``torch.fx.symbolic_trace`` and ``torch.export``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import vqa


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of :class:`EmbeddedVQAModel` (defaults: the shipped model)."""

    image_size: int = vqa.IMAGE_SIZE
    patch_size: int = 8
    vision_dim: int = 128
    vision_layers: int = 4
    decoder_dim: int = 128
    decoder_layers: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    question_len: int = vqa.QUESTION_LEN
    vocab_size: int = len(vqa.QUESTION_WORDS)
    n_answers: int = len(vqa.ANSWERS)

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def n_visual(self) -> int:
        """Number of visual (patch) tokens."""
        return self.grid * self.grid

    def to_dict(self) -> dict[str, int]:
        """JSON-able field dict (inverse: ``ModelConfig(**d)``)."""
        return asdict(self)


def grid_sincos(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding ``[grid * grid, dim]`` (row-major), used to initialise the
    learned positions of visual tokens: half the channels encode the row, half the column."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)[:, None] * freqs  # [grid, quarter]
    enc = torch.cat([coords.sin(), coords.cos()], dim=1)  # [grid, dim / 2]
    rows = enc[:, None, :].expand(grid, grid, -1)
    cols = enc[None, :, :].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv and ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D] -> [B, N, D]``."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual stream ``x [B, N, D] -> [B, N, D]``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    """Patch ViT: conv patch embedding, CLS token, learned positions, pre-norm blocks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.vision_dim
        self.patch_embed = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        cls_pos = torch.zeros(1, d)
        self.pos = nn.Parameter(torch.cat([cls_pos, grid_sincos(cfg.grid, d)])[None])
        self.layers = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, causal=False)
                                    for _ in range(cfg.vision_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels [B, 3, H, W] -> [B, 1 + n_visual, Dv]`` (CLS first, patches row-major)."""
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class Projector(nn.Module):
    """2-layer MLP from vision width to decoder width."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, Dv] -> [B, N, D]``."""
        return self.fc2(F.gelu(self.fc1(x)))


class Decoder(nn.Module):
    """Causal pre-norm decoder over ``[visual tokens; question tokens]`` with learned positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.decoder_dim
        self.n_visual = cfg.n_visual
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        text_pos = 0.02 * torch.randn(cfg.question_len, d)
        self.pos = nn.Parameter(torch.cat([grid_sincos(cfg.grid, d), text_pos]))
        self.layers = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, causal=True)
                                    for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)

    def embed(self, visual: torch.Tensor, question: torch.Tensor,
              visual_index: torch.Tensor | None = None) -> torch.Tensor:
        """Input sequence ``[B, Nv + T, D]``: visual tokens ``[B, Nv, D]`` and question ids ``[B, T]``
        plus their positions; ``visual_index [Nv]`` gives the grid positions of a reduced visual
        set (default: all ``n_visual`` in order)."""
        vis_pos = self.pos[: self.n_visual] if visual_index is None else self.pos[visual_index]
        text = self.embed_tokens(question) + self.pos[self.n_visual:]
        return torch.cat([visual + vis_pos, text], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedded sequence ``[B, N, D] -> `` final-normed hidden states ``[B, N, D]``."""
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class EmbeddedVQAModel(nn.Module):
    """LLaVA-style VQA model: ``forward(pixels [B,3,96,96], question [B,T] long) -> logits [B, A]``."""

    def __init__(self, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.vision = VisionEncoder(cfg)
        self.projector = Projector(cfg.vision_dim, cfg.decoder_dim)
        self.decoder = Decoder(cfg)
        self.head = nn.Linear(cfg.decoder_dim, cfg.n_answers)

    @property
    def visual_span(self) -> tuple[int, int]:
        """``(start, end)`` of the visual tokens in the decoder sequence."""
        return (0, self.config.n_visual)

    @property
    def vision_grid(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` of the visual tokens (row-major in the sequence)."""
        return (self.config.grid, self.config.grid)

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens ``[B, n_visual, D]`` (CLS dropped, as LLaVA does)."""
        return self.projector(self.vision(pixels)[:, 1:])

    def answer(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder input ``[B, N, D] -> `` answer logits ``[B, A]`` from the last token."""
        return self.head(self.decoder(x)[:, -1])

    def forward(self, pixels: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """``pixels [B, 3, H, W]`` float, ``question [B, T]`` long ``-> logits [B, n_answers]``."""
        return self.answer(self.decoder.embed(self.visual_tokens(pixels), question))

"""Networks over token sequences (:mod:`sdeflow.discrete`): ``net(x, c, label=None) -> (B, L, vocab)`` logits of
the clean-token posterior ``p(x0^l | x_t)`` for noised tokens ``x`` (``(B, L)`` long, values ``0..states-1``;
``states = vocab + 1`` with the mask token ``vocab`` when ``mask=True``) at time input ``c`` (``(B,)``).

- :class:`TokenTransformer`: a pre-norm transformer over the positions, learned position embeddings, the
  time (and class) embedding applied to every block by adaptive layer norm (shift, scale and a gate that
  starts at zero, so each block starts as the identity);
- :class:`TokenUNet`: the token embeddings laid out on a square grid (``length = side^2``, e.g. 64 tokens of
  an 8x8 image) and refined by sdeflow's :class:`~sdeflow.models.unet.UNet`, then read out per position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import TimeEmbedding
from .unet import UNet


class Block(nn.Module):
    """Self-attention and an MLP, each behind a layer norm modulated by the embedding and a gated residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(emb)[:, None].chunk(6, dim=-1)
        a = self.norm1(h) * (1 + scale1) + shift1
        q, k, v = self.qkv(a).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = h + gate1 * self.proj(a)
        return h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class TokenTransformer(nn.Module):
    """A small transformer over ``length`` tokens.

    Args:
        vocab: clean tokens (the output's size); mask: the input also takes the mask token ``vocab``.
        length: positions; dim, depth, heads: width, blocks and attention heads; dropout: in the MLPs.
        num_classes: > 0 adds a class embedding (label ``num_classes`` is "no label": classifier-free guidance).
        time_scale: scale of the time input (see :class:`~sdeflow.models.embedding.TimeEmbedding`).
    """

    def __init__(self, vocab: int = 17, length: int = 64, mask: bool = True, dim: int = 128, depth: int = 4,
                 heads: int = 4, dropout: float = 0.0, num_classes: int = 0, time_scale: float = 1000.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.config = dict(vocab=vocab, length=length, mask=mask, dim=dim, depth=depth, heads=heads, dropout=dropout,
                           num_classes=num_classes, time_scale=time_scale)
        self.tokens = nn.Embedding(vocab + int(mask), dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.embed = TimeEmbedding(dim, time_scale, num_classes)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, vocab)
        for layer in (self.mod, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(x, self.config)
        emb = F.silu(self.embed(c, label))
        h = self.tokens(x) + self.position
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.mod(emb)[:, None].chunk(2, dim=-1)
        return self.head(self.norm(h) * (1 + scale) + shift)


class TokenUNet(nn.Module):
    """Token embeddings (``embed`` channels) on a ``side x side`` grid, ``side = sqrt(length)``, refined by a
    :class:`~sdeflow.models.unet.UNet` (``base``, ``mults``, ``attention``, ``dropout`` as there) with a
    residual connection, then a per-position linear read-out to the ``vocab`` logits."""

    def __init__(self, vocab: int = 17, length: int = 64, mask: bool = True, embed: int = 32, base: int = 32,
                 mults=(1, 2), attention=(1,), dropout: float = 0.0, num_classes: int = 0, time_scale: float = 1000.0):
        super().__init__()
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"the token UNet lays the tokens out on a square: length {length} is not a square number")
        self.side = side
        self.config = dict(vocab=vocab, length=length, mask=mask, embed=embed, base=base, mults=list(mults),
                           attention=list(attention), dropout=dropout, num_classes=num_classes, time_scale=time_scale)
        self.tokens = nn.Embedding(vocab + int(mask), embed)
        self.unet = UNet(channels=embed, size=side, base=base, mults=mults, attention=attention, dropout=dropout,
                         num_classes=num_classes, time_scale=time_scale)
        self.head = nn.Linear(embed, vocab)

    def forward(self, x: torch.Tensor, c: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(x, self.config)
        b = x.shape[0]
        h = self.tokens(x).transpose(1, 2).reshape(b, -1, self.side, self.side)
        h = h + self.unet(h, c, label)
        return self.head(h.reshape(b, h.shape[1], -1).transpose(1, 2))


def check_tokens(x: torch.Tensor, config: dict) -> None:
    """Refuse input that is not ``(B, length)`` integer tokens (the values are checked where sampling starts,
    :func:`sdeflow.discrete.samplers.check_start`, not here: that would wait on the device every step)."""
    if x.dtype not in (torch.int64, torch.int32) or x.ndim != 2 or x.shape[1] != config["length"]:
        raise ValueError(f"a token network takes (batch, {config['length']}) integer tokens, got {tuple(x.shape)} "
                         f"{x.dtype}")

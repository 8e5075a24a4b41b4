"""A compact UNet for small images (8x8 to 64x64), optionally class-conditional."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .embedding import TimeEmbedding, with_source


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4) or 1, ch)


class ResBlock(nn.Module):
    """``x + conv(drop(SiLU(GN(h) (1 + a) + b)))`` with ``h = conv(SiLU(GN(x)))`` and ``(a, b)`` from
    the embedding; the last convolution starts at zero so each block starts as the identity."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.mod = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        a, b = self.mod(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(self.drop(F.silu(self.norm2(h) * (1 + a) + b)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over pixels, residual, zero-initialised output."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.heads, self.norm = heads, group_norm(ch)
        self.qkv, self.proj = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Encoder-decoder with skip connections: per level ``blocks`` residual blocks, a stride-2
    convolution down / nearest-neighbour upsampling + convolution up, self-attention at the levels in
    ``attention`` (level 0 is full resolution) and in the middle.

    Args:
        channels: image channels; size: image side (must be divisible by ``2^(len(mults)-1)``).
        base, mults: channels per level ``base * mults[k]``.
        blocks: residual blocks per level; dropout: inside the blocks.
        num_classes: > 0 adds a class embedding; label ``num_classes`` is "no label" (label dropout).
        time_scale: scale of the time input (see :class:`TimeEmbedding`).
        jump: also take the gap ``t - s`` of a flow-map jump (``forward(x, c, gap=...)``).
        source: also take a source image of the same shape (``forward(x, c, source=...)``), concatenated
            to the input's channels: the network of a bridge pinned at that source (:mod:`sdeflow.bridges`).
    """

    def __init__(self, channels: int = 3, size: int = 32, base: int = 64, mults=(1, 2, 2), blocks: int = 2,
                 attention=(), heads: int = 4, dropout: float = 0.1, num_classes: int = 0, time_scale: float = 1000.0,
                 jump: bool = False, source: bool = False):
        super().__init__()
        mults, attention = tuple(mults), tuple(attention)
        if size % 2 ** (len(mults) - 1):
            raise ValueError(f"image size {size} is not divisible by 2^{len(mults) - 1} (levels {mults})")
        self.config = dict(channels=channels, size=size, base=base, mults=list(mults), blocks=blocks,
                           attention=list(attention), heads=heads, dropout=dropout, num_classes=num_classes,
                           time_scale=time_scale)
        if jump:
            self.config["jump"] = True
        if source:
            self.config["source"] = True
        emb = 4 * base
        self.embed = TimeEmbedding(emb, time_scale, num_classes, freq_dim=base, jump=jump)
        self.inp = nn.Conv2d(2 * channels if source else channels, base, 3, padding=1)
        self.down, skips, ch = nn.ModuleList(), [base], base
        for level, m in enumerate(mults):
            for _ in range(blocks):
                layer = nn.ModuleList([ResBlock(ch, base * m, emb, dropout)])
                ch = base * m
                if level in attention:
                    layer.append(Attention(ch, heads))
                self.down.append(layer)
                skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, dropout), Attention(ch, heads), ResBlock(ch, ch, emb, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                layer = nn.ModuleList([ResBlock(ch + skips.pop(), base * m, emb, dropout)])
                ch = base * m
                if level in attention:
                    layer.append(Attention(ch, heads))
                self.up.append(layer)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layer, h, emb):
        for m in layer:
            h = m(h, emb) if isinstance(m, (ResBlock, Attention)) else m(h)
        return h

    def forward(self, x: torch.Tensor, c: torch.Tensor, label: torch.Tensor | None = None,
                gap: torch.Tensor | None = None, source: torch.Tensor | None = None) -> torch.Tensor:
        emb = F.silu(self.embed(c, label, gap))
        h = self.inp(with_source(x, source, self.config.get("source", False)))
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layer, h, emb)
        return self.out(h)

"""An MLP with a time embedding, for low-dimensional data (the 2-D toys, tabular arrays)."""

from __future__ import annotations

import torch
from torch import nn

from .embedding import TimeEmbedding, with_source


class MLP(nn.Module):
    """``F(x, c) = out(h_L)``, ``h_{k+1} = h_k + Linear(SiLU(N(h_k) * (1 + a_k) + b_k))``: residual
    blocks whose input is modulated by the time (and label) embedding. ``N`` is the identity, or a
    LayerNorm with ``norm=True`` (which divides out the input's scale: poor for low-dimensional
    data, where the scale is information).

    Args:
        dim: data dimension (inputs are flattened ``(B, dim)``).
        width, depth: hidden width and number of residual blocks.
        num_classes: > 0 adds a class embedding (label dropout index ``num_classes``).
        norm: LayerNorm at the input of each block.
        time_scale: scale of the time input for the sinusoidal features (see :class:`TimeEmbedding`).
        jump: also take the gap ``t - s`` of a flow-map jump (``forward(x, c, gap=...)``).
        source: also take a source of the same shape (``forward(x, c, source=...)``), concatenated to the
            input: the network of a bridge pinned at that source (:mod:`sdeflow.bridges`).
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 4, num_classes: int = 0, time_scale: float = 1000.0,
                 norm: bool = False, jump: bool = False, source: bool = False):
        super().__init__()
        self.config = dict(dim=dim, width=width, depth=depth, num_classes=num_classes, time_scale=time_scale, norm=norm)
        if jump:
            self.config["jump"] = True
        if source:
            self.config["source"] = True
        self.norms = nn.ModuleList((nn.LayerNorm(width, elementwise_affine=False) if norm else nn.Identity())
                                   for _ in range(depth))
        self.embed = TimeEmbedding(width, time_scale, num_classes, jump=jump)
        self.inp = nn.Linear(2 * dim if source else dim, width)
        self.mods = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, label: torch.Tensor | None = None,
                gap: torch.Tensor | None = None, source: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        emb = nn.functional.silu(self.embed(c, label, gap))
        h = self.inp(with_source(x, source, self.config.get("source", False)).reshape(shape[0], -1))
        for norm, mod, layer in zip(self.norms, self.mods, self.layers):
            a, b = mod(emb).chunk(2, dim=1)
            h = h + layer(nn.functional.silu(norm(h) * (1 + a) + b))
        return self.out(h).reshape(shape)

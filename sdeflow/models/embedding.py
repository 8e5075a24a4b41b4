"""Time and label embeddings shared by the reference networks."""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEmbedding(nn.Module):
    """``c -> MLP([sin(w_k s c), cos(w_k s c)])`` with log-spaced frequencies ``w_k`` in [1, 1e4^-1]
    (transformer positional features) and input scale ``s``, plus an optional class embedding added
    to it. Class ``num_classes`` is the "no label" class used for label dropout (classifier-free
    guidance); ``label=None`` means no label for the whole batch.

    The time input ``c`` may live on any scale: ``t`` in [0, 1] wants ``scale=1000``, EDM's
    ``c_noise`` or a logSNR ``scale`` of about 100 (the default of the trainer picks it from the
    time input).

    ``jump=True`` (flow maps, :class:`~sdeflow.denoisers.FlowMapDenoiser`) adds the features of a
    second input, the gap ``t - s`` in [0, 1] between a jump's start and target times, through an
    MLP of its own whose last layer starts at zero: a jump network initialised from a denoiser's
    weights starts as that denoiser (``gap=None`` is a gap of 0, the instantaneous field)."""

    def __init__(self, dim: int, scale: float = 1000.0, num_classes: int = 0, freq_dim: int | None = None,
                 jump: bool = False):
        super().__init__()
        self.dim, self.scale, self.num_classes = dim, float(scale), int(num_classes)
        self.freq_dim = freq_dim or dim
        half = self.freq_dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(half) / half), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(self.num_classes + 1, dim) if self.num_classes else None
        self.gap = None
        if jump:
            self.gap = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))
            nn.init.zeros_(self.gap[-1].weight)
            nn.init.zeros_(self.gap[-1].bias)

    def _features(self, c: torch.Tensor, scale: float) -> torch.Tensor:
        arg = (scale * c.float())[:, None] * self.freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(self.mlp[0].weight.dtype)

    def forward(self, c: torch.Tensor, label: torch.Tensor | None = None, gap: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.mlp(self._features(c, self.scale))
        if self.gap is not None:
            gap = torch.zeros_like(c, dtype=torch.float32) if gap is None else torch.as_tensor(gap, device=c.device)
            emb = emb + self.gap(self._features(gap.reshape(-1).expand(c.shape[0]), 1000.0))
        elif gap is not None:
            raise ValueError("this network is not a flow map: it takes no gap (train one with a few-step objective)")
        if self.label is not None:
            if label is None:
                label = torch.full((c.shape[0],), self.num_classes, device=c.device)
            label = torch.as_tensor(label, device=c.device).long().reshape(-1).expand(c.shape[0])
            emb = emb + self.label(label)
        elif label is not None:
            raise ValueError("this network is unconditional: it takes no label")
        return emb


def with_source(x: torch.Tensor, source: torch.Tensor | None, takes_source: bool) -> torch.Tensor:
    """``x`` with a bridge's source concatenated along dimension 1 (channels, or features of a flat vector)
    for a network built to take one; a clear error where the source is missing, unexpected or misshapen."""
    if not takes_source:
        if source is not None:
            raise ValueError("this network was not built to take a source (build it with source=True)")
        return x
    if source is None:
        raise ValueError("this network is a bridge's: it needs the source, forward(x, c, source=...)")
    if source.shape != x.shape:
        raise ValueError(f"the source has shape {tuple(source.shape)}, the state {tuple(x.shape)}: they must match")
    return torch.cat([x, source.to(x.dtype)], dim=1)

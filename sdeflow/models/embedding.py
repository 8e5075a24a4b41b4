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
    time input)."""

    def __init__(self, dim: int, scale: float = 1000.0, num_classes: int = 0, freq_dim: int | None = None):
        super().__init__()
        self.dim, self.scale, self.num_classes = dim, float(scale), int(num_classes)
        self.freq_dim = freq_dim or dim
        half = self.freq_dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(half) / half), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(self.num_classes + 1, dim) if self.num_classes else None

    def forward(self, c: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        arg = (self.scale * c.float())[:, None] * self.freqs[None]
        emb = self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(self.mlp[0].weight.dtype))
        if self.label is not None:
            if label is None:
                label = torch.full((c.shape[0],), self.num_classes, device=c.device)
            label = torch.as_tensor(label, device=c.device).long().reshape(-1).expand(c.shape[0])
            emb = emb + self.label(label)
        elif label is not None:
            raise ValueError("this network is unconditional: it takes no label")
        return emb

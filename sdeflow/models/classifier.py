"""A small image classifier, used to measure the quality of generated images (accuracy of
class-conditional samples, Frechet distance between its features of generated and real images)."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Two 3x3 convolution stages (``width``, ``2 width`` channels, each followed by 2x2 average
    pooling), global average pooling to a ``features``-dimensional vector, and a linear head.
    ``features(x)`` returns the penultimate vector (the Frechet-distance features)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, features: int = 64):
        super().__init__()
        self.config = dict(channels=channels, num_classes=num_classes, width=width, features=features)
        act = nn.SiLU
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), act(), nn.Conv2d(width, width, 3, padding=1), act(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), act(), nn.Conv2d(2 * width, 2 * width, 3, padding=1), act(),
            nn.AvgPool2d(2), nn.Conv2d(2 * width, features, 1), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class NoisyClassifier(nn.Module):
    """A noise-aware image classifier ``net(x_t, c) -> logits`` for classifier guidance: residual
    blocks modulated by the time embedding of ``c`` (the time input of the denoiser it guides),
    two 2x2 poolings, global average pooling and a two-layer head. Trained by ``sdeflow train
    --objective classifier`` on noised data ``x_t`` at random times."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, features: int = 64,
                 time_scale: float = 1000.0):
        super().__init__()
        from .embedding import TimeEmbedding
        from .unet import ResBlock, group_norm

        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.config = dict(channels=channels, num_classes=num_classes, width=width, features=features,
                           time_scale=time_scale)
        emb = 4 * width
        self.embed = TimeEmbedding(emb, time_scale, freq_dim=width)
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList([ResBlock(width, width, emb, 0.0), ResBlock(width, 2 * width, emb, 0.0),
                                     ResBlock(2 * width, 2 * width, emb, 0.0)])
        self.pool = nn.AvgPool2d(2)
        self.out_norm = group_norm(2 * width)
        self.head = nn.Sequential(nn.Linear(2 * width, features), nn.SiLU(), nn.Linear(features, num_classes))

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    def forward(self, x: torch.Tensor, c: torch.Tensor, label=None) -> torch.Tensor:
        e = nn.functional.silu(self.embed(c))
        h = self.conv_in(x)
        for k, block in enumerate(self.blocks):
            h = block(h, e)
            if k < 2 and min(h.shape[-2:]) >= 2:
                h = self.pool(h)
        h = nn.functional.silu(self.out_norm(h)).mean(dim=(-2, -1))
        return self.head(h)

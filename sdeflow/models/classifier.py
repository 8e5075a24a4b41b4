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

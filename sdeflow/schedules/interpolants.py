"""Interpolant (flow) schedules: rectified flow / linear interpolant and the trigonometric one.

References: Liu, Gong, Liu, "Flow Straight and Fast", 2022, arXiv:2209.03003; Lipman et al.,
"Flow Matching for Generative Modeling", 2022, arXiv:2210.02747; Albergo, Boffi,
Vanden-Eijnden, "Stochastic Interpolants", 2023, arXiv:2303.08797.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..shapes import as_time
from .base import Schedule, exact_ends


@dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """``x_t = (1 - t) x + t eps``: ``alpha = 1 - t``, ``sigma = t``, ``lam = log((1 - t) / t)``."""

    def alpha(self, t):
        return 1.0 - as_time(t)

    def sigma(self, t):
        return as_time(t).clone()

    def d_alpha(self, t):
        return torch.full_like(as_time(t), -1.0)

    def d_sigma(self, t):
        return torch.ones_like(as_time(t))

    def t_from_logsnr(self, lam):
        return torch.sigmoid(-as_time(lam))


@dataclass(frozen=True)
class Trigonometric(Schedule):
    """``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``: variance preserving, zero terminal SNR
    (``alpha(1) = 0`` and ``sigma(0) = 0`` exactly)."""

    def alpha(self, t):
        return exact_ends(t, torch.cos(as_time(t) * (math.pi / 2)), 1.0, 0.0)

    def sigma(self, t):
        return exact_ends(t, torch.sin(as_time(t) * (math.pi / 2)), 0.0, 1.0)

    def d_alpha(self, t):
        return -(math.pi / 2) * self.sigma(t)

    def d_sigma(self, t):
        return (math.pi / 2) * self.alpha(t)

    def t_from_logsnr(self, lam):
        return torch.atan(torch.exp(-as_time(lam))) * (2 / math.pi)

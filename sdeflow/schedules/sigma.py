"""Schedules with ``alpha = 1``: variance exploding (score SDE) and EDM's sigma space.

References: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", 2021, arXiv:2011.13456; Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", 2022, arXiv:2206.00364.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..shapes import as_time
from .base import Schedule


@dataclass(frozen=True)
class VE(Schedule):
    """``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``alpha = 1``. Note ``sigma(0) = sigma_min``."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def d_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * math.log(self.sigma_max / self.sigma_min))

    def d_sigma(self, t):
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

    def t_from_logsnr(self, lam):
        return (-as_time(lam) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


@dataclass(frozen=True)
class EDM(Schedule):
    """EDM's process in sigma space: ``alpha = 1``, ``sigma(t) = sigma_max * t``.

    ``sigma_min`` and ``sigma_data`` are not part of the process: they are the defaults that grids
    and EDM preconditioning read from it."""

    sigma_max: float = 80.0
    sigma_min: float = 0.002
    sigma_data: float = 0.5

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def d_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return self.sigma_max * as_time(t)

    def d_sigma(self, t):
        return torch.full_like(as_time(t), self.sigma_max)

    def t_from_logsnr(self, lam):
        return torch.exp(-as_time(lam)) / self.sigma_max

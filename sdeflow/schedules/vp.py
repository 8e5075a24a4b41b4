"""Variance-preserving schedules: ``alpha^2 + sigma^2 = 1``.

A VP schedule is fixed by ``log alpha(t)``; sigma, logSNR and the inverse of logSNR follow from it:
``sigma = sqrt(1 - alpha^2)``, ``lam = log alpha - log sigma`` and ``log alpha = -softplus(-2 lam) / 2``.

References: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020, arXiv:2006.11239;
Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", 2021,
arXiv:2011.13456; Nichol, Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021,
arXiv:2102.09672.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..shapes import Time, as_time
from .base import Schedule, log1mexp


@dataclass(frozen=True)
class VPSchedule(Schedule):
    """Base of VP schedules. Subclasses give :meth:`log_alpha`, its derivative and its inverse."""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_alpha(as_time(t)))

    def sigma(self, t: Time) -> torch.Tensor:
        return torch.exp(0.5 * log1mexp(2.0 * self.log_alpha(as_time(t))))

    def logsnr(self, t: Time) -> torch.Tensor:
        la = self.log_alpha(as_time(t))
        return la - 0.5 * log1mexp(2.0 * la)

    def d_alpha(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        a = self.alpha(t)
        return -a * a * self.d_log_alpha(t) / self.sigma(t)

    def d_logsnr(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        return self.d_log_alpha(t) / self.sigma(t) ** 2

    def t_from_logsnr(self, lam: Time) -> torch.Tensor:
        return self.t_from_log_alpha(-0.5 * F.softplus(-2.0 * as_time(lam)))


@dataclass(frozen=True)
class VPLinear(VPSchedule):
    """Continuous VP-SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)``, so
    ``log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``. Defaults are the score-SDE /
    DDPM values (0.1, 20), the continuous limit of DDPM's 1e-4..0.02 over 1000 steps."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def log_alpha(self, t):
        d = self.beta_max - self.beta_min
        return -0.25 * d * t * t - 0.5 * self.beta_min * t

    def d_log_alpha(self, t):
        return -0.5 * (self.beta_min + (self.beta_max - self.beta_min) * t)

    def t_from_log_alpha(self, log_alpha):
        # Root of d t^2 / 4 + b t / 2 + log_alpha = 0 in the cancellation-free form.
        d, b = self.beta_max - self.beta_min, self.beta_min
        return -2.0 * log_alpha / (0.5 * b + torch.sqrt(0.25 * b * b - d * log_alpha))


@dataclass(frozen=True)
class VPCosine(VPSchedule):
    """Improved-DDPM cosine schedule, ``alpha(t) = cos(phi(t)) / cos(phi(0))`` with
    ``phi(t) = (t + s) / (1 + s) * pi / 2``. At ``t = 1`` alpha is zero up to round-off
    (zero terminal SNR); ``t_max`` below 1 avoids it where a sampler needs a finite logSNR."""

    s: float = 0.008

    def _phi(self, t):
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha(self, t):
        return torch.log(torch.cos(self._phi(t))) - math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2))

    def d_log_alpha(self, t):
        return -torch.tan(self._phi(t)) * (math.pi / 2) / (1.0 + self.s)

    def t_from_log_alpha(self, log_alpha):
        cos0 = math.cos(self.s / (1.0 + self.s) * math.pi / 2)
        phi = torch.arccos((torch.exp(log_alpha) * cos0).clamp(-1.0, 1.0))
        return phi * 2.0 * (1.0 + self.s) / math.pi - self.s

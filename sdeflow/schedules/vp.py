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
from .base import Schedule, exact_ends, log1mexp


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
    ``phi(t) = (t + s) / (1 + s) * pi / 2``. ``alpha(1) = 0`` exactly (zero terminal SNR, logSNR
    ``-inf``); ``t_max`` below 1 avoids it where a grid needs a finite logSNR."""

    s: float = 0.008

    def _phi(self, t):
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha(self, t):
        # log(cos phi / cos phi0) without cancellation at either end: near t = 0 as log1p of
        # (cos phi - cos phi0) / cos phi0 = -2 sin((phi + phi0)/2) sin((phi - phi0)/2) / cos phi0 (with
        # phi - phi0 = t pi / (2 (1 + s)) exact), near t = 1 as the log of the ratio. The ends are
        # exact by construction: alpha(0) = 1, alpha(1) = 0.
        t = as_time(t)
        phi, phi0 = self._phi(t), self._phi(0.0)
        rel = -2.0 * torch.sin(0.5 * (phi + phi0)) * torch.sin(t * (math.pi / 4) / (1.0 + self.s)) / math.cos(phi0)
        la = torch.where(rel > -0.5, torch.log1p(rel), torch.log(torch.cos(phi) / math.cos(phi0))).clamp(max=0.0)
        return exact_ends(t, la, 0.0, -math.inf)

    def d_log_alpha(self, t):
        return -torch.tan(self._phi(t)) * (math.pi / 2) / (1.0 + self.s)

    def t_from_log_alpha(self, log_alpha):
        # phi = atan2(sin phi, cos phi) with cos phi = cos0 e^la and, without cancellation near t = 0,
        # sin^2 phi = sin0^2 - cos0^2 expm1(2 la): accurate at both ends (arccos loses it near t = 0).
        la = torch.as_tensor(log_alpha, dtype=torch.float64)
        phi0 = self._phi(0.0)
        sin2 = math.sin(phi0) ** 2 - math.cos(phi0) ** 2 * torch.expm1(2.0 * la)
        phi = torch.atan2(torch.sqrt(sin2.clamp(min=0.0)), math.cos(phi0) * torch.exp(la))
        return (phi * 2.0 * (1.0 + self.s) / math.pi - self.s).clamp(0.0, 1.0)

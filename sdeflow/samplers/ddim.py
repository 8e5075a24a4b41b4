"""DDIM: the exact solution of the probability-flow ODE when ``x_hat`` is frozen over the step.

Deterministic (``eta = 0``): ``x_s = alpha_s x_hat + sigma_s eps_hat`` with
``eps_hat = (x_t - alpha_t x_hat) / sigma_t``, i.e. ``x_s = (sigma_s/sigma_t) x_t +
(alpha_s - alpha_t sigma_s/sigma_t) x_hat``. Identical to DPM-Solver-1 and DPM-Solver++-1.

Stochastic (``eta > 0``): ``x_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
``c = eta sigma_s sqrt(1 - exp(-2h))``, ``h = lam_s - lam_t``. For VP schedules ``eta = 1`` is
DDPM's ancestral step with the posterior variance; the same formula holds for any schedule.

Reference: Song, Meng, Ermon, "Denoising Diffusion Implicit Models", 2021, arXiv:2010.02502.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Sampler


@dataclass(frozen=True)
class DDIM(Sampler):
    eta: float = 0.0
    order = 1
    nfe_per_step = 1

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"DDIM eta must be in [0, 1], got {self.eta}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def coefficients(self, schedule, t, s):
        a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
        # exp(-2h) = (alpha_t sigma_s / (sigma_t alpha_s))^2, written to stay finite at sigma_s = 0.
        decay = (a_t * s_s / (s_t * a_s)) ** 2
        c = self.eta * s_s * torch.sqrt((1.0 - decay).clamp_min(0.0))
        c_x = torch.sqrt((s_s * s_s - c * c).clamp_min(0.0)) / s_t
        return c_x, a_s - a_t * c_x, c

    def step(self, field, x, i, plan, state, noise):
        c_x, c_d, c_z = plan.coef[i]
        x_hat = field(x, plan.t[i])
        x_s = (x.mul_(c_x) if plan.inplace else x.mul(c_x)).add_(x_hat, alpha=c_d)
        if c_z > 0:
            x_s.add_(noise(), alpha=c_z)
        return x_s, state

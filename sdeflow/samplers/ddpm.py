"""DDPM's ancestral sampler on any grid and schedule.

Each step draws from the Gaussian posterior ``q(x_s | x_t, x = x_hat)`` of the forward process:
mean ``(alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x_hat`` with
``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``, and one
of the two standard variances:

- ``variance="small"``: the posterior variance ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (DDPM's
  "fixed small", beta-tilde). This is DDIM with ``eta = 1`` and SDE-DPM-Solver-1 at ``eta = 1``.
- ``variance="large"``: ``sigma_{t|s}^2`` (DDPM's "fixed large", beta), except on a final step to
  clean data, which stays the posterior mean ``x_hat``.

Learned variances need a network with a variance head, which sdeflow's ``x_hat`` interface does
not carry. Reference: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020,
arXiv:2006.11239.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Affine
from .sde import AffineStep, exact_sde_step

VARIANCES = ("small", "large")


@dataclass(frozen=True)
class DDPM(AffineStep):
    variance: str = "small"
    order = 1
    stochastic = True

    def __post_init__(self):
        if self.variance not in VARIANCES:
            raise ValueError(f"DDPM variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")

    def step_coefficients(self, a_t, s_t, a_s, s_s, t, s, schedule):
        c_x, c_hat, c_z = exact_sde_step(a_t, s_t, a_s, s_s, 1.0)
        if self.variance == "large" and s_s > 0:
            c_z = math.sqrt(max(0.0, s_t * s_t - (a_t / a_s) ** 2 * s_s * s_s))
        return Affine(c_x, c_hat, c_z)

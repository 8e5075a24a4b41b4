"""DDIM: the exact solution of the probability-flow ODE when ``x_hat`` is frozen over the step.

Deterministic (``eta = 0``): ``x_s = alpha_s x_hat + sigma_s eps_hat`` with
``eps_hat = (x_t - alpha_t x_hat) / sigma_t``, i.e. ``x_s = (sigma_s/sigma_t) x_t +
(alpha_s - alpha_t sigma_s/sigma_t) x_hat``. Identical to DPM-Solver-1 and DPM-Solver++-1.

Stochastic (``eta > 0``): ``x_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
``c = eta sigma_s sqrt(1 - exp(-2h))``, ``h = lam_s - lam_t``. ``eta = 1`` is DDPM's ancestral step
with the posterior variance (:class:`~sdeflow.samplers.DDPM`) and the ``eta = 1`` member of the
reverse-SDE family of :mod:`.sde`; the same formula holds for any schedule. (DDIM's ``eta`` and the
SDE family's ``eta`` agree at 0 and 1 only.)

Reference: Song, Meng, Ermon, "Denoising Diffusion Implicit Models", 2021, arXiv:2010.02502.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Affine
from .sde import AffineStep


@dataclass(frozen=True)
class DDIM(AffineStep):
    eta: float = 0.0
    order = 1

    def __post_init__(self):
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"DDIM eta must be in [0, 1], got {self.eta!r}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step_coefficients(self, a_t, s_t, a_s, s_s, t, s, schedule):
        # exp(-2h) = (alpha_t sigma_s / (sigma_t alpha_s))^2, written to stay finite at sigma_s = 0.
        c = 0.0
        if self.eta > 0:
            decay = (a_t * s_s / (s_t * a_s)) ** 2
            c = self.eta * s_s * math.sqrt(max(0.0, 1.0 - decay))
        c_x = math.sqrt(max(0.0, s_s * s_s - c * c)) / s_t
        return Affine(c_x, a_s - a_t * c_x, c)

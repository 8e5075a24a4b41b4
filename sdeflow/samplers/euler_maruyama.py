"""Euler-Maruyama on the reverse-time SDE family of :mod:`.sde`, in time ``t``.

``x_s = x_t + (s - t) [ (f - (1 + eta) lam') x_t + (1 + eta) lam' alpha x_hat ] + sqrt(eta g^2 (t - s)) z``
with the coefficients at ``t``. ``eta = 0`` is Euler on the probability-flow ODE, ``eta = 1`` the
classic reverse-SDE sampler (Song et al.'s "reverse diffusion" predictor in continuous time).
Weak order 1. Two steps take the exact frozen-``x_hat`` step instead, where Euler-Maruyama is not
defined or not sensible: a step from a time where the SDE's coefficients are infinite (``t = 1`` of
rectified flow, zero terminal SNR) and the final step to clean data (``sigma_s = 0``), which is the
denoising step ``x_s = x_hat`` rather than one last injection of noise.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", 2021, arXiv:2011.13456.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Affine
from .sde import AffineStep, check_eta, exact_sde_step


@dataclass(frozen=True)
class EulerMaruyama(AffineStep):
    eta: float = 1.0
    order = 1

    def __post_init__(self):
        check_eta(self.eta)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step_coefficients(self, a_t, s_t, a_s, s_s, t, s, schedule):
        f = float(schedule.d_alpha(t)) / a_t if a_t > 0 else math.inf
        dlam = float(schedule.d_logsnr(t))
        if s_s == 0.0 or not (math.isfinite(f) and math.isfinite(dlam)):
            return exact_sde_step(a_t, s_t, a_s, s_s, self.eta)
        dt, k = s - t, 1.0 + self.eta
        g2 = -2.0 * s_t * s_t * dlam
        return Affine(1.0 + dt * (f - k * dlam), dt * k * dlam * a_t, math.sqrt(max(0.0, self.eta * g2 * (t - s))))

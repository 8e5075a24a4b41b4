"""EDM's stochastic sampler: "churn" noise before each Euler or Heun step in the noise level
``rho = sigma / alpha`` on ``y = x / alpha`` (Karras et al.'s Algorithm 2, for any schedule).

At step ``i`` of ``n`` with ``rho_t`` inside ``[s_tmin, s_tmax]``, ``gamma = min(churn / n, sqrt(2) - 1)``
raises the noise level to ``rho_hat = (1 + gamma) rho_t`` (capped at the schedule's ``t = 1``) by
adding fresh noise, ``y_hat = y + sqrt(rho_hat^2 - rho_t^2) s_noise z``; then an Euler step in ``rho``
from ``rho_hat`` to ``rho_s`` (``heun=False``) or Heun's step (``heun=True``, not on a step to
``rho_s = 0``). ``churn = 0`` is the deterministic :class:`~sdeflow.samplers.EDMHeun` (or DDIM for
Euler). ``s_noise`` slightly above 1 (EDM used 1.003-1.007) compensates networks that remove too
much noise; with an exact model, 1 is right.

Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
2022, arXiv:2206.00364, Algorithm 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from .base import Plan, Sampler
from .engine import ddim_coefficients


class HeunCorrection(NamedTuple):
    """Heun's second stage: ``x_s = k_e x_e + k_1 x_hat(x_e, s) + k_x x_hat_t + k_0 x_hat``."""

    k_e: float
    k_1: float
    k_x: float
    k_0: float


class ChurnRow(NamedTuple):
    """One planned step: churn ``x <- c_x x + c_z z`` up to ``t_hat``, the Euler step
    ``x_e = e_x x + e_hat x_hat(x, t_hat)``, and Heun's correction when planned."""

    t_hat: float
    c_x: float
    c_z: float
    e_x: float
    e_hat: float
    heun: HeunCorrection | None
    STRUCTURE = ("t_hat",)


@dataclass(frozen=True)
class EDMStochastic(Sampler):
    churn: float = 40.0
    s_tmin: float = 0.05
    s_tmax: float = 50.0
    s_noise: float = 1.003
    heun: bool = True
    order = 2

    @property
    def nfe_per_step(self) -> int:
        return 2 if self.heun else 1

    @property
    def evaluates_first(self) -> bool:
        """Without churn; with it a step evaluates at the churned state."""
        return self.churn == 0

    def __post_init__(self):
        for name in ("churn", "s_tmin", "s_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.s_tmax >= self.s_tmin:
            raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={self.s_tmin}, s_tmax={self.s_tmax}")

    @property
    def stochastic(self) -> bool:
        return self.churn > 0

    @property
    def convergence_order(self) -> int:
        """2 with Heun, 1 with Euler (weak order with churn), once ``n > churn / (sqrt(2) - 1)``: below
        that the per-step churn is capped and does not shrink with the step count."""
        return 2 if self.heun else 1

    def prepare(self, schedule, ts):
        n, coef, nfe = len(ts) - 1, [], 0
        rho_max = float(schedule.noise_to_signal(1.0))
        gamma = min(self.churn / n, math.sqrt(2.0) - 1.0)
        for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
            a_t, rho_t = float(schedule.alpha(t)), float(schedule.noise_to_signal(t))
            t_hat, c_x, c_z = t, 1.0, 0.0
            if gamma > 0 and math.isfinite(rho_t) and self.s_tmin <= rho_t <= self.s_tmax:
                rho_hat = min((1.0 + gamma) * rho_t, rho_max)
                if rho_hat > rho_t:
                    t_hat = min(float(schedule.t_from_sigma_ratio(rho_hat)), 1.0)
                    a_hat = float(schedule.alpha(t_hat))
                    rho_hat = float(schedule.noise_to_signal(t_hat))
                    c_x, c_z = a_hat / a_t, a_hat * math.sqrt(max(0.0, rho_hat ** 2 - rho_t ** 2)) * self.s_noise
            a_h, s_h, a_s, s_s = (float(schedule.alpha(t_hat)), float(schedule.sigma(t_hat)),
                                  float(schedule.alpha(s)), float(schedule.sigma(s)))
            e_x, e_hat = ddim_coefficients(a_h, s_h, a_s, s_s)        # Euler in rho is DDIM
            heun = None
            if self.heun and s_s > 0 and a_h > 0:
                # x_s = x_e + (step/2)(eps_hat_1 - eps_hat_0), step = alpha_s (rho_s - rho_hat)
                half = 0.5 * a_s * (s_s / a_s - s_h / a_h)
                heun = HeunCorrection(1.0 + half / s_s, -half * a_s / s_s, -half / s_h, half * a_h / s_h)
            coef.append(ChurnRow(t_hat, c_x, c_z, e_x, e_hat, heun))
            nfe += 2 if heun else 1
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, nfe)

    def step(self, field, x, i, plan, state, noise):
        t_hat, c_x, c_z, e_x, e_hat, heun = plan.coef[i]
        if c_z:
            x = x.mul(c_x).add_(noise(), alpha=c_z)
        x_hat = field(x, t_hat)
        x_e = x.mul(e_x).add_(x_hat, alpha=e_hat)
        if heun is None:
            return x_e, state
        k_e, k_1, k_x, k_0 = heun
        x_hat1 = field(x_e, plan.s[i])
        return x_e.mul_(k_e).add_(x_hat1, alpha=k_1).add_(x, alpha=k_x).add_(x_hat, alpha=k_0), state

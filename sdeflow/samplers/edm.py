"""EDM's second-order sampler: Heun's method in the noise level ``rho = sigma / alpha`` on the
scaled state ``y = x / alpha`` (EDM's choice ``sigma(t) = t``, ``s(t) = 1``, for any schedule).

``dy/drho = eps_hat``; Euler ``y' = y_t + (rho_s - rho_t) eps_hat_0`` (which is DDIM), then
``y_s = y_t + (rho_s - rho_t)(eps_hat_0 + eps_hat_1)/2``, skipping the correction when ``rho_s = 0``.
On EDM's own schedule this equals :class:`~sdeflow.samplers.Heun`.

Heun's trapezoid in ``rho`` assumes ``eps_hat`` varies little over a step. EDM starts at
``rho = 80`` on a Karras grid, where that holds; a grid that starts at a far larger noise level and
jumps to ``rho ~ 1`` in one step (rectified flow from ``t = 0.999``, ``rho = 999``, with three or
four steps) makes the first correction ``(rho_s - rho_t)/2 (eps_hat_1 - eps_hat_0)`` huge. Use a
Karras grid with a moderate ``rho_max`` for this sampler, or a logSNR-based solver.

Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
2022, arXiv:2206.00364, Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Stage, Tableau, Weights
from .engine import SingleStep


@dataclass(frozen=True)
class EDMHeun(SingleStep):
    order = 2
    nfe_per_step = 2
    form = "noise"

    def tableau(self, schedule, info):
        lin = info.a_s / info.a_t
        step = info.a_s * (info.s_s / info.a_s - info.s_t / info.a_t)
        first = Stage(info.t, 1.0, [])
        if info.s_s == 0:
            return Tableau([first], Weights(lin, [step]))
        return Tableau([first, Stage(info.s, lin, [step])], Weights(lin, [step / 2, step / 2]))

"""Heun's second-order method on the probability-flow ODE (EDM's deterministic sampler).

With ``u(x, t) = p(t) x + q(t) x_hat(x, t)`` and ``h = s - t``:
``x' = x_t + h u(x_t, t)``, ``x_s = x_t + h (u(x_t, t) + u(x', s)) / 2``. Where ``sigma(s) = 0``
(the final step to clean data) ``u`` is undefined at ``s`` and the step is Euler's, as in EDM.
Two evaluations per step, one for such a final step.

Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
2022, arXiv:2206.00364, Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Sampler, ode_coefficients


@dataclass(frozen=True)
class Heun(Sampler):
    order = 2
    nfe_per_step = 2

    def coefficients(self, schedule, t, s):
        p_t, q_t = ode_coefficients(schedule, t)
        p_s, q_s = ode_coefficients(schedule, s)
        euler_only = schedule.sigma(s) == 0
        p_s, q_s = p_s.nan_to_num(0.0).where(~euler_only, 0.0), q_s.nan_to_num(0.0).where(~euler_only, 0.0)
        return s - t, p_t, q_t, p_s, q_s, euler_only.double()

    def count_nfe(self, schedule, ts):
        return 2 * (ts.numel() - 1) - int((schedule.sigma(ts[1:]) == 0).sum())

    def step(self, field, x, i, plan, state, noise):
        h, p_t, q_t, p_s, q_s, euler_only = plan.coef[i]
        u = x.mul(p_t).add_(field(x, plan.t[i]), alpha=q_t)
        x_pred = x.add(u, alpha=h)
        if euler_only:
            return x_pred, state
        u_s = x_pred.mul(p_s).add_(field(x_pred, plan.s[i]), alpha=q_s)
        return x.add(u.add_(u_s), alpha=0.5 * h), state

"""Euler's method on the probability-flow ODE, in time ``t``.

With ``dx/dt = p(t) x + q(t) x_hat`` (see :func:`~sdeflow.samplers.base.ode_coefficients`) and
``h = s - t``, one step is ``x_s = (1 + h p_t) x_t + h q_t x_hat(x_t, t)``. First order, one
evaluation per step. For EDM's schedule (``sigma = sigma_max t``) this is Euler in sigma; for
rectified flow it is ``x_s = x_t + h u_hat``.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", 2021, arXiv:2011.13456 (the probability-flow ODE).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Sampler, ode_coefficients


@dataclass(frozen=True)
class Euler(Sampler):
    order = 1
    nfe_per_step = 1

    def coefficients(self, schedule, t, s):
        p, q = ode_coefficients(schedule, t)
        h = s - t
        return 1.0 + h * p, h * q

    def step(self, field, x, i, plan, state, noise):
        c_x, c_d = plan.coef[i]
        x_hat = field(x, plan.t[i])
        return (x.mul_(c_x) if plan.inplace else x.mul(c_x)).add_(x_hat, alpha=c_d), state

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

import torch

from .base import Affine, ode_coefficients
from .sde import AffineStep


@dataclass(frozen=True)
class Euler(AffineStep):
    order = 1

    def step_coefficients(self, a_t, s_t, a_s, s_s, t, s, schedule):
        p, q = (float(c) for c in ode_coefficients(schedule, torch.tensor(t, dtype=torch.float64)))
        return Affine(1.0 + (s - t) * p, (s - t) * q)

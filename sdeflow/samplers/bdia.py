"""BDIA: bidirectional integration, DDIM made exactly invertible.

Each step from ``t_i`` to ``t_{i+1}`` takes DDIM increments from the current point both ways,
``Delta_{i->j} = ddim(x_i, t_i -> t_j) - x_i`` with the one output ``x_hat(x_i, t_i)``, and
combines them with the earlier point:

    x_{i+1} = gamma x_{i-1} + (1 - gamma) x_i - gamma Delta_{i->i-1} + Delta_{i->i+1}.

``gamma = 1`` replaces the increment over ``[t_{i-1}, t_{i+1}]`` by the two centred DDIM increments
(a leapfrog in DDIM's exponential variables: second order on smooth grids); ``gamma = 0`` is DDIM
(first order, not invertible); in between the method is first order. Solving for ``x_{i-1}``
undoes the step with one evaluation at ``x_i``, for any ``gamma > 0`` (dividing by ``gamma``: small
values amplify round-off in the inversion). The first step is DDIM plus the companion offset (see
:mod:`.reversible`). One evaluation per step.

Reference: Zhang, Lewis, Kleijn, "Exact Diffusion Inversion via Bi-directional Integration
Approximation", 2024, arXiv:2307.10829.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .engine import ddim_coefficients
from .reversible import TwoStep


@dataclass(frozen=True)
class BDIA(TwoStep):
    gamma: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and 0 < self.gamma <= 1):
            raise ValueError(f"BDIA gamma must be in (0, 1] (1: second order; 0 would be DDIM, not invertible), "
                             f"got {self.gamma!r}")

    @property
    def order(self) -> int:
        return 2 if self.gamma == 1 else 1

    def two_step_coefficients(self, prev, info):
        r_f, q_f = ddim_coefficients(info.a_t, info.s_t, info.a_s, info.s_s)
        r_b, q_b = ddim_coefficients(info.a_t, info.s_t, prev.a_t, prev.s_t)
        g = float(self.gamma)
        return g, r_f - g * r_b, q_f - g * q_b

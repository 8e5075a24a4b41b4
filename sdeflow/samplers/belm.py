"""O-BELM: the second-order bidirectional explicit linear two-step method.

In DDIM's noise variables ``u = x / alpha`` and ``v = sigma / alpha`` the probability-flow ODE is
``du/dv = eps_hat``. A bidirectional explicit two-step method writes

    u_{i+1} = A u_{i-1} + (1 - A) u_i + C eps_hat(x_i, t_i),

explicit in ``u_{i+1}`` and, because it is linear in ``u_{i-1}`` and evaluates the model only at
``u_i``, also explicit in ``u_{i-1}``: it is undone exactly. Making it exact for ``u`` quadratic in
``v`` fixes, with ``h = v_i - v_{i+1}`` and ``H = v_{i-1} - v_i``,

    A = h^2 / H^2,        C = -(h + h^2 / H),

the choice of least local truncation error (``O(h^3)``: second order globally, on any grid).
The first step is DDIM plus the companion offset (see :mod:`.reversible`). One evaluation per step.
Where ``alpha_{i-1} = 0`` (``t = 1`` of a flow) ``A = 0`` and that step cannot be undone: start an
inversion grid below it.

Reference: Wang et al., "BELM: Bidirectional Explicit Linear Multi-step Sampler for Exact Inversion
in Diffusion Models", 2024, arXiv:2410.07273.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engine import ddim_coefficients
from .reversible import TwoStep


@dataclass(frozen=True)
class OBELM(TwoStep):
    order = 2
    invertibility_hint = ("it does not depend on the state before it, which lies where alpha = 0 (t = 1 of a "
                          "flow): start the grid below that time")

    def two_step_coefficients(self, prev, info):
        a0, s0, a1, s1, a2, s2 = prev.a_t, prev.s_t, info.a_t, info.s_t, info.a_s, info.s_s
        if a1 == 0 or a2 == 0 or s1 == 0:  # no finite noise variable at the current or next point
            return (0.0, *ddim_coefficients(a1, s1, a2, s2))
        v1 = s1 / a1
        h = v1 - s2 / a2
        big = s0 - v1 * a0  # H * alpha_{i-1}: finite also where alpha_{i-1} = 0
        a_over = h * h * a0 / (big * big)  # A / alpha_{i-1}
        c = -(h + h * h * a0 / big)
        big_a = a_over * a0
        return a2 * a_over, a2 * ((1.0 - big_a) / a1 + c / s1), -a2 * c * a1 / s1

"""Multistep DPM-Solver (noise form) and DPM-Solver++ (data form), orders 1 to 3.

Each step integrates the semi-linear probability-flow ODE exactly against the polynomial (in
logSNR) through the model outputs at the last ``k`` grid points (see :mod:`.expint`):

    data form (DPM-Solver++):  x_s = (sigma_s/sigma_t) x_t + alpha_s sum_j w_j x_hat_j
    noise form (DPM-Solver):   x_s = (alpha_s/alpha_t) x_t - sigma_s sum_j w_j eps_hat_j

Order 1 is DDIM. For order 2 the ``"heun"`` variant is the exact integral of the linear
interpolant, ``x_s = ... - alpha_s phi_1 D_0 + alpha_s phi_2 (D_0 - D_1)/r`` with
``phi_1 = expm1(-h)``, ``phi_2 = phi_1/h + 1`` and ``r = h_prev/h``; the ``"midpoint"`` variant
replaces ``phi_2`` by ``-phi_1/2`` (2M in the paper's Algorithm 2 and in most implementations).
Order 3 (3M) integrates the quadratic through three points exactly; with ``variant="midpoint"`` it
takes the papers' finite-difference 3M update instead (what their reference code and diffusers'
``DPMSolverMultistepScheduler`` compute, see :func:`.expint.paper_3m_weights`). That update weights
its second-difference term ``D2 ~ h^2 x_hat''/2`` by ``phi_3 ~ h/6`` where the exact integral has
``~ h/3``, so it converges at second order only (measured 1.7-1.8 by the convergence tests; its
``convergence_order`` says 2). ``corrector=True`` adds the
UniC corrector after each step (no extra NFE).

References: Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
in Around 10 Steps", 2022, arXiv:2206.00927; Lu et al., "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", 2022, arXiv:2211.01095.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Weights
from .engine import Multistep
from .expint import exp_adams, finite_nodes, linear_part, midpoint_weights, paper_3m_weights


@dataclass(frozen=True)
class DPMSolverMultistep(Multistep):
    """``form="noise"``: DPM-Solver; ``form="data"``: DPM-Solver++ (see :class:`DPMSolverPP`)."""

    form: str = "noise"
    variant: str = "heun"

    def __post_init__(self):
        super().__post_init__()
        if self.form not in ("data", "noise"):
            raise ValueError(f"form must be 'data' or 'noise', got {self.form!r}")
        if self.variant not in ("heun", "midpoint"):
            raise ValueError(f"variant must be 'heun' or 'midpoint', got {self.variant!r}")

    @property
    def convergence_order(self) -> int:
        if self.variant == "midpoint" and self.order == 3:
            return 2  # the papers' 3M update (see the module docstring)
        return super().convergence_order

    def weights(self, schedule, info, history, k):
        if self.variant == "midpoint" and k in (2, 3) and len(finite_nodes(info, history[:k])) == k:
            c_x, scale = linear_part(self.form, info.a_t, info.s_t, info.a_s, info.s_s)
            r0 = (info.lam_t - history[1].lam_t) / info.h
            if k == 2:
                return Weights(c_x, [scale * w for w in midpoint_weights(info.h, r0, self.form)])
            r1 = (history[1].lam_t - history[2].lam_t) / info.h
            return Weights(c_x, [scale * w for w in paper_3m_weights(info.h, r0, r1, self.form)])
        return exp_adams(self.form, info, history[:k])


@dataclass(frozen=True)
class DPMSolverPP(DPMSolverMultistep):
    """DPM-Solver++ multistep: 2M (``order=2``, ``variant="midpoint"`` or ``"heun"``) and 3M."""

    form: str = "data"

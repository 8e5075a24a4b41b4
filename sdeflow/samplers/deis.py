"""DEIS: exponential integrators with polynomial extrapolation of ``eps_hat`` in ``t`` or in ``rho``.

In the scaled variables ``y = x / alpha`` and ``rho = sigma / alpha`` the probability-flow ODE is
``dy/drho = eps_hat``, so ``x_s = (alpha_s/alpha_t) x_t + alpha_s int_{rho_t}^{rho_s} eps_hat drho``.
DEIS replaces ``eps_hat`` by the Lagrange polynomial through its last ``k`` values:

- ``variant="tab"``: polynomial in ``t``; the weights ``alpha_s int l_j(tau) rho'(tau) dtau`` are
  computed once per grid by Gauss-Legendre quadrature;
- ``variant="rhoab"``: polynomial in ``rho``; the weights are exact polynomial integrals, also on the
  step to clean data (``rho = 0``). With ``order=4`` and no lower-order final steps this is the linear
  multistep (LMS) sampler of k-diffusion and diffusers in sigma space, to round-off.

Order 1 is DDIM in both variants.

Reference: Zhang, Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", 2023,
arXiv:2204.13902.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Weights
from .engine import Multistep
from .expint import lagrange_weights

_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)


@dataclass(frozen=True)
class DEIS(Multistep):
    variant: str = "tab"
    form = "noise"
    max_order = 4

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in ("tab", "rhoab"):
            raise ValueError(f"DEIS variant must be 'tab' or 'rhoab', got {self.variant!r}")

    def usable(self, info):
        """``rhoab`` integrates in ``rho = sigma / alpha``, finite at clean data (``rho = 0``): its step there
        keeps its order (the LMS step of k-diffusion and diffusers), where logSNR-based methods fall back
        to DDIM."""
        if self.variant == "rhoab":
            return info.a_t > 0 and info.a_s > 0 and math.isfinite(info.s_t / info.a_t)
        return super().usable(info)

    def weights(self, schedule, info, history, k):
        c_x = info.a_s / info.a_t
        rho_t, rho_s = info.s_t / info.a_t, info.s_s / info.a_s
        if self.variant == "rhoab":
            pts = [p.s_t / p.a_t for p in history[:k] if p.a_t > 0]
            nodes = [(r - rho_t) / (rho_s - rho_t) for r in pts]
            moments = [1.0 / (j + 1) for j in range(len(nodes))]
            return Weights(c_x, list(info.a_s * (rho_s - rho_t) * lagrange_weights(nodes, moments)))
        times = [p.t for p in history[:k]]
        if len(times) == 1:
            return Weights(c_x, [info.a_s * (rho_s - rho_t)])
        # Quadrature over [s, t] of l_j(tau) rho'(tau), in the scaled variable v = (tau - t)/(s - t).
        tau = info.t + (info.s - info.t) * (_GL_X + 1) / 2
        import torch

        tt = torch.as_tensor(tau, dtype=torch.float64)
        a, s = schedule.alpha(tt), schedule.sigma(tt)
        drho = ((schedule.d_sigma(tt) * a - s * schedule.d_alpha(tt)) / (a * a)).numpy()
        nodes = [(tj - info.t) / (info.s - info.t) for tj in times]
        v = (_GL_X + 1) / 2
        moments = [float(np.sum(_GL_W * drho * v ** j) * (info.s - info.t) / 2) for j in range(len(nodes))]
        return Weights(c_x, list(info.a_s * lagrange_weights(nodes, moments)))

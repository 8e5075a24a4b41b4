"""iPNDM: Adams-Bashforth with constant-step weights in ``rho = sigma / alpha``, orders 1 to 4.

``x_s = (alpha_s/alpha_t) x_t + alpha_s (rho_s - rho_t) sum_j c_j eps_hat_{i-j}`` with
``c = [1]``, ``[3/2, -1/2]``, ``[23/12, -16/12, 5/12]``, ``[55/24, -59/24, 37/24, -9/24]`` and lower
orders for the first steps. The weights assume equal steps in ``rho``: on such grids the order is
``order``; on smoothly varying grids (Karras, logSNR) it drops to 2 (use ``DEIS(variant="rhoab")``,
the variable-step version, there). PNDM's pseudo linear multistep (PLMS) applies the same combination of
``eps_hat`` through DDIM's transfer, which is this update; here the first steps use lower orders
instead of PNDM's Runge-Kutta warm-up.

References: Liu et al., "Pseudo Numerical Methods for Diffusion Models on Manifolds", 2022,
arXiv:2202.09778; Zhang, Chen, 2023, arXiv:2204.13902 (iPNDM).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Weights
from .engine import Multistep

AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@dataclass(frozen=True)
class IPNDM(Multistep):
    order: int = 4
    lower_order_final: bool = False
    form = "noise"
    max_order = 4

    @property
    def convergence_order(self) -> int:
        """Constant-step weights: order ``order`` on grids uniform in ``rho``, but at most 2 on the
        smoothly varying grids in common use (Karras, logSNR), where the step ratios drift."""
        return min(self.order, 2)

    def weights(self, schedule, info, history, k):
        k = min(k, sum(1 for p in history[:k] if p.a_t > 0))
        step = info.a_s * (info.s_s / info.a_s - info.s_t / info.a_t)
        return Weights(info.a_s / info.a_t, [step * c for c in AB[max(k, 1)]])

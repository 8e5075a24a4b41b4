"""UniPC: the unified predictor (UniP) and corrector (UniC), B(h) variants ``bh1`` and ``bh2``.

With ``h = lam_s - lam_t``, ``hh = -h`` (data form) or ``hh = h`` (noise form), ``S = alpha_s``
(data) or ``sigma_s`` (noise), earlier points at ``r_j = (lam_j - lam_t)/h`` and
``D1_j = (D_j - D_0)/r_j``, the base step is ``x~ = L x - S expm1(hh) D_0`` (DDIM) and

    UniP-k:  x_s = x~ - S B(h) sum_{j<k} rho^p_j D1_j
    UniC-k:  x_s^c = x~ - S B(h) (sum_{j<k} rho^c_j D1_j + rho^c_k (D_new - D_0))

where ``D_new`` is the model output at the predicted ``x_s`` (reused by the next step, so the
corrector costs no NFE) and the ``rho`` solve ``R rho = b`` with ``R_ij = r_j^(i)`` and
``b_i = i! h phi_{i+1}(hh) / B(h)``; ``B(h) = hh`` (bh1) or ``expm1(hh)`` (bh2). UniP-2 uses
``rho = 1/2``. Without the corrector and at order 1, UniPC is DDIM.

Reference: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", 2023, arXiv:2302.04867.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .engine import Multistep
from .expint import finite_nodes, linear_part


def _system(form, info, history, k, variant):
    h = info.h
    hh = -h if form == "data" else h
    c_x, _ = linear_part(form, info.a_t, info.s_t, info.a_s, info.s_s)
    big_s = info.a_s if form == "data" else info.s_s
    rks = finite_nodes(info, history[:k])[1:]
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    b, h_phi_k, fact = [], h_phi_1 / hh - 1.0, 1.0
    for i in range(1, len(rks) + 2):
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    nodes = np.array(rks + [1.0])
    big_r = np.vander(nodes, len(nodes), increasing=True).T      # R[i, j] = r_j^i
    return c_x, big_s, h_phi_1, b_h, rks, big_r, np.array(b)


def _expand(c_x, big_s, h_phi_1, b_h, rks, rho):
    """Coefficients on (D_0, D_1, ...) of x~ - S B(h) sum_j rho_j D1_j."""
    c0 = -big_s * h_phi_1 + big_s * b_h * sum(r / rk for r, rk in zip(rho, rks))
    return c_x, [c0] + [-big_s * b_h * r / rk for r, rk in zip(rho, rks)]


def unip_weights(form, info, history, k, variant="bh2"):
    c_x, big_s, h_phi_1, b_h, rks, big_r, b = _system(form, info, history, k, variant)
    m = len(rks)
    rho = [] if m == 0 else ([0.5] if m == 1 else list(np.linalg.solve(big_r[:m, :m], b[:m])))
    return _expand(c_x, big_s, h_phi_1, b_h, rks, rho)


def unic_weights(form, info, history, k, variant="bh2"):
    """``(c_x, [c_0, c_1, ...], c_new)`` of the UniC corrector of order ``k``."""
    c_x, big_s, h_phi_1, b_h, rks, big_r, b = _system(form, info, history, k, variant)
    rho = [0.5] if not rks else list(np.linalg.solve(big_r, b))
    c_x, coefs = _expand(c_x, big_s, h_phi_1, b_h, rks, rho[:-1])
    coefs[0] += big_s * b_h * rho[-1]
    return c_x, coefs, -big_s * b_h * rho[-1]


@dataclass(frozen=True)
class UniPC(Multistep):
    """UniPC multistep sampler; ``corrector=False`` gives UniP alone."""

    corrector: bool = True
    variant: str = "bh2"
    form: str = "data"

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in ("bh1", "bh2") or self.form not in ("data", "noise"):
            raise ValueError("UniPC variant must be 'bh1' or 'bh2' and form 'data' or 'noise'")

    def weights(self, schedule, info, history, k):
        return unip_weights(self.form, info, history, k, self.variant)

    def corrector_weights(self, info, history, k):
        # bh1's B(h) = h grows without bound on a step from pure noise; bh2's stays bounded
        return unic_weights(self.form, info, history, k, "bh2" if info.pure_noise else self.variant)

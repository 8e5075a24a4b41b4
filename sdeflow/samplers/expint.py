"""Weights of exponential integrators, computed in float64 once per grid.

In logSNR ``lam`` the probability-flow ODE is semi-linear. With ``h = lam_s - lam_t`` and
``v = (lam - lam_t) / h`` running over [0, 1], its exact solution is

    data form:  x_s = (sigma_s/sigma_t) x_t + alpha_s h int_0^1 exp(-h (1 - v)) x_hat(v) dv
    noise form: x_s = (alpha_s/alpha_t) x_t - sigma_s h int_0^1 exp( h (1 - v)) eps_hat(v) dv

Multistep and single-step solvers replace ``x_hat`` (or ``eps_hat``) by the polynomial through
known values and integrate it exactly; :func:`exp_moments` and :func:`lagrange_weights` do that.
:func:`unip_weights` and :func:`unic_weights` are UniPC's predictor and corrector (the corrector
serves every multistep solver, see :class:`~sdeflow.samplers.engine.Multistep`).

Reference: Lu et al., "DPM-Solver", 2022, arXiv:2206.00927; "DPM-Solver++", 2022, arXiv:2211.01095.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Corrector, Weights


def exp_moments(c: float, k: int) -> np.ndarray:
    """``G_j(c) = int_0^1 exp(c (1 - v)) v^j dv`` for ``j < k`` (a series for ``|c| < 1``, else the
    recurrence ``G_j = (j G_{j-1} - 1) / c``, both free of cancellation where used)."""
    out = np.empty(k)
    if abs(c) < 1.0:
        for j in range(k):
            # G_j = sum_m c^m j! / (m + j + 1)!
            term, total, m = math.factorial(j) / math.factorial(j + 1), 0.0, 0
            while True:
                total += term
                m += 1
                term *= c / (m + j + 1)
                if abs(term) < 1e-18 * abs(total) or m > 60:
                    break
            out[j] = total
        return out
    out[0] = math.expm1(c) / c
    for j in range(1, k):
        out[j] = (j * out[j - 1] - 1.0) / c
    return out


def lagrange_weights(nodes, moments) -> np.ndarray:
    """Weights ``w_j = int l_j(v) dmu(v)`` of the Lagrange basis through ``nodes``, given the
    monomial moments ``int v^k dmu(v)`` for ``k < len(nodes)``."""
    nodes = np.asarray(nodes, dtype=np.float64)
    vander = np.vander(nodes, len(nodes), increasing=True)      # V[j, k] = u_j^k
    return np.linalg.solve(vander.T, np.asarray(moments[: len(nodes)], dtype=np.float64))


def exp_adams_weights(h: float, nodes, form: str) -> np.ndarray:
    """Weights on the history values at ``nodes`` (``v`` positions, 0 = current point, negative =
    earlier) of the exact integral of their interpolating polynomial, multiplied by ``h``.

    Data form returns ``h int exp(-h(1-v)) l_j(v) dv`` (to be scaled by ``alpha_s``); noise form
    ``h int exp(h(1-v)) l_j(v) dv`` (to be scaled by ``-sigma_s``)."""
    c = -h if form == "data" else h
    return h * lagrange_weights(nodes, exp_moments(c, len(nodes)))


def midpoint_weights(h: float, r: float, form: str) -> list[float]:
    """DPM-Solver-2M's midpoint rule: ``x_hat_0 + (x_hat_0 - x_hat_1) / (2 r)`` (``r`` the previous
    step over this one) times ``h int exp(-+h(1-v)) dv``, as weights on ``(x_hat_0, x_hat_1)`` (to be
    scaled like :func:`exp_adams_weights`)."""
    e1 = -math.expm1(-h) if form == "data" else math.expm1(h)
    return [e1 * (1 + 0.5 / r), -e1 * 0.5 / r]


def paper_3m_weights(h: float, r0: float, r1: float, form: str) -> list[float]:
    """DPM-Solver(++)-3M's update as written in the papers and their reference code: finite-difference
    estimates ``D1 ~ h f'`` and ``D2 ~ h^2 f'' / 2`` from the last three outputs (``r0``, ``r1``: the
    previous two steps over this one) with ``phi_2`` and ``phi_3`` weights. It is not the exact
    quadratic integral of :func:`exp_adams_weights`: its ``D2`` weight is half the exact one, so it
    converges at second order (see :mod:`.dpm_solver_multistep`). Weights on
    ``(x_hat_0, x_hat_1, x_hat_2)`` (to be scaled like :func:`exp_adams_weights`)."""
    d10, d11 = [1 / r0, -1 / r0, 0.0], [0.0, 1 / r1, -1 / r1]
    d1 = [(1 + r0 / (r0 + r1)) * a - r0 / (r0 + r1) * b for a, b in zip(d10, d11)]
    d2 = [(a - b) / (r0 + r1) for a, b in zip(d10, d11)]
    if form == "data":
        e = math.expm1(-h)
        phi1, phi2, phi3 = -e, e / h + 1, (e + h) / h ** 2 - 0.5
        return [phi1 * (j == 0) + phi2 * a - phi3 * b for j, (a, b) in enumerate(zip(d1, d2))]
    e = math.expm1(h)
    phi1, phi2, phi3 = e, e / h - 1, (e - h) / h ** 2 - 0.5
    return [phi1 * (j == 0) + phi2 * a + phi3 * b for j, (a, b) in enumerate(zip(d1, d2))]


def linear_part(form: str, a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[float, float]:
    """``(coefficient of x_t, scale of the integral)`` of the exact solution in ``form``."""
    if form == "data":
        return s_s / s_t, a_s
    return a_s / a_t, -s_s


def finite_nodes(info, history) -> list[float]:
    """Positions ``v = (lam_j - lam_t) / h`` of the history points, newest first, stopping at the
    first infinite logSNR (a point of pure noise carries no derivative information)."""
    nodes = []
    for past in history:
        if not math.isfinite(past.lam_t):
            break
        nodes.append((past.lam_t - info.lam_t) / info.h)
    return nodes or [0.0]


def exp_adams(form: str, info, history) -> Weights:
    """Exponential Adams-Bashforth step in logSNR: the polynomial through the stored outputs at the
    finite history points, integrated exactly. Returns ``(c_x, weights newest first)``."""
    c_x, scale = linear_part(form, info.a_t, info.s_t, info.a_s, info.s_s)
    return Weights(c_x, list(scale * exp_adams_weights(info.h, finite_nodes(info, history), form)))


# ---- UniPC: the unified predictor (UniP) and corrector (UniC), see unipc.py for the formulas ----
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
    return Weights(c_x, [c0] + [-big_s * b_h * r / rk for r, rk in zip(rho, rks)])


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
    return Corrector(c_x, coefs, -big_s * b_h * rho[-1])

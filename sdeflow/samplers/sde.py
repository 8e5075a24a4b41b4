"""The reverse-time SDE family shared by the stochastic samplers, and the one-evaluation affine
step most of them take.

For ``x_t = alpha_t x + sigma_t eps`` the forward SDE is ``dx = f x dt + g dW`` with
``f = alpha'/alpha`` and ``g^2 = -2 sigma^2 lam'`` (``lam = log(alpha/sigma)``). Every member of

    dx = [f x - (1 + eta)/2 g^2 score] dt + sqrt(eta) g dW_bar,       eta >= 0,

run backwards in time has the data's marginals: ``eta = 0`` is the probability-flow ODE, ``eta = 1``
the reverse SDE of Anderson / Song et al., larger ``eta`` churns harder. With
``score = -(x - alpha x_hat)/sigma^2`` the drift is ``[f - (1 + eta) lam'] x + (1 + eta) lam' alpha x_hat``.

Freezing ``x_hat`` over a step from ``t`` to ``s`` (``h = lam_s - lam_t > 0``) the linear SDE is
solved exactly (the SDE-DPM-Solver-1 step):

    x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1+eta) h}) x_hat + sigma_s sqrt(1 - e^{-2 eta h}) z,

and a polynomial ``x_hat(lam)`` through earlier outputs integrates exactly with the data-form
exponential-Adams weights at step ``(1 + eta) h`` (see :mod:`.expint`). At ``eta = 1`` the step is
DDPM's ancestral step with the posterior variance, i.e. DDIM with ``eta = 1``.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", 2021, arXiv:2011.13456; Lu et al., "DPM-Solver++", 2022, arXiv:2211.01095.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Affine, Plan, Sampler
from .engine import is_exactly, axpy_


def check_eta(eta: float, name: str = "eta") -> None:
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (0: probability-flow ODE, 1: reverse SDE), got {eta!r}")


def exact_sde_step(a_t: float, s_t: float, a_s: float, s_s: float, eta: float) -> Affine:
    """``(c_x, c_hat, c_z)`` of the frozen-``x_hat`` solution above, finite at both infinite-logSNR
    ends (``alpha_t = 0``: the start is forgotten unless ``eta = 0``; ``sigma_s = 0``: ``x_s = x_hat``)."""
    if s_s == 0.0:
        return Affine(0.0, a_s, 0.0)
    # e^{-h} = alpha_t sigma_s / (sigma_t alpha_s), 0 from pure noise
    decay = a_t * s_s / (s_t * a_s)
    c_x = s_s / s_t * decay ** eta if eta > 0 else s_s / s_t
    c_hat = a_s * (1.0 - decay ** (1.0 + eta))
    c_z = s_s * math.sqrt(max(0.0, 1.0 - decay ** (2.0 * eta)))
    return Affine(c_x, c_hat, c_z)


@dataclass(frozen=True)
class AffineStep(Sampler):
    """One evaluation per step, ``x_s = c_x x_t + c_hat x_hat(x_t, t) + c_z z`` with :meth:`step_coefficients`
    returning an :class:`~sdeflow.samplers.base.Affine`; ``z`` is the step's reverse-SDE noise (``span = (t, s)``)."""

    nfe_per_step = 1
    linear_plan = True

    def step(self, field, x, i, plan, state, noise):
        c_x, c_hat, c_z = plan.coef[i]
        x_hat = field(x, plan.t[i])
        x_s = axpy_(x.mul_(c_x) if plan.inplace else x.mul(c_x), c_hat, x_hat)
        if not is_exactly(c_z, 0):
            axpy_(x_s, c_z, noise(span=(plan.t[i], plan.s[i])))
        return x_s, state

    def prepare(self, schedule, ts):
        t, s = ts[:-1], ts[1:]
        rows = [self.step_coefficients(*v) for v in zip(schedule.alpha(t).tolist(), schedule.sigma(t).tolist(),
                                                       schedule.alpha(s).tolist(), schedule.sigma(s).tolist(),
                                                       t.tolist(), s.tolist(), [schedule] * t.numel())]
        return Plan(t.tolist(), s.tolist(), rows, self.count_nfe(schedule, ts))

    def step_coefficients(self, a_t, s_t, a_s, s_s, t, s, schedule) -> Affine:
        """The :class:`~sdeflow.samplers.base.Affine` step from the float64 ends of the step."""
        raise NotImplementedError

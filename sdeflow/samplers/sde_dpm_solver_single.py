"""Single-step SDE-DPM-Solver++ (2S-SDE): two evaluations per step on the reverse SDE family.

With ``h = lam_s - lam_t``, ``k = 1 + eta`` and an intermediate point ``u`` at ``lam_t + r h``:

    x_u = exact frozen-x_hat step of :mod:`.sde` from t to u with x_hat_0 = x_hat(x_t, t) and noise z_1,
    x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s (w_0 x_hat_0 + w_1 x_hat(x_u, u))
          + sigma_s e^{-eta (1-r) h} sqrt(1 - e^{-2 eta r h}) z_1 + sigma_s sqrt(1 - e^{-2 eta (1-r) h}) z_2,

where ``w`` integrate the line through the two outputs exactly (data-form exponential weights at
step ``k h``) and the noise of the full step is split at ``u`` so that the stage and the step see
the same Brownian path (``z_1`` over ``[u, t]``, ``z_2`` over ``[s, u]``; with a
:class:`~sdeflow.noise.BrownianTreeNoise` these are increments of one path). At ``eta = 0`` this is
DPM-Solver++(2S) with the exact second-order weights. A step from pure noise or to clean data is
the one-evaluation exact step.

Reference: Lu et al., "DPM-Solver++", 2022, arXiv:2211.01095; the stochastic single-step variant
follows k-diffusion's ``sample_dpmpp_sde`` (Karras et al. 2022 codebase) in the SDE family here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from .base import Affine, Plan, Sampler
from .engine import step_infos
from .expint import exp_adams_weights
from .sde import check_eta, exact_sde_step


class SecondStage(NamedTuple):
    """The update after the stage at ``u``: ``x_s = c_x x + w0 x_hat + w1 x_hat(x_u, u) + n1 z_1 + n2 z_2``."""

    c_x: float
    w0: float
    w1: float
    n1: float
    n2: float


class SDEStepRow(NamedTuple):
    """One planned step: the stage to ``u`` (``None``: the exact one-evaluation step ``first`` alone)
    by the :class:`~.base.Affine` ``first``, then ``second``."""

    u: float | None
    first: Affine
    second: SecondStage | None
    STRUCTURE = ("u",)


@dataclass(frozen=True)
class SDEDPMSolverPPSingle(Sampler):
    eta: float = 1.0
    r: float = 0.5
    order = 2
    nfe_per_step = 2

    def __post_init__(self):
        check_eta(self.eta)
        if not 0.0 < self.r < 1.0:
            raise ValueError(f"r (position of the intermediate point) must be in (0, 1), got {self.r}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    @property
    def convergence_order(self) -> int:
        """2: strong order at ``eta = 0``, weak order with noise."""
        return 2

    def prepare(self, schedule, ts):
        coef, nfe = [], 0
        for info in step_infos(schedule, ts):
            if not info.finite:
                coef.append(SDEStepRow(None, exact_sde_step(info.a_t, info.s_t, info.a_s, info.s_s, self.eta), None))
                nfe += 1
                continue
            h, eta = info.h, self.eta
            u = float(schedule.t_from_logsnr(info.lam_t + self.r * h))
            a_u, s_u = float(schedule.alpha(u)), float(schedule.sigma(u))
            stage = exact_sde_step(info.a_t, info.s_t, a_u, s_u, eta)
            w0, w1 = info.a_s * exp_adams_weights((1.0 + eta) * h, [0.0, self.r], "data")
            n1 = info.s_s * math.exp(-eta * (1 - self.r) * h) * math.sqrt(-math.expm1(-2 * eta * self.r * h))
            n2 = info.s_s * math.sqrt(-math.expm1(-2 * eta * (1 - self.r) * h))
            coef.append(SDEStepRow(u, stage, SecondStage(info.s_s / info.s_t * math.exp(-eta * h), float(w0), float(w1), n1, n2)))
            nfe += 2
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, nfe)

    def step(self, field, x, i, plan, state, noise):
        t, s = plan.t[i], plan.s[i]
        u, first, second = plan.coef[i]
        x_hat = field(x, t)
        if u is None:  # the exact one-evaluation step
            c_x, c_hat, c_z = first
            x_s = x.mul(c_x).add_(x_hat, alpha=c_hat)
            return (x_s.add_(noise(span=(t, s)), alpha=c_z) if c_z else x_s), state
        (a_x, a_hat, a_z), (c_x, w0, w1, n1, n2) = first, second
        z1 = noise(draw=1, span=(t, u)) if a_z or n1 else None
        x_u = x.mul(a_x).add_(x_hat, alpha=a_hat)
        if z1 is not None:
            x_u.add_(z1, alpha=a_z)
        x_hat_u = field(x_u, u)
        x_s = (x.mul_(c_x) if plan.inplace else x.mul(c_x)).add_(x_hat, alpha=w0).add_(x_hat_u, alpha=w1)
        if n2:
            x_s.add_(z1, alpha=n1).add_(noise(draw=2, span=(u, s)), alpha=n2)
        return x_s, state

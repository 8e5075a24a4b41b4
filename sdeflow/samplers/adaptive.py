"""Error-controlled samplers: embedded DPM-Solver pairs in logSNR, and Dormand-Prince RK45 in ``t``.

Each grid interval is integrated with as many internal steps as the tolerance needs; the number
of evaluations is only known afterwards (``Plan.nfe`` is ``None``; ``SampleResult.nfe`` reports it).
Step-size control needs the error norm on the host, so these samplers are the only ones that
synchronise inside the loop.

An accepted step satisfies ``sqrt(mean((x_hi - x_lo)^2 / tol^2)) <= 1`` with
``tol = atol + rtol * max(|x_lo|, |x_prev|)``; the next step is ``h * clip(0.9 err^(-1/(q+1)), 0.2, 5)``
with ``q`` the lower order. The field is only evaluated inside the schedule's domain
(``t_min <= t <= 1``). An interval starting at infinite negative logSNR starts from logSNR -20 (the
state moves by ``e^-20`` relative in between).

The end at clean data (``sigma = 0``, where the ODE is singular) is reached by a denoising jump
``x = alpha x_hat``. Its error is ``int_0^inf e^-u (x_hat(lam + u) - x_hat(lam)) du``, about
``|d x_hat / d lam|``, which shrinks like ``(sigma/alpha)^2``. With ``sigma_stop=None`` (the default)
the solver jumps at the first accepted point where that estimate (a finite difference over the last
step) is within the tolerance, and at the latest at the schedule's smallest time (a discrete
schedule's first training index) or logSNR 20; so a tight tolerance is met over the whole interval.
``sigma_stop`` fixes the noise level ``sigma / alpha`` of the jump instead (EDM's 0.002, say).

References: Lu et al., "DPM-Solver", 2022, arXiv:2206.00927 (DPM-Solver-12 and -23, Algorithm 4);
Dormand, Prince, "A family of embedded Runge-Kutta formulae", 1980.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .base import Plan, Sampler, ode_coefficients
from .engine import lincomb
from .expint import exp_moments

LAM_FLOOR = -20.0
#: Largest logSNR a continuous schedule is integrated to before the denoising jump (sigma/alpha = 2e-9).
LAM_CEIL = 20.0


def error_ratio(x_hi, x_lo, x_prev, rtol, atol):
    """RMS of ``(x_hi - x_lo) / tol``, in float32 at least. A state stored in a low-precision dtype
    cannot hold a relative error below that dtype's resolution, so ``rtol`` is floored there (a
    bfloat16 state asked for 1e-3 would otherwise reject steps until ``max_steps``)."""
    rtol = max(rtol, torch.finfo(x_hi.dtype).eps)
    work = torch.promote_types(x_hi.dtype, torch.float32)
    # the step-size control reads the error as a number: no gradient flows through it
    hi, lo, prev = x_hi.detach().to(work), x_lo.detach().to(work), x_prev.detach().to(work)
    tol = atol + rtol * torch.maximum(lo.abs(), prev.abs())
    return float(((hi - lo) / tol).pow(2).mean().sqrt())


def end_time(sch, t: float, s: float, sigma_stop: float | None) -> tuple[float, bool]:
    """``(s_end, denoise)``: an interval ending at ``sigma = 0`` is integrated to ``s_end`` and finished
    with a denoising step; ``s_end`` is the time of noise level ``sigma_stop``, or (``None``) the
    schedule's smallest time (logSNR ``LAM_CEIL`` where that is 0), never below the schedule's domain."""
    if float(sch.sigma(s)) != 0:
        return s, False
    if sigma_stop is not None:
        s_end = float(sch.t_from_sigma_ratio(sigma_stop))
    else:
        s_end = sch.t_min if sch.t_min > 0 else float(sch.t_from_logsnr(LAM_CEIL))
    return min(max(s_end, sch.t_min), t), True


class JumpControl:
    """Decides when the denoising jump to clean data is within the tolerance. Its error is about
    ``|d x_hat / d lam|`` (see the module docstring), estimated by a finite difference over the last
    accepted step. That estimate bounds the jump's error only where it shrinks as logSNR grows (at high
    SNR; at low SNR ``x_hat`` is flat too), so the jump needs ``lam > 0``, an estimate within the
    tolerance, and a smaller estimate than at the previous point."""

    def __init__(self, rtol: float, atol: float, active: bool):
        self.rtol, self.atol, self.active = rtol, atol, active
        self.prev, self.ratio = None, math.inf  # (x_hat, lam) at the previous accepted point

    def accept(self, x_hat, lam: float) -> bool:
        """Record ``x_hat`` at an accepted point of logSNR ``lam``; True where the jump may be taken."""
        if not self.active:
            return False
        ok, last = False, self.ratio
        if self.prev is not None and lam > self.prev[1]:
            dlam = lam - self.prev[1]
            self.ratio = error_ratio(x_hat, self.prev[0], x_hat, self.rtol * dlam, self.atol * dlam)
            ok = lam > 0 and self.ratio <= 1.0 and self.ratio < last
        self.prev = (x_hat, lam)
        return ok


def next_step(h, err, q):
    """The next step size after a step of size ``h`` with error ratio ``err`` by a pair of lower order ``q``."""
    return h * min(5.0, max(0.2, 0.9 * (max(err, 1e-10)) ** (-1.0 / (q + 1))))


@dataclass(frozen=True)
class Adaptive(Sampler):
    """Base of the error-controlled samplers: tolerances, the initial step, a step limit, and a
    plan that only carries the grid and the schedule (step sizes are chosen while sampling)."""

    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    max_steps: int = 10_000
    sigma_stop: float | None = None
    order = 0
    adaptive = True
    couples_batch = True
    evaluates_first = False  # the first evaluation may be moved off a time of infinite logSNR

    def __post_init__(self):
        if self.rtol <= 0 and self.atol <= 0:
            raise ValueError("need rtol > 0 or atol > 0")
        if self.sigma_stop is not None and not self.sigma_stop > 0:
            raise ValueError(f"sigma_stop must be a noise level > 0 or None (automatic), got {self.sigma_stop!r}")

    def prepare(self, schedule, ts):
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), [None] * (ts.numel() - 1), None, schedule=schedule)


@dataclass(frozen=True)
class DPMSolverAdaptive(Adaptive):
    """DPM-Solver-12 (``order=2``: DPM-Solver-1 inside -2) or -23 (``order=3``), in data
    form (DPM-Solver++), adapting the logSNR step."""

    order: int = 3

    def __post_init__(self):
        super().__post_init__()
        if self.order not in (2, 3):
            raise ValueError(f"DPMSolverAdaptive order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {self.order}")

    def _sub(self, sch, lam_t, x, x_hat0, h, field):
        """Lower and higher order solutions over logSNR step h from lam_t (both data form)."""
        lam = [lam_t + r * h for r in ((1 / 2, 1.0) if self.order == 2 else (1 / 3, 2 / 3, 1.0))]
        tt = torch.tensor([lam_t] + lam, dtype=torch.float64)
        times = sch.t_from_logsnr(tt)
        a, s = sch.alpha(times).tolist(), sch.sigma(times).tolist()

        def e12(j):
            big_h = lam[j] - lam_t
            g = exp_moments(-big_h, 2) * big_h
            return s[j + 1] / s[0], a[j + 1], g[0], g[1]

        lin1, sc1, e1_1, e2_1 = e12(0)
        x1 = lincomb(x, lin1, [(sc1 * e1_1, x_hat0)])
        d1 = field(x1, float(times[1]))
        if self.order == 2:
            lin, sc, e1, e2 = e12(1)
            low = lincomb(x, lin, [(sc * e1, x_hat0)])
            r1 = 0.5
            high = lincomb(x, lin, [(sc * (e1 - e2 / r1), x_hat0), (sc * e2 / r1, d1)])
            return low, high, float(times[-1])
        r1, r2 = 1 / 3, 2 / 3
        lin2, sc2, e1_2, e2_2 = e12(1)
        x2 = lincomb(x, lin2, [(sc2 * (e1_2 - r2 / r1 * e2_2), x_hat0), (sc2 * r2 / r1 * e2_2, d1)])
        d2 = field(x2, float(times[2]))
        lin, sc, e1, e2 = e12(2)
        low = lincomb(x, lin, [(sc * (e1 - e2 / r1), x_hat0), (sc * e2 / r1, d1)])
        high = lincomb(x, lin, [(sc * (e1 - e2 / r2), x_hat0), (sc * e2 / r2, d2)])
        return low, high, float(times[-1])

    def step(self, field, x, i, plan, state, noise):
        sch = plan.schedule
        t, s = plan.t[i], plan.s[i]
        s_end, denoise = end_time(sch, t, s, self.sigma_stop)
        lam_t, lam_s = float(sch.logsnr(t)), float(sch.logsnr(s_end))
        if lam_t < LAM_FLOOR:
            lam_t, t = LAM_FLOOR, float(sch.t_from_logsnr(LAM_FLOOR))
        lam_s = min(lam_s, LAM_CEIL)
        jump = JumpControl(self.rtol, self.atol, denoise and self.sigma_stop is None)
        h, lam, t_cur, steps = self.h_init, lam_t, t, 0
        x_hat = None  # x_hat at (x, t_cur)
        while lam < lam_s - 1e-5:
            h = min(h, lam_s - lam)
            x_hat = field(x, t_cur)
            if jump.accept(x_hat, lam):
                break
            while True:
                low, high, t_new = self._sub(sch, lam, x, x_hat, h, field)
                err = error_ratio(high, low, x, self.rtol, self.atol)
                steps += 1
                if err <= 1.0 or steps >= self.max_steps:
                    break
                h = next_step(h, err, self.order - 1)
            x, lam, t_cur, x_hat = high, lam + h, t_new, None
            h = next_step(h, err, self.order - 1)
        if denoise:
            x = (x_hat if x_hat is not None else field(x, t_cur)).mul(float(sch.alpha(s)))
        return x, state


class EmbeddedPair(NamedTuple):
    """An explicit Runge-Kutta pair: nodes ``c``, stage rows ``a``, the higher-order weights ``b`` and
    the embedded lower-order ones ``b_low`` (first same as last where the last stage is the solution)."""

    c: list
    a: list
    b: list
    b_low: list


#: Dormand-Prince 5(4), first same as last: the seventh stage point is the fifth-order solution.
DOPRI5 = EmbeddedPair(
    c=[0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
    a=[[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
       [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
       [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
       [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
    b=[35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0],
    b_low=[5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])


@dataclass(frozen=True)
class RK45(Adaptive):
    """Dormand-Prince 5(4) on the probability-flow ODE in ``t`` (first same as last). On a discrete
    schedule the ODE's coefficients jump at every training index (``log alpha`` is piecewise linear in
    ``t``), which an error estimate in ``t`` does not see: use :class:`DPMSolverAdaptive` (in logSNR) there."""

    rtol: float = 1e-3
    atol: float = 1e-3
    h_init: float = 0.02
    order = 5

    def step(self, field, x, i, plan, state, noise):
        sch = plan.schedule
        t, s = plan.t[i], plan.s[i]
        s_end, denoise = end_time(sch, t, s, self.sigma_stop)
        jump = JumpControl(self.rtol, self.atol, denoise and self.sigma_stop is None)
        last = [None]  # x_hat of the latest field call (the first-same-as-last stage's is reused)

        def u(y, tau):
            p, q = (float(c) for c in ode_coefficients(sch, torch.tensor(tau, dtype=torch.float64)))
            last[0] = field(y, tau)
            return lincomb(y, p, [(q, last[0])])

        tau, h, k0, steps = t, -self.h_init, None, 0
        x_hat = None  # x_hat at (x, tau)
        while tau > s_end + 1e-12:
            # the ODE is singular at sigma = 0: near it, a step may cover at most 80% of the way to
            # t = 0, so that the error estimate sees the field's growth (one step to 1e-17 passes it)
            h = max(h, s_end - tau, -0.8 * tau if denoise else -math.inf)
            if k0 is None:
                k0, x_hat = u(x, tau), last[0]
            k = [k0]
            if jump.accept(x_hat, float(sch.logsnr(tau))):  # after a rejection tau repeats: no decision
                break
            for j in range(1, 7):
                xj = lincomb(x, 1.0, [(h * a, kk) for a, kk in zip(DOPRI5.a[j], k)])
                k.append(u(xj, tau + DOPRI5.c[j] * h))
            x5 = xj  # the seventh stage point is the fifth-order solution
            x4 = lincomb(x, 1.0, [(h * b, kk) for b, kk in zip(DOPRI5.b_low, k)])
            err = error_ratio(x5, x4, x, self.rtol, self.atol)
            steps += 1
            if err <= 1.0 or steps >= self.max_steps:
                x, tau, k0, x_hat = x5, tau + h, k[6], last[0]
            h = next_step(h, err, 4)
        if denoise:
            x = (x_hat if x_hat is not None else field(x, tau)).mul(float(sch.alpha(s)))
        return x, state

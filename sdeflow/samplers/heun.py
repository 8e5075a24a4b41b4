"""Heun's second-order method on the probability-flow ODE in ``t``, optionally third order.

With ``u(x, t) = p(t) x + q(t) x_hat(x, t)`` (the ODE's field) and ``h = s - t``:

- ``third_order=False`` (EDM's Algorithm 1): ``x' = x_t + h u_0``, ``u_1 = u(x', s)``,
  ``x_s = x_t + h (u_0 + u_1) / 2``. Where ``sigma(s) = 0`` (a final step to clean data) ``u`` is
  undefined at ``s`` and the step is Euler's, as in EDM.
- ``third_order=True`` (Heun's third-order Runge-Kutta method): stages at ``t``, ``t + h/3`` and
  ``t + 2h/3`` (never at ``s``, so also valid on the final step), ``x_s = x_t + h (u_0 + 3 u_2) / 4``.

- :class:`Midpoint`: the explicit midpoint rule, ``x_m = x_t + (h/2) u_0``, ``x_s = x_t + h u(x_m, t + h/2)``,
  second order with two evaluations and none at ``s`` (valid on the final step). On rectified flow it
  is RF-Solver's second-order step: a Taylor step ``x_t + h u_0 + (h^2/2) u'`` with the time
  derivative ``u'`` estimated by the difference quotient ``(u(x_m) - u_0) / (h/2)`` is exactly this rule.
  Run on an increasing grid (:func:`~sdeflow.invert`) it is RF-Solver's inversion.
- :class:`RK4`: the classical fourth-order Runge-Kutta method, stages at ``t``, ``t + h/2`` (twice) and
  ``s``, ``x_s = x_t + h (u_0 + 2 u_1 + 2 u_2 + u_3) / 6``, four evaluations per step; or Kutta's 3/8
  rule (``variant="3/8"``), stages at ``t``, ``t + h/3``, ``t + 2h/3`` and ``s``,
  ``x_s = x_t + h (u_0 + 3 u_1 + 3 u_2 + u_3) / 8``, whose error constant is smaller on some problems. Every explicit
  four-stage fourth-order method evaluates at ``s``, where ``u`` is undefined if ``sigma(s) = 0``; a final
  step to clean data is Heun's third-order step (three evaluations, none at ``s``).

On clean data ``x_hat = x`` for every model, so ``x_hat`` does not fix ``u`` there; a network that
predicts the noise in some form (a velocity, eps, v or EDM network) does, where ``sigma'`` is finite
(rectified flow, EDM, trigonometric; not VP). With ``at_data=True``, Heun and RK4 evaluate that
velocity (:meth:`~sdeflow.denoisers.Denoiser.ode_velocity`) and keep their rule on the last step:
Heun's full step instead of Euler's, RK4's four stages instead of Heun's third-order step, so ``n``
RK4 steps cost ``4n`` evaluations (as flow-matching libraries run it). On a schedule with infinite
``sigma'`` at clean data the last step stays the default one. :func:`sdeflow.sample` refuses a model
that cannot give the velocity before it starts.

References: Kutta, 1901 (the classical fourth-order method, as in Butcher, 2016); Karras et al., "Elucidating the
Design Space of Diffusion-Based Generative Models",
2022, arXiv:2206.00364; Heun, 1900 (third-order method as in Butcher, "Numerical Methods for
Ordinary Differential Equations", 2016); Wang et al., "Taming Rectified Flow for Inversion and
Editing", 2024, arXiv:2411.04746 (RF-Solver).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Stage, Tableau, Weights
from .engine import SingleStep


def _evaluates_at(schedule, info, at_data: bool) -> bool:
    """Whether a step may have a stage at its end ``s``: always above clean data; on clean data with
    ``at_data`` where the schedule's ``sigma'`` is finite (so the model's velocity there is)."""
    return info.s_s != 0 or (at_data and math.isfinite(float(schedule.d_sigma(info.s)))
                             and math.isfinite(float(schedule.d_alpha(info.s))))


@dataclass(frozen=True)
class Heun(SingleStep):
    third_order: bool = False
    at_data: bool = False
    form = "velocity"
    needs_finite_logsnr = False

    @property
    def order(self) -> int:
        return 3 if self.third_order else 2

    @property
    def nfe_per_step(self) -> int:
        return 3 if self.third_order else 2

    def tableau(self, schedule, info):
        h, first = info.s - info.t, Stage(info.t, 1.0, [])
        if self.third_order:
            stages = [first, Stage(info.t + h / 3, 1.0, [h / 3]), Stage(info.t + 2 * h / 3, 1.0, [0.0, 2 * h / 3])]
            return Tableau(stages, Weights(1.0, [h / 4, 0.0, 3 * h / 4]))
        if not _evaluates_at(schedule, info, self.at_data):
            return Tableau([first], Weights(1.0, [h]))
        return Tableau([first, Stage(info.s, 1.0, [h])], Weights(1.0, [h / 2, h / 2]))


@dataclass(frozen=True)
class Midpoint(SingleStep):
    """The explicit midpoint rule in ``t`` (RF-Solver's second-order step on rectified flow)."""

    form = "velocity"
    needs_finite_logsnr = False
    order = 2
    nfe_per_step = 2

    def tableau(self, schedule, info):
        h = info.s - info.t
        return Tableau([Stage(info.t, 1.0, []), Stage(info.t + h / 2, 1.0, [h / 2])], Weights(1.0, [0.0, h]))


@dataclass(frozen=True)
class RK4(SingleStep):
    """A fourth-order Runge-Kutta method in ``t``: the classical one, or with ``variant="3/8"`` Kutta's
    3/8 rule (stages at ``t``, ``t + h/3``, ``t + 2h/3`` and ``s``, weights ``1/8, 3/8, 3/8, 1/8``: the
    ``rk4`` of torchdiffeq and flow_matching). Heun's third-order step onto ``sigma = 0``, or with
    ``at_data=True`` its own step, evaluating the model's velocity there."""

    variant: str = "classical"
    at_data: bool = False
    form = "velocity"
    needs_finite_logsnr = False
    order = 4
    nfe_per_step = 4

    def __post_init__(self):
        if self.variant not in ("classical", "3/8"):
            raise ValueError(f"RK4 variant must be 'classical' or '3/8', got {self.variant!r}")

    def tableau(self, schedule, info):
        if not _evaluates_at(schedule, info, self.at_data):
            return Heun(third_order=True).tableau(schedule, info)
        t, s, h = info.t, info.s, info.s - info.t
        if self.variant == "3/8":
            stages = [Stage(t, 1.0, []), Stage(t + h / 3, 1.0, [h / 3]), Stage(t + 2 * h / 3, 1.0, [-h / 3, h]),
                      Stage(s, 1.0, [h, -h, h])]
            return Tableau(stages, Weights(1.0, [h / 8, 3 * h / 8, 3 * h / 8, h / 8]))
        m = t + h / 2
        stages = [Stage(t, 1.0, []), Stage(m, 1.0, [h / 2]), Stage(m, 1.0, [0.0, h / 2]), Stage(s, 1.0, [0.0, 0.0, h])]
        return Tableau(stages, Weights(1.0, [h / 6, h / 3, h / 3, h / 6]))

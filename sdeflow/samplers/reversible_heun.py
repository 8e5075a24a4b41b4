"""Reversible Heun: a second-order method whose step is undone exactly, one evaluation per step.

For an ODE ``dy/dtau = f(y, tau)`` it carries an extrapolated companion ``z`` (equal to ``y`` at the
start) at which ``f`` is evaluated:

    z_s = 2 y_t - z_t + f(z_t) (tau_s - tau_t),
    y_s = y_t + (f(z_t) + f(z_s)) (tau_s - tau_t) / 2,

undone from ``(y_s, z_s, f(z_s))`` by ``z_t = 2 y_s - z_s - f(z_s) (tau_s - tau_t)`` and
``y_t = y_s - (f(z_t) + f(z_s)) (tau_s - tau_t) / 2``. ``f(z_s)`` is reused by the next step, so a
run of ``n`` steps costs ``n + 1`` evaluations. Two forms of the probability-flow ODE:

- ``form="velocity"`` (default): ``x`` against ``t`` with ``f`` the ODE's velocity, as
  :class:`~.heun.Heun` takes it.
- ``form="data"``: DDIM's data variables, ``y = x / sigma`` against ``tau = alpha / sigma`` with
  ``f = x_hat``; in ``x``, with DDIM's ``r = sigma_s / sigma_t`` and ``q = alpha_s - alpha_t r``,
  ``z_s = r (2 y_t - z_t) + q x_hat(z_t)`` and ``y_s = r y_t + q (x_hat(z_t) + x_hat(z_s)) / 2``.
  Undoing a step divides by ``r``, which is small on large steps towards the data: the gap between
  ``z`` and ``y`` that a few-step inversion starts from is then amplified into noise far larger
  than the prior's (355x its scale for one step on the ring mixture, 1.2x at 20 steps), while the
  velocity form, undone without division, stays at the prior's scale. The velocity form was also
  the more accurate in every case measured (see ``benchmarks/inversion.py``).

A final step to ``t = 0`` (``sigma_s = 0``, where the model is not evaluated) is Euler's (DDIM's in
the data form) and cannot be undone. The companion is ``z``.

Reference: Kidger, Foster, Li, Lyons, "Efficient and Accurate Gradients for Neural SDEs", 2021,
arXiv:2105.13493 (reversible Heun; here on the probability-flow ODE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .base import Plan
from .engine import Conversion, ddim_coefficients, lincomb, native_conversions, step_infos, to_native
from .reversible import Reversible

FORMS = ("data", "velocity")


class HeunRow(NamedTuple):
    """``z_s = c (2 y - z) + w f(z)``, ``y_s = c y + w (f(z) + f(z_s)) / 2``; ``to_data``: a final Euler step
    to ``t = 0``; ``f`` the output in the form by ``conv_t`` and ``conv_s``."""

    c: float
    w: float
    to_data: bool
    conv_t: Conversion
    conv_s: Conversion


@dataclass(frozen=True)
class ReversibleHeun(Reversible):
    form: str = "velocity"
    order = 2
    evaluates_first = False  # at the extrapolated companion
    carries_evaluation = True

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"ReversibleHeun form must be one of {', '.join(FORMS)}, got {self.form!r}")

    def count_nfe(self, schedule, ts):
        return ts.numel() - 1 + (1 if float(schedule.sigma(ts[-1])) > 0 else 0)

    def prepare(self, schedule, ts):
        infos = step_infos(schedule, ts)
        conv = native_conversions(self.form, schedule, ts.tolist())
        coef = []
        for i, v in enumerate(infos):
            # (c, w): z_s = c (2 y - z) + w f(z), y_s = c y + w (f(z) + f(z_s)) / 2
            c, w = ddim_coefficients(v.a_t, v.s_t, v.a_s, v.s_s) if self.form == "data" else (1.0, v.s - v.t)
            coef.append(HeunRow(c, w, v.s_s == 0, conv[i], conv[i + 1]))
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, self.count_nfe(schedule, ts))

    # state: (z, f(z) or None)
    def init_state(self, x, plan):
        return x, None

    def start_state(self, x, companion, plan):
        return companion, None

    def companion(self, state):
        return state[0]

    def step(self, field, x, i, plan, state, noise):
        c, w, to_data, conv_t, conv_s = plan.coef[i]
        z, f_z = state
        if f_z is None:
            f_z = to_native(z, field(z, plan.t[i]), conv_t)
        if to_data:
            x_s = lincomb(x, c, [(w, f_z)])
            return x_s, (x_s, None)
        z_s = lincomb(x, 2 * c, [(-c, z), (w, f_z)])
        f_s = to_native(z_s, field(z_s, plan.s[i]), conv_s)
        return lincomb(x, c, [(w / 2, f_z), (w / 2, f_s)]), (z_s, f_s)

    def end_state(self, field, x, plan):
        return x, to_native(x, field(x, plan.s[-1]), plan.coef[-1].conv_s)

    def unstep(self, field, x, i, plan, state):
        c, w, _, conv_t, _ = plan.coef[i]
        z_s, f_s = state
        z = lincomb(x, 2 / c, [(-1 / c, z_s), (-w / c, f_s)])
        f_z = to_native(z, field(z, plan.t[i]), conv_t)
        y = lincomb(x, 1 / c, [(-w / (2 * c), f_z), (-w / (2 * c), f_s)])
        return y, (z, f_z if i > 0 else None)

    def undoable(self, plan):
        return [not to_data for _, _, to_data, _, _ in plan.coef]

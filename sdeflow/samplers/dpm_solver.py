"""Single-step DPM-Solver, orders 1 to 3, in noise form (DPM-Solver) or data form (DPM-Solver++).

With ``h = lam_s - lam_t``, intermediate points at logSNR ``lam_t + r h``, ``L`` the linear part
(``sigma_s/sigma_t`` in data form, ``alpha_s/alpha_t`` in noise form), ``S`` the scale
(``alpha`` in data form, ``-sigma`` in noise form), ``E1(H) = H int_0^1 e^{c(1-v)} dv`` and
``E2(H) = H int_0^1 e^{c(1-v)} v dv`` with ``c = -H`` (data) or ``c = H`` (noise):

- order 1: ``x_s = L x + S_s E1(h) D_0`` (DDIM);
- order 2 (``r_1 = 1/2``): ``x_1 = L x + S_1 E1(r_1 h) D_0``, then
  ``x_s = L x + S_s E1(h) [D_0 + (D_1 - D_0)/(2 r_1)]`` (``"midpoint"``) or
  ``x_s = L x + S_s [E1(h) D_0 + E2(h) (D_1 - D_0)/r_1]`` (``"taylor"``);
- order 3 (``r_1 = 1/3, r_2 = 2/3``): ``x_2 = L x + S_2 [E1(r_2 h) D_0 + (r_2/r_1) E2(r_2 h)(D_1 - D_0)]``
  and ``x_s = L x + S_s [E1(h) D_0 + E2(h) (D_2 - D_0)/r_2]``.

``DPMSolver(order=2, form="data")`` is DPM-Solver++(2S). One grid step costs ``order`` NFE.

References: Lu et al., 2022, arXiv:2206.00927 (Algorithms 1-2); Lu et al., 2022, arXiv:2211.01095.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Stage, Tableau, Weights
from .engine import SingleStep
from .expint import exp_moments, linear_part


@dataclass(frozen=True)
class DPMSolver(SingleStep):
    order: int = 2
    form: str = "noise"
    variant: str = "midpoint"

    def __post_init__(self):
        if self.order not in (1, 2, 3):
            raise ValueError(f"DPMSolver order must be 1, 2 or 3, got {self.order}")
        if self.form not in ("data", "noise") or self.variant not in ("midpoint", "taylor"):
            raise ValueError("form must be 'data' or 'noise' and variant 'midpoint' or 'taylor'")

    @property
    def nfe_per_step(self) -> int:
        return self.order

    def _point(self, schedule, info, r):
        """Time, linear part, scale, E1 and E2 for the sub-step from t to logSNR lam_t + r h."""
        if r == 1.0:
            tau, a, s = info.s, info.a_s, info.s_s
        else:
            tau = float(schedule.t_from_logsnr(info.lam_t + r * info.h))
            a, s = float(schedule.alpha(tau)), float(schedule.sigma(tau))
        big_h = r * info.h
        g = exp_moments(-big_h if self.form == "data" else big_h, 2) * big_h
        lin, scale = linear_part(self.form, info.a_t, info.s_t, a, s)
        return tau, lin, scale, g[0], g[1]

    def tableau(self, schedule, info):
        _, lin, sc, e1, e2 = self._point(schedule, info, 1.0)
        first = Stage(info.t, 1.0, [])
        if self.order == 1:
            return Tableau([first], Weights(lin, [sc * e1]))
        if self.order == 2:
            r1 = 0.5
            tau1, lin1, sc1, e1_1, _ = self._point(schedule, info, r1)
            if self.variant == "midpoint":
                final = [sc * e1 * (1 - 0.5 / r1), sc * e1 * 0.5 / r1]
            else:
                final = [sc * (e1 - e2 / r1), sc * e2 / r1]
            return Tableau([first, Stage(tau1, lin1, [sc1 * e1_1])], Weights(lin, final))
        r1, r2 = 1 / 3, 2 / 3
        tau1, lin1, sc1, e1_1, _ = self._point(schedule, info, r1)
        tau2, lin2, sc2, e1_2, e2_2 = self._point(schedule, info, r2)
        stage2 = [sc2 * (e1_2 - r2 / r1 * e2_2), sc2 * r2 / r1 * e2_2]
        final = [sc * (e1 - e2 / r2), 0.0, sc * e2 / r2]
        return Tableau([first, Stage(tau1, lin1, [sc1 * e1_1]), Stage(tau2, lin2, stage2)], Weights(lin, final))

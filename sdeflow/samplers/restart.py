"""Restart sampling: a deterministic ODE pass with forward noise jumps and backward ODE passes
over chosen intervals.

The main pass runs ``solver`` over the grid. When it reaches the grid time ``t_lo`` nearest to the
noise level ``rho_lo`` of an interval ``(rho_lo, rho_hi, n_steps, repeats)`` (``rho = sigma/alpha``),
it restarts ``repeats`` times: a jump forward to ``t_hi`` (noise level ``rho_hi``) with the exact
forward transition ``x_hi = (alpha_hi/alpha_lo) x + sqrt(sigma_hi^2 - (alpha_hi/alpha_lo)^2 sigma_lo^2) z``,
then ``n_steps`` steps of ``solver`` back to ``t_lo`` on a Karras (rho = 7) grid. The jump's fresh
noise contracts the errors accumulated so far; the ODE passes keep the discretisation error small.
Jumps cost no evaluation.

``solver`` must be single-step (multistep history would span the jumps). Intervals are processed
from high to low noise; an interval whose ``rho_lo`` lies outside the grid is skipped.

Reference: Xu et al., "Restart Sampling for Improving Generative Processes", 2023,
arXiv:2306.14878.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from .base import Plan, Sampler, Wrapper
from .heun import Heun

RESTART_DRAW = 32  # jump noise draws: RESTART_DRAW + index of the jump at this main step


class Pass(NamedTuple):
    """Step ``m`` of the inner plan ``plan`` (0: the main pass; ``k + 1``: restart pass ``k``)."""

    plan: int
    m: int


class Jump(NamedTuple):
    """The forward jump ``x <- c_x x + c_z z`` with noise draw ``draw``."""

    c_x: float
    c_z: float
    draw: int


@dataclass(frozen=True)
class Restart(Wrapper):
    solver: Sampler = field(default_factory=Heun)
    intervals: tuple = ((0.1, 2.0, 4, 2),)
    stochastic = True
    evaluates_first = False  # a jump step evaluates nothing

    @property
    def wrapped(self) -> Sampler:
        return self.solver

    def __post_init__(self):
        if not isinstance(self.solver, Sampler) or self.solver.has_history or self.solver.stochastic \
                or self.solver.adaptive:
            raise ValueError("Restart needs a deterministic single-step ODE solver (Heun, EDMHeun, DPMSolver, DDIM, Euler)")
        for iv in self.intervals:
            if len(iv) != 4 or not 0 < iv[0] < iv[1] or int(iv[2]) < 1 or int(iv[3]) < 0:
                raise ValueError("each restart interval is (rho_lo, rho_hi, n_steps, repeats) with "
                                 f"0 < rho_lo < rho_hi, n_steps >= 1, repeats >= 0; got {iv!r}")

    def count_nfe(self, schedule, ts):
        return self.prepare(schedule, ts).nfe

    def init_state(self, x, plan):
        return None

    @property
    def convergence_order(self) -> int:
        """Fixed restart intervals re-run a fixed number of ODE steps: the result converges to the
        restart process' own law, not to the data at a rate in the main grid."""
        return 0

    def prepare(self, schedule, ts):
        from ..grids import karras_grid

        main = self.solver.prepare(schedule, ts)
        tl = ts.tolist()
        ops, subs, nfe = [], [], main.nfe
        t_of, s_of = [], []
        rho_grid = schedule.noise_to_signal(ts).tolist()
        at = {}
        for rho_lo, rho_hi, n_steps, repeats in sorted(self.intervals, key=lambda iv: -iv[0]):
            inside = [j for j in range(1, len(tl)) if tl[j] > 0 and 0 < rho_grid[j] < math.inf]
            if not inside or not min(rho_grid[j] for j in inside) <= rho_lo <= max(rho_grid[j] for j in inside):
                continue
            j = min(inside, key=lambda j: abs(math.log(rho_grid[j] / rho_lo)))
            t_lo = tl[j]
            t_hi = min(float(schedule.t_from_sigma_ratio(rho_hi)), 1.0)
            if t_hi <= t_lo:
                continue
            sub_ts = karras_grid(int(n_steps), schedule, t_max=t_hi, t_min=t_lo, denoise_to_zero=False)
            sub = self.solver.prepare(schedule, sub_ts)
            subs.append(sub)
            a_lo, s_lo = float(schedule.alpha(t_lo)), float(schedule.sigma(t_lo))
            a_hi, s_hi = float(schedule.alpha(t_hi)), float(schedule.sigma(t_hi))
            r = a_hi / a_lo
            jump = (r, math.sqrt(max(0.0, s_hi ** 2 - (r * s_lo) ** 2)))
            at.setdefault(j - 1, []).append((len(subs) - 1, jump, int(repeats)))
            nfe += int(repeats) * sub.nfe
        for i in range(len(tl) - 1):
            ops.append(Pass(0, i))
            t_of.append(main.t[i]), s_of.append(main.s[i])
            for k, (sub_index, jump, repeats) in enumerate(at.get(i, [])):
                sub = subs[sub_index]
                for rep in range(repeats):
                    ops.append(Jump(*jump, RESTART_DRAW + k * 1000 + rep))
                    t_of.append(sub.s[-1]), s_of.append(sub.t[0])
                    for m in range(len(sub.t)):
                        ops.append(Pass(sub_index + 1, m))
                        t_of.append(sub.t[m]), s_of.append(sub.s[m])
        return Plan(t_of, s_of, ops, nfe, inner=(main, *subs))

    def step(self, field, x, i, plan, state, noise):
        op = plan.coef[i]
        if isinstance(op, Jump):
            return x.mul(op.c_x).add_(noise(draw=op.draw), alpha=op.c_z), state
        x, _ = self.solver.step(field, x, op.m, plan.inner[op.plan], None, noise)
        return x, state

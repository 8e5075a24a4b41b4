"""EDICT: two coupled DDIM sequences that undo each other's steps.

The state is a pair ``(x, y)``, equal at the start. A step from ``t`` to ``s`` moves each sequence
by DDIM with the model evaluated at the other one, then mixes them with ``p``:

    x' = r x + q x_hat(y, t),        y' = r y + q x_hat(x', t),
    x_s = p x' + (1 - p) y',         y_s = p y' + (1 - p) x_s,

with DDIM's ``r = sigma_s / sigma_t`` and ``q = alpha_s - alpha_t r``. Every line solves for its
left-hand input given the later ones, so the step is undone exactly with the same two evaluations.
First order; two evaluations per step. The returned sample is ``x``; the companion is ``y``.

The coupling here is written with the data prediction, which keeps every coefficient finite on
flows (``alpha = 0`` at ``t = 1``); coupling the noise prediction instead, as the paper writes it,
moves ``(sigma_s/sigma_t - alpha_s/alpha_t) (y - x)`` between the two terms of each line, a term
of the size of the gap between the sequences. A final step to ``t = 0`` (``r = 0``) cannot be undone.

Reference: Wallace, Gokul, Naik, "EDICT: Exact Diffusion Inversion via Coupled Transformations",
2023, arXiv:2211.12446.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from .engine import ddim_coefficients, lincomb, step_infos
from .base import Plan
from .reversible import Reversible


class CoupledRow(NamedTuple):
    """DDIM's ``x' = r x + q x_hat(y, t)`` for each of the two sequences."""

    r: float
    q: float


@dataclass(frozen=True)
class EDICT(Reversible):
    p: float = 0.93
    order = 1
    nfe_per_step = 2
    evaluates_first = False  # at the companion sequence

    def __post_init__(self):
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and 0.5 <= self.p <= 1):
            raise ValueError(f"EDICT mixing p must be in [0.5, 1] (the paper uses 0.93), got {self.p!r}")

    def prepare(self, schedule, ts):
        coef = [CoupledRow(*ddim_coefficients(v.a_t, v.s_t, v.a_s, v.s_s)) for v in step_infos(schedule, ts)]
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, 2 * len(coef))

    def init_state(self, x, plan):
        return x

    def start_state(self, x, companion, plan):
        return companion

    def companion(self, state):
        return state

    def step(self, field, x, i, plan, state, noise):
        r, q = plan.coef[i]
        t, p = plan.t[i], float(self.p)
        x1 = lincomb(x, r, [(q, field(state, t))])
        y1 = lincomb(state, r, [(q, field(x1, t))])
        x_s = lincomb(x1, p, [(1 - p, y1)])
        return x_s, lincomb(y1, p, [(1 - p, x_s)])

    def end_state(self, field, x, plan):
        return x

    def unstep(self, field, x, i, plan, state):
        r, q = plan.coef[i]
        t, p = plan.t[i], float(self.p)
        y1 = lincomb(state, 1 / p, [(-(1 - p) / p, x)])
        x1 = lincomb(x, 1 / p, [(-(1 - p) / p, y1)])
        y = lincomb(y1, 1 / r, [(-q / r, field(x1, t))])
        return lincomb(x1, 1 / r, [(-q / r, field(y, t))]), y

    def undoable(self, plan):
        return [r != 0 for r, _ in plan.coef]

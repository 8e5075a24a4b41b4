"""Recurrence: each step of a sampler taken several times, re-noised back to its start in between.

Between the takes of step ``i`` from ``t`` to ``s`` the state goes back to ``t`` by the exact forward
transition ``x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) z``, so every
take starts from a state of the right noise level: the repeated steps let whatever acts on a step
(a guidance term, a projection on measurements) act more often per noise level. This is TFG's
recurrence and RePaint's resampling (with a projection: :class:`Recurrent` applies ``project`` after
every take, as inpainting replaces the known entries by the noised measurement).

References: Lugmayr et al., "RePaint", CVPR 2022, arXiv:2201.09865 (resampling, jump length 1); Ye et al.,
"TFG: Unified Training-Free Guidance for Diffusion Models", NeurIPS 2024, arXiv:2409.15761 (recurrence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from .base import Plan, Sampler, Wrapper
from .ddim import DDIM

RECUR_DRAW = 48  # the recurrence's re-noising draws start here, above any inner sampler's own
PROJECT_DRAW = 40  # a projection's draws


class RecurRow(NamedTuple):
    """Re-noising from the step's end back to its start: ``x <- c_x x + c_z z``."""

    c_x: float
    c_z: float


@dataclass(frozen=True)
class Recurrent(Wrapper):
    """Each step of ``inner`` taken ``times`` times with the re-noising of the module docstring between the
    takes (the final step to clean data too); ``project(x, s, noise) -> x``, when given, is applied after
    every take (``noise(draw)`` draws the step's noise). ``inner`` must carry no history."""

    inner: Sampler = field(default_factory=lambda: DDIM(eta=1.0))
    times: int = 2
    project: Callable | None = None
    stochastic = True

    @property
    def wrapped(self) -> Sampler:
        return self.inner

    def __post_init__(self):
        self.check_wrapped()
        if self.inner.has_history or self.inner.adaptive:
            raise ValueError(f"recurrence repeats steps one at a time: {type(self.inner).__name__} carries history "
                             "between steps or chooses its own (use DDIM, DDPM, Euler, Heun, DPM-Solver single-step)")
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise ValueError(f"times must be an integer >= 1, got {self.times!r}")

    @property
    def convergence_order(self) -> int:
        return 0  # the re-noising adds fresh noise per step: a different process, not a discretisation

    def count_nfe(self, schedule, ts):
        return self.prepare(schedule, ts).nfe

    def prepare(self, schedule, ts):
        inner = self.inner.prepare(schedule, ts)
        rows, nfe = [], 0
        per_step = (inner.nfe or 0) / max(1, len(inner.t))
        for t, s in zip(inner.t, inner.s):
            a_t, s_t, a_s, s_s = (float(v) for v in (schedule.alpha(t), schedule.sigma(t), schedule.alpha(s),
                                                     schedule.sigma(s)))
            if a_s == 0:  # nothing to re-noise from
                rows.append(None)
                nfe += per_step
                continue
            r = a_t / a_s
            rows.append(RecurRow(r, math.sqrt(max(0.0, s_t * s_t - (r * s_s) ** 2))))
            nfe += per_step * self.times
        return Plan(inner.t, inner.s, rows, None if inner.nfe is None else int(round(nfe)), inner=(inner,))

    def step(self, field, x, i, plan, state, noise):
        row, inner = plan.coef[i], plan.inner[0]
        takes = 1 if row is None else self.times
        for k in range(takes):
            if k > 0:
                x = x.mul(row.c_x).add_(noise(draw=RECUR_DRAW + k), alpha=row.c_z)
                state = self.inner.after_external_update(state)
            x, state = self.inner.step(field, x, i, inner, state, noise if k == 0 else _Take(noise, k))
            if self.project is not None:
                x = self.project(x, plan.s[i], lambda draw=0: noise(draw=PROJECT_DRAW + 16 * k + draw))
        return x, state


class _Take:
    """The step's noise for take ``k > 0``: draws of their own (a repeated take is not the same path)."""

    def __init__(self, noise, k: int):
        self.noise, self.k = noise, k

    def __call__(self, draw: int = 0, span=None):
        return self.noise(draw=RECUR_DRAW + 16 * self.k + draw)

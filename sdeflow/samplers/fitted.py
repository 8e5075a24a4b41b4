"""A fixed-grid sampler whose coefficients were fitted to one model on one grid.

Every sampler built on the linear engines (:class:`~.sde.AffineStep`, :class:`~.engine.Multistep`,
:class:`~.engine.SingleStep`) plans a step as numbers: the weight of the current state and the
weights of the model outputs it combines. Those numbers come from a derivation that holds for every
model (exactness on polynomials in logSNR, Runge-Kutta order conditions). :class:`FittedSampler`
keeps the base sampler's step rule and its grid but scales each of those numbers by a fitted factor,
so that at a handful of steps the sampler follows *this* model's trajectories more closely
(solver coefficients learned against a teacher, the S4S construction; :mod:`sdeflow.tuning` fits
them with :func:`~sdeflow.tuning.optimize_coefficients`).

The coefficients are the nonzero numbers of the base plan except evaluation times and changes of
variables (the fields each plan record lists as ``STRUCTURE``, read by :func:`~.base.map_numbers`);
zeros are structure (a term a step does not compute) and stay zero. :func:`coefficient_values` lists them in a fixed order and
:func:`with_coefficients` puts new values (floats, or tensors when fitting through autograd) in their
places. Each coefficient ``c`` becomes ``c (1 + r)`` with a fitted relative change ``r`` (scale-free: the
coefficients of one plan span decades); with every ``r = 0`` a :class:`FittedSampler` is its base sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import Schedule
from .base import Plan, Sampler, Wrapper, is_number, map_numbers


def coefficient_values(coef) -> list[float]:
    """The coefficients of a plan's ``coef`` (see the module docstring), in order."""
    out: list[float] = []
    map_numbers(coef, lambda v: out.append(v) if is_number(v) else None, coefficients=True)
    return out


def with_coefficients(coef, values):
    """``coef`` with its coefficients replaced, in order, by ``values`` (as many as
    :func:`coefficient_values` lists)."""
    it = iter(values)
    new = map_numbers(coef, lambda v: next(it) if is_number(v) else v, coefficients=True)
    if next(it, None) is not None:
        raise ValueError("more values than the plan has coefficients")
    return new


def check_fittable(sampler: Sampler, name: str | None = None) -> None:
    """Refuse a sampler whose coefficients cannot be fitted: one whose plan is not linear numbers, or a
    stochastic one."""
    label = name or type(sampler).__name__
    if not sampler.linear_plan or sampler.adaptive or sampler.reversible:
        raise ValueError(f"{label} has no fixed linear step rule to fit: coefficients are fitted for samplers built on "
                         "the linear engines (DDIM, Euler, Heun, midpoint, RK4, DPM-Solver(++), UniPC, DEIS, iPNDM, ...)")
    if sampler.stochastic:
        raise ValueError(f"{label} is stochastic: coefficients are fitted for deterministic samplers")


@dataclass(frozen=True)
class FittedSampler(Wrapper):
    """``base`` with each coefficient ``c`` of its plan on the grid ``ts`` replaced by ``c (1 + r)``, with
    ``shift`` holding one relative change ``r`` per coefficient, in the order of :func:`coefficient_values`.
    It samples on that grid only."""

    base: Sampler = None
    ts: tuple = ()
    shift: tuple = ()

    def __post_init__(self):
        check_fittable(self.base)
        if len(self.ts) < 2:
            raise ValueError("a fitted sampler needs the grid its coefficients were fitted on (at least two times)")
        if not all(math.isfinite(v) for v in self.shift):
            raise ValueError("fitted coefficient shifts must be finite numbers")
        object.__setattr__(self, "ts", tuple(float(t) for t in self.ts))
        object.__setattr__(self, "shift", tuple(float(r) for r in self.shift))

    @property
    def wrapped(self) -> Sampler:
        return self.base

    def inner_plan(self, plan: Plan) -> Plan:
        return plan  # the base's own plan, its coefficients scaled

    @property
    def linear_plan(self) -> bool:
        return True

    def check_grid(self, ts: torch.Tensor) -> None:
        mine = torch.tensor(self.ts, dtype=torch.float64)
        given = torch.as_tensor(ts, dtype=torch.float64).flatten().cpu()
        if given.shape != mine.shape or not torch.allclose(given, mine, rtol=1e-9, atol=1e-12):
            raise ValueError(f"these coefficients were fitted on the {len(self.ts) - 1}-step grid "
                             f"{', '.join(f'{t:.6g}' for t in self.ts)}; sample on that grid")

    def prepare(self, schedule: Schedule, ts: torch.Tensor) -> Plan:
        self.check_grid(ts)
        plan = self.base.prepare(schedule, ts)
        values = coefficient_values(plan.coef)
        if len(values) != len(self.shift):
            raise ValueError(f"{len(self.shift)} coefficient shifts given, but {type(self.base).__name__} plans "
                             f"{len(values)} coefficients on this grid and schedule (fitted for another sampler or schedule?)")
        plan.coef = with_coefficients(plan.coef, [v * (1.0 + r) for v, r in zip(values, self.shift)])
        return plan

    def step(self, field, x, i, plan, state, noise):
        return self.base.step(field, x, i, plan, state, noise)

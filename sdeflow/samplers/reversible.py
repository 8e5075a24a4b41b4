"""Algebraically reversible samplers: steps that can be undone exactly, without solving anything.

A reversible sampler carries a second state next to ``x`` (the earlier point for two-step methods,
the coupled sequence of EDICT, the extrapolated point of reversible Heun). One step maps the pair
``(x_t, state_t)`` to ``(x_s, state_s)`` and :meth:`Reversible.unstep` maps it back with the same
number of model evaluations, exactly in exact arithmetic. Inverting a whole run from the data is
then a sequence of unsteps from :meth:`Reversible.end_state`, the pair that the run's last step
produces given only its output (one explicit inverse step supplies the missing half; this is the
only approximate part, and it only sets which of the many pairs ending at the data is returned).

The pair found for the data reproduces it exactly when sampling starts from it:
``sample(..., x_init=inv.noise, companion=inv.companion)``, where the companion is the second state
at the start (see each sampler). Without a companion a run starts as any sampler does, from ``x``
alone.

:class:`TwoStep` is the engine of the two-step methods ``x_{i+1} = c_prev x_{i-1} + c_x x_i + c_hat
x_hat(x_i)`` (BDIA, O-BELM): invertible wherever ``c_prev != 0``. Their first step has no earlier
point; it is DDIM plus an offset, the companion (zero when sampling from noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from .base import Plan, Sampler
from .engine import ddim_coefficients, lincomb, step_infos


@dataclass(frozen=True)
class Reversible(Sampler):
    """Base class: a deterministic step that :meth:`unstep` undoes exactly (see the module docstring)."""

    reversible = True
    has_history = True  # the second state

    def start_state(self, x: torch.Tensor, companion: torch.Tensor, plan: Plan):
        """The state at the grid's start given the companion (what :meth:`companion` returns)."""
        raise NotImplementedError

    def companion(self, state) -> torch.Tensor:
        """The part of a start state that ``x`` does not determine."""
        raise NotImplementedError

    def end_state(self, field, x: torch.Tensor, plan: Plan):
        """A state that the last step of ``plan`` may have produced with output ``x``."""
        raise NotImplementedError

    def unstep(self, field, x: torch.Tensor, i: int, plan: Plan, state):
        """``(x, state)`` before step ``i`` given ``(x, state)`` after it."""
        raise NotImplementedError

    def undoable(self, plan: Plan) -> list[bool]:
        """Per step, whether :meth:`unstep` can undo it (a step that forgets its input cannot)."""
        raise NotImplementedError

    #: Why a step cannot be undone and what to do instead (completes :meth:`check_invertible`'s message).
    invertibility_hint: ClassVar[str] = "a step to t = 0 forgets its input; end the grid above 0"

    def check_invertible(self, plan: Plan) -> None:
        """Refuse a grid on which some step cannot be undone."""
        for i, ok in enumerate(self.undoable(plan)):
            if not ok:
                raise ValueError(f"{type(self).__name__}'s step {i} (from t = {plan.t[i]:.6g} to {plan.s[i]:.6g}) "
                                 f"cannot be undone: {self.invertibility_hint}")


class TwoStepRow(NamedTuple):
    """``x_{i+1} = c_prev x_{i-1} + c_x x_i + c_hat x_hat(x_i, t_i)``."""

    c_prev: float
    c_x: float
    c_hat: float


class Back(NamedTuple):
    """The explicit inverse step ``x_t = c_x x_s + c_hat x_hat(x_s, s)`` (DDIM backwards)."""

    c_x: float
    c_hat: float


@dataclass(frozen=True)
class TwoStep(Reversible):
    """Engine of ``x_{i+1} = c_prev x_{i-1} + c_x x_i + c_hat x_hat(x_i, t_i)`` with DDIM plus the
    companion offset as the first step. Subclasses implement :meth:`two_step_coefficients`."""

    def two_step_coefficients(self, prev, info) -> tuple[float, float, float]:
        """``(c_prev, c_x, c_hat)`` of the step described by ``info`` (a
        :class:`~.engine.StepInfo64`) given ``prev``, the step before it."""
        raise NotImplementedError

    def prepare(self, schedule, ts):
        infos = step_infos(schedule, ts)
        coef = []
        for i, info in enumerate(infos):
            if i == 0:
                coef.append(TwoStepRow(0.0, *ddim_coefficients(info.a_t, info.s_t, info.a_s, info.s_s)))
            else:
                coef.append(TwoStepRow(*self.two_step_coefficients(infos[i - 1], info)))
        last = infos[-1]
        back = Back(*ddim_coefficients(last.a_s, last.s_s, last.a_t, last.s_t)) if last.s_s > 0 else None
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, len(infos), end=back)

    # state: (x_{i-1} or None before the first step, offset of the first step or None)
    def init_state(self, x, plan):
        return None, None

    def start_state(self, x, companion, plan):
        return None, companion

    def companion(self, state):
        return state[1]

    def step(self, field, x, i, plan, state, noise):
        prev, offset = state
        c_prev, c_x, c_hat = plan.coef[i]
        terms = [(c_hat, field(x, plan.t[i]))]
        if prev is not None:
            terms.append((c_prev, prev))
        elif offset is not None:
            terms.append((1.0, offset))
        return lincomb(x, c_x, terms), (x, None)

    def end_state(self, field, x, plan):
        c_x, c_hat = plan.end
        return lincomb(x, c_x, [(c_hat, field(x, plan.s[-1]))]), None

    def unstep(self, field, x, i, plan, state):
        cur = state[0]
        c_prev, c_x, c_hat = plan.coef[i]
        rest = lincomb(x, 1.0, [(-c_x, cur), (-c_hat, field(cur, plan.t[i]))])
        if i == 0:
            return cur, (None, rest)
        return cur, (rest.div_(c_prev), None)

    def undoable(self, plan):
        return [i == 0 or c_prev != 0 for i, (c_prev, _, _) in enumerate(plan.coef)]

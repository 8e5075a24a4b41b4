"""The sampler interface: an immutable step rule with its coefficients planned once per grid.

``plan = sampler.prepare(schedule, ts)`` computes every per-step coefficient in float64 before
the loop starts and stores them as Python floats (so a step launches no scalar kernels and never
synchronises with the device). ``x, state = sampler.step(field, x, i, plan, state, noise)`` takes
step ``i`` from ``plan.t[i]`` to ``plan.s[i]``. ``field(x, t)`` returns ``x_hat``; ``noise(draw=0)``
returns standard normal noise for this step, and ``noise(span=(t, s))`` the noise of a reverse-SDE
step over ``[s, t]`` (a Brownian-tree source makes it an increment of one fixed path). Multistep
history travels in ``state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ..schedules import Schedule

Field = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class Plan:
    """Everything a sampler needs about the grid, computed before sampling.

    ``t[i]``/``s[i]``: start and end time of step ``i``; ``coef[i]``: that step's coefficients;
    ``nfe``: the number of field evaluations the whole run will take (``None`` if only known
    afterwards); ``inplace``: set by the loop when nothing else holds the state, so a step may
    overwrite its input ``x`` once it no longer needs it."""

    t: list[float]
    s: list[float]
    coef: list[tuple]
    nfe: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    inplace: bool = False
    ts: Any = None


@dataclass(frozen=True)
class Sampler:
    """Base class. Subclasses set ``order`` and ``nfe_per_step`` and implement
    :meth:`coefficients` (float64 tensors over all steps at once) and :meth:`step`."""

    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    #: Error-controlled: step sizes are chosen during sampling (shared by the batch), NFE is counted.
    adaptive: ClassVar[bool] = False
    #: A step uses statistics of the whole batch (a shared step size): results depend on the batch.
    couples_batch: ClassVar[bool] = False

    @property
    def convergence_order(self) -> int:
        """Global order of accuracy on smooth grids (what the convergence tests fit)."""
        return self.order

    def coefficients(self, schedule: Schedule, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-step coefficients for steps from ``t`` to ``s`` (both ``(n,)`` float64)."""
        return ()

    def count_nfe(self, schedule: Schedule, ts: torch.Tensor) -> int:
        return (ts.numel() - 1) * self.nfe_per_step

    def prepare(self, schedule: Schedule, ts: torch.Tensor) -> Plan:
        t, s = ts[:-1], ts[1:]
        cols = [torch.as_tensor(c, dtype=torch.float64).expand(t.shape) for c in self.coefficients(schedule, t, s)]
        coef = list(zip(*[c.tolist() for c in cols])) if cols else [()] * t.numel()
        return Plan(t.tolist(), s.tolist(), coef, self.count_nfe(schedule, ts))

    def init_state(self, x: torch.Tensor, plan: Plan) -> Any:
        return None

    def after_external_update(self, state: Any) -> Any:
        """The state to continue from after something else (a corrector) moved ``x``: drop any
        model evaluation cached for the old ``x``."""
        return state

    def step(self, field: Field, x: torch.Tensor, i: int, plan: Plan, state: Any,
             noise: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


def ode_coefficients(schedule: Schedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability-flow ODE as ``dx/dt = p(t) x + q(t) x_hat`` with ``p = sigma'/sigma`` and
    ``q = alpha' - alpha sigma'/sigma`` (from ``dx/dt = alpha' x_hat + sigma' eps_hat``)."""
    ds_over_s = schedule.d_sigma(t) / schedule.sigma(t)
    return ds_over_s, schedule.d_alpha(t) - schedule.alpha(t) * ds_over_s

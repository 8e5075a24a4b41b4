"""The sampler interface: an immutable step rule with its coefficients planned once per grid.

A new sampler subclasses one of three engines and computes only its coefficients, returned as one
of the named records below; the engine owns the loop body, the history and the NFE count:

- :class:`~sdeflow.samplers.sde.AffineStep` (one evaluation): ``step_coefficients`` returns an
  :class:`Affine`, ``x_s = c_x x_t + c_hat x_hat(x_t, t) + c_z z`` (DDIM, DDPM, Euler, Euler-Maruyama);
- :class:`~sdeflow.samplers.engine.Multistep`: ``weights`` returns :class:`Weights`,
  ``x_s = c_x x_t + sum_j c_j D_{i-j}`` over stored outputs (DPM-Solver(++) multistep, UniPC, DEIS, iPNDM);
- :class:`~sdeflow.samplers.engine.SingleStep`: ``tableau`` returns a :class:`Tableau` of
  :class:`Stage` s and a final :class:`Weights` (Heun, DPM-Solver single-step, EDM's Heun).

Reversible samplers (:mod:`.reversible`) also implement ``unstep``, which undoes a step exactly; the
two-step ones (BDIA, O-BELM) subclass its :class:`~.reversible.TwoStep` engine and return
``(c_prev, c_x, c_hat)`` per step. Samplers that compose others (restart, predictor-corrector,
churn) or choose their steps while sampling (the adaptive ones) implement :meth:`Sampler.prepare`
and :meth:`Sampler.step` directly.

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
from typing import Any, Callable, ClassVar, NamedTuple

import torch

from ..schedules import Schedule

Field = Callable[[torch.Tensor, float], torch.Tensor]


class Affine(NamedTuple):
    """One affine step: ``x_s = c_x x_t + c_hat x_hat(x_t, t) + c_z z`` (``z``: the step's noise)."""

    c_x: float
    c_hat: float
    c_z: float = 0.0


class Weights(NamedTuple):
    """A linear update ``x_s = c_x x_t + sum_j c[j] D_j`` over model outputs ``D_j`` in the method's
    form (multistep: ``c[j]`` weighs the output stored ``j`` points back; a tableau's final row: stage ``j``)."""

    c_x: float
    c: list


class Corrector(NamedTuple):
    """A corrector that also uses ``D_new``, the output at the predicted ``x_s``:
    ``x_s^c = c_x x_t + sum_j c[j] D_{i-j} + c_new D_new``."""

    c_x: float
    c: list
    c_new: float


class Stage(NamedTuple):
    """A Runge-Kutta stage evaluated at time ``tau``: ``x^(j) = c_x x_t + sum_l a[l] D_l``."""

    tau: float
    c_x: float
    a: list


class Tableau(NamedTuple):
    """One single-step update: its stages (the first is ``Stage(t, 1, [])``) and the final combination."""

    stages: list
    final: Weights


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
    """Base class. Subclasses set ``order`` and ``nfe_per_step``; most subclass an engine (see the
    module docstring), the others implement :meth:`prepare` and :meth:`step`."""

    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    #: Error-controlled: step sizes are chosen during sampling (shared by the batch), NFE is counted.
    adaptive: ClassVar[bool] = False
    #: A step uses statistics of the whole batch (a shared step size): results depend on the batch.
    couples_batch: ClassVar[bool] = False
    #: Each step is undone exactly by ``unstep`` (see :mod:`sdeflow.samplers.reversible`).
    reversible: ClassVar[bool] = False
    #: Steps ask for jumps ``field(x, t, target=s)``: the model must be a flow map (:mod:`.flow_map`).
    needs_flow_map: ClassVar[bool] = False

    @property
    def convergence_order(self) -> int:
        """Global order of accuracy on smooth grids (what the convergence tests fit)."""
        return self.order

    def count_nfe(self, schedule: Schedule, ts: torch.Tensor) -> int:
        return (ts.numel() - 1) * self.nfe_per_step

    def prepare(self, schedule: Schedule, ts: torch.Tensor) -> Plan:  # pragma: no cover - abstract
        """Every per-step coefficient of the grid ``ts`` (float64), once, before sampling."""
        raise NotImplementedError(f"{type(self).__name__} must implement prepare (or subclass an engine)")

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

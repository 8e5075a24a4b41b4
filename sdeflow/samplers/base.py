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

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

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
    STRUCTURE = ("tau",)


class Tableau(NamedTuple):
    """One single-step update: its stages (the first is ``Stage(t, 1, [])``) and the final combination."""

    stages: list
    final: Weights


@dataclass
class Plan:
    """Everything a sampler needs about the grid, computed before sampling.

    ``t[i]``/``s[i]``: start and end time of step ``i``; ``coef[i]``: that step's coefficients, a named
    record of the sampler's engine (or a number); ``nfe``: the number of field evaluations the whole run
    will take (``None`` if only known afterwards); ``inplace``: set by the loop when nothing else holds
    the state, so a step may overwrite its input ``x`` once it no longer needs it; ``ts``: the grid.

    The rest is typed per kind of sampler: ``history``, the model outputs a multistep method keeps;
    ``velocity_at``, the times where a stage asks the denoiser for its probability-flow velocity on clean
    data (checked before sampling); ``inner``, the plans of the samplers a wrapper runs (CFG++ and
    predictor-corrector: one; restart: the main pass, then each restart pass); ``schedule``, for samplers
    that compute while sampling (the adaptive ones); ``end``, the coefficients of the explicit inverse
    step that gives a reversible two-step sampler's state after its last step."""

    t: list[float]
    s: list[float]
    coef: list
    nfe: int | None
    inplace: bool = False
    ts: Any = None
    history: int = 0
    velocity_at: tuple[float, ...] = ()
    inner: tuple["Plan", ...] = ()
    schedule: Schedule | None = None
    end: Any = None

    def velocity_times(self) -> list[float]:
        """:attr:`velocity_at` of this plan and of every plan it runs."""
        return list(self.velocity_at) + [t for p in self.inner for t in p.velocity_times()]


def map_numbers(tree, fn: Callable[[Any], Any], *, coefficients: bool = False):
    """``tree`` (a plan's ``coef``, or any nesting of named records, tuples and lists) with ``fn``
    applied to every other leaf, in a fixed depth-first order; containers keep their type. With
    ``coefficients=True`` the fields a record lists in ``STRUCTURE`` (evaluation times and changes
    of variables, which are not coefficients of the method) are left as they are. The one walker over
    a plan's numbers: the compiled loop packs them into a tensor with it, the fitted sampler scales them."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        fixed = getattr(tree, "STRUCTURE", ()) if coefficients else ()
        return type(tree)(*(v if k in fixed else map_numbers(v, fn, coefficients=coefficients)
                            for k, v in zip(tree._fields, tree)))
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_numbers(v, fn, coefficients=coefficients) for v in tree)
    return fn(tree)


def is_number(v) -> bool:
    """A float of a plan that carries data: nonzero (a zero coefficient is structure, a term a step
    does not compute); bools, ints and None are structure too."""
    return isinstance(v, float) and v != 0.0


@dataclass(frozen=True)
class Sampler:
    """Base class. Subclasses set the capabilities below (as class attributes or properties); most
    subclass an engine (see the module docstring), the others implement :meth:`prepare` and :meth:`step`."""

    @property
    def order(self) -> int:
        """Order of the step rule."""
        return 1

    @property
    def nfe_per_step(self) -> int:
        """Field evaluations per step."""
        return 1

    @property
    def stochastic(self) -> bool:
        """Steps draw noise."""
        return False

    @property
    def adaptive(self) -> bool:
        """Error-controlled: step sizes are chosen during sampling (shared by the batch), NFE is counted."""
        return False

    @property
    def couples_batch(self) -> bool:
        """A step uses statistics of the whole batch (a shared step size): results depend on the batch."""
        return False

    @property
    def reversible(self) -> bool:
        """Each step is undone exactly by ``unstep`` (see :mod:`sdeflow.samplers.reversible`)."""
        return False

    @property
    def needs_flow_map(self) -> bool:
        """Steps ask for jumps ``field(x, t, target=s)``: the model must be a flow map (:mod:`.flow_map`)."""
        return False

    @property
    def evaluates_first(self) -> bool:
        """Every step starts by evaluating the model at its input state and start time (what CFG++'s
        re-noising and the diffusers scheduler's outputs rely on)."""
        return True

    @property
    def carries_evaluation(self) -> bool:
        """A step hands a model evaluation at its end state to the next step (UniC's corrector,
        reversible Heun), so the next step does not evaluate first."""
        return False

    @property
    def has_history(self) -> bool:
        """Steps depend on more than their input ``x``: model outputs at earlier states (multistep) or
        a second state (reversible samplers)."""
        return False

    @property
    def linear_plan(self) -> bool:
        """The plan is numbers (named records of floats) that the step only combines linearly with
        the state, model outputs and noise: what the compiled loop packs and what fitting scales."""
        return False

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


@dataclass(frozen=True)
class ByIdentity:
    """Base for samplers that hold tensors or operators (a measurement, an operator's spectrum): equal only
    to themselves. Plans are cached by sampler (:func:`sdeflow.sampling.planned`), so two such samplers
    must never compare equal by their (scalar) fields. List it before :class:`Sampler` and declare the
    dataclass with ``eq=False``."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class Wrapper(Sampler):
    """Base of samplers that run another sampler's steps (CFG++, predictor-corrector, restart, fitted
    coefficients): every capability is the wrapped sampler's unless the wrapper says otherwise, and
    its state starts as the wrapped sampler's on :meth:`inner_plan`."""

    @property
    def wrapped(self) -> Sampler:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_wrapped(self, field: str = "inner") -> None:
        """Refuse, when the wrapper is built, a wrapped object (the dataclass field ``field``) that is not a
        sdeflow sampler."""
        if not isinstance(self.wrapped, Sampler):
            raise TypeError(f"{field} must be a sdeflow Sampler, got {type(self.wrapped).__name__}")

    def inner_plan(self, plan: Plan) -> Plan:
        """The wrapped sampler's plan inside this one's (default: the first of ``plan.inner``)."""
        return plan.inner[0]

    @property
    def order(self) -> int:
        return self.wrapped.order

    @property
    def nfe_per_step(self) -> int:
        return self.wrapped.nfe_per_step

    @property
    def stochastic(self) -> bool:
        return self.wrapped.stochastic

    @property
    def adaptive(self) -> bool:
        return self.wrapped.adaptive

    @property
    def couples_batch(self) -> bool:
        return self.wrapped.couples_batch

    @property
    def needs_flow_map(self) -> bool:
        return self.wrapped.needs_flow_map

    @property
    def evaluates_first(self) -> bool:
        return self.wrapped.evaluates_first

    @property
    def carries_evaluation(self) -> bool:
        return self.wrapped.carries_evaluation

    @property
    def has_history(self) -> bool:
        return self.wrapped.has_history

    @property
    def convergence_order(self) -> int:
        return self.wrapped.convergence_order

    def count_nfe(self, schedule: Schedule, ts: torch.Tensor) -> int:
        return self.wrapped.count_nfe(schedule, ts)

    def init_state(self, x, plan):
        return self.wrapped.init_state(x, self.inner_plan(plan))

    def after_external_update(self, state):
        return self.wrapped.after_external_update(state)


def ode_coefficients(schedule: Schedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability-flow ODE as ``dx/dt = p(t) x + q(t) x_hat`` with ``p = sigma'/sigma`` and
    ``q = alpha' - alpha sigma'/sigma`` (from ``dx/dt = alpha' x_hat + sigma' eps_hat``)."""
    ds_over_s = schedule.d_sigma(t) / schedule.sigma(t)
    return ds_over_s, schedule.d_alpha(t) - schedule.alpha(t) * ds_over_s

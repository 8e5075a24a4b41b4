"""The one sampling loop.

``sample(denoiser, sampler, ts, x_init)`` steps ``x_init`` (a sample of ``p_{ts[0]}``) along the grid
and returns a :class:`SampleResult`. The loop owns NFE counting, the finiteness check, callbacks,
the optional trajectory, progress and noise injection; samplers own only their step rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .denoisers import Denoiser
from .grids import below_domain, check_grid
from .noise import BrownianTreeNoise, GeneratorNoise, NoiseSource, SeededNoise, as_noise
from .samplers.base import Plan, Sampler
from .schedules import Schedule
from .shapes import check_batch


class NonFiniteError(FloatingPointError):
    """The model returned NaN or Inf during sampling."""


@dataclass
class StepInfo:
    """Passed to callbacks after each step: step ``i`` went from ``t`` to ``s``; ``x`` is the new
    state and ``x_hat`` the last denoiser output."""

    i: int
    t: float
    s: float
    x: torch.Tensor
    x_hat: torch.Tensor | None


@dataclass
class SampleResult:
    """``x``: final state (at ``ts[-1]``); ``nfe``: counted denoiser evaluations; ``ts``: the grid;
    ``trajectory``: ``(n + 1, B, ...)`` states at every grid time when requested."""

    x: torch.Tensor
    nfe: int
    ts: torch.Tensor
    trajectory: torch.Tensor | None = None


class CountingField:
    """``field(x, t) -> x_hat``: the denoiser with its conditioning bound, counting evaluations and
    checking that they are finite.

    ``check="spot"`` (the default) sums 16 evenly spread runs of 256 values of every output,
    which catches the usual failures (a whole sample or channel going NaN) at the step they happen
    for a negligible cost, and :meth:`finish` checks the final state in full, so a non-finite value
    anywhere is still reported (NaN and Inf never leave a linear update). ``"full"`` checks every
    output in full; ``"off"`` not at all. On the CPU a failure raises at once; on accelerators it is
    recorded on the device (no host sync) and raised by :meth:`finish`.
    """

    def __init__(self, denoiser: Callable, cond: dict | None, check: bool | str = "spot"):
        if isinstance(check, bool):
            check = "spot" if check else "off"
        if check not in ("spot", "full", "off"):
            raise ValueError(f"check_finite must be True, False, 'spot', 'full' or 'off', got {check!r}")
        self.denoiser, self.cond, self.check = denoiser, cond or {}, check
        self.calls, self.step = 0, -1
        self.last: torch.Tensor | None = None
        self._bad = None  # device-side step index of the first non-finite output (-1: none)

    def __call__(self, x: torch.Tensor, t, **jump) -> torch.Tensor:
        x_hat = self._checked(self.denoiser(x, t, **self.cond, **jump), t)
        self.last = x_hat
        return x_hat

    def ode_velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        """The denoiser's probability-flow velocity (:meth:`~sdeflow.denoisers.Denoiser.ode_velocity`),
        counted and checked like ``x_hat`` (``last`` keeps the last ``x_hat``): what a Runge-Kutta stage
        on clean data evaluates."""
        return self._checked(self.denoiser.ode_velocity(x, t, **self.cond), t)

    def _checked(self, out: torch.Tensor, t) -> torch.Tensor:
        """``out`` after the finiteness check, counted."""
        if self.check != "off":
            probe = out.detach()
            if self.check == "spot" and out.is_contiguous() and out.numel() > 8192:
                # 16 evenly spread runs of 256 contiguous values (one as_strided view: indexing is slow)
                probe = probe.as_strided((16, 256), ((out.numel() // 4096) * 256, 1), out.storage_offset())
            total = probe.sum(dtype=torch.float32)
            if out.device.type == "cpu":
                if not math.isfinite(float(total)) and not bool(torch.isfinite(probe).all()):
                    self._raise(self.step, t)
            else:
                if self._bad is None:
                    self._bad = torch.full((), -1.0, dtype=torch.float64, device=out.device)
                self._bad = torch.where(~torch.isfinite(total) & (self._bad < 0), float(self.step), self._bad)
        self.calls += 1
        return out

    def _raise(self, step, t=None, plan=None):
        where = f"at step {step}"
        if t is not None:
            where += f" (t = {float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0]):.6g})"
        elif plan is not None:
            where += f" (from t = {plan.t[step]:.6g} to {plan.s[step]:.6g})"
        raise NonFiniteError(f"the model returned NaN or Inf {where}; check the model, its dtype and its "
                             "parameterization near this time")

    def finish(self, x: torch.Tensor, plan) -> None:
        """Raise for a failure recorded on the device, or for a non-finite final state."""
        if self._bad is not None and float(self._bad) >= 0:
            self._raise(int(self._bad), plan=plan)
        x = x.detach()
        if self.check == "spot" and not math.isfinite(float(x.sum(dtype=torch.float32))) \
                and not bool(torch.isfinite(x).all()):
            raise NonFiniteError("the samples contain NaN or Inf: a model output was not finite at some step "
                                 "(sample again with check_finite='full' to find the step)")


def sample(denoiser: Denoiser, sampler: Sampler, ts, x_init: torch.Tensor, *, cond: dict | None = None,
           noise: NoiseSource | None = None, callback: Callable[[StepInfo], None] | None = None,
           progress: bool = False, return_trajectory: bool = False, check_finite: bool | str = True,
           gradient: str = "autograd", companion: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> SampleResult:
    """Integrate from ``ts[0]`` to ``ts[-1]`` with ``sampler``.

    Args:
        denoiser: a :class:`~sdeflow.denoisers.Denoiser` (it carries the schedule).
        sampler: a :class:`~sdeflow.samplers.Sampler`.
        ts: a decreasing grid of times (see :mod:`sdeflow.grids`), ``n + 1`` values for ``n`` steps.
        x_init: ``(B, *)`` state at ``ts[0]``, in the dtype sampling should keep.
        cond: keyword conditioning passed to every denoiser call.
        noise: a :class:`~sdeflow.noise.NoiseSource` for stochastic samplers, or a ``torch.Generator``
            (default: the global RNG).
        callback: called with a :class:`StepInfo` after every step.
        progress: show a tqdm progress bar.
        return_trajectory: also return the states at every grid time.
        check_finite: raise :class:`NonFiniteError` naming the step and time if the model returns NaN/Inf:
            ``True``/``"spot"`` (a cheap spot check per step and a full check of the result),
            ``"full"`` (every output in full) or ``False``/``"off"`` (see :class:`CountingField`).
        gradient: how gradients of the result flow back to ``x_init``, ``cond``'s tensors and the
            denoiser's parameters when autograd is on: ``"autograd"`` records every step (memory grows
            with the steps); ``"checkpoint"`` records nothing and recomputes steps in the backward
            pass, keeping at most ``log2(n) + 1`` states (see :mod:`sdeflow.checkpoint`);
            ``"reversible"`` (reversible samplers) reconstructs each step's input backwards from
            the final state, keeping one. All give the gradient of the discrete steps taken, also
            with respect to tensors a network written as a plain function captures (the recomputing
            modes find them by one extra evaluation on one sample).
        companion: reversible samplers only: the second half of the start state, as an exact
            inversion returns it (:attr:`~sdeflow.inversion.Inversion.companion`), so that the run
            reproduces the inverted data exactly (see :mod:`sdeflow.samplers.reversible`).
        generator: a ``torch.Generator`` to draw the noise from (the same as ``noise=generator``).
    """
    check_models(denoiser, sampler)
    check_batch(x_init, "x_init")
    noise = as_noise(noise, generator)
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    if (gradient == "reversible" or companion is not None) and not sampler.reversible:
        what = "gradient='reversible'" if gradient == "reversible" else "a companion"
        raise ValueError(f"{what} needs a reversible sampler (BDIA, OBELM, EDICT, ReversibleHeun), "
                         f"got {type(sampler).__name__}")
    if companion is not None and (not isinstance(companion, torch.Tensor) or companion.shape != x_init.shape):
        raise ValueError(f"companion must be a tensor shaped like x_init {tuple(x_init.shape)}, got "
                         f"{tuple(companion.shape) if isinstance(companion, torch.Tensor) else type(companion).__name__}")
    plan = planned(sampler, denoiser.schedule, ts)
    check_ode_velocity(denoiser, sampler, plan)
    denoiser.check_cond(x_init, cond or {})
    field = CountingField(denoiser, cond, check_finite)
    start = None if companion is None else sampler.start_state(x_init, companion.to(x_init), plan)
    if gradient != "autograd":
        _check_recomputable(sampler, noise, return_trajectory)
        params = [p for p in denoiser.parameters() if p.requires_grad]
        params += [v for v in (cond or {}).values() if isinstance(v, torch.Tensor) and v.requires_grad]
        if torch.is_grad_enabled():  # and tensors a plain-function network captured (found by one evaluation)
            params += graph_leaves(denoiser, x_init, plan.t[0], cond or {}, exclude=params)
        if torch.is_grad_enabled() and (x_init.requires_grad or params):
            from .checkpoint import sample_checkpointed

            def step_callback(i, x):
                callback(StepInfo(i, plan.t[i], plan.s[i], x, field.last))
            plan.inplace = False
            x = sample_checkpointed(Steps(sampler, plan, field, noise, start), x_init, params,
                                    step_callback if callback is not None else None, gradient == "reversible")
            calls = field.calls
            field.finish(x, plan)
            return SampleResult(x, calls, plan.ts, None)
    x, traj = integrate(field, sampler, plan, x_init, noise=noise, callback=callback, progress=progress,
                        return_trajectory=return_trajectory, state=start)
    field.finish(x, plan)
    return SampleResult(x, field.calls, plan.ts, traj)


GRADIENTS = ("autograd", "checkpoint", "reversible")


def graph_leaves(denoiser, x: torch.Tensor, t: float, cond: dict, exclude=()) -> list[torch.Tensor]:
    """The tensors requiring grad that one evaluation of ``denoiser`` at ``(x, t)`` depends on, other than
    ``x`` and ``exclude``: what a network written as a plain function captures. A recomputing backward
    (``gradient="checkpoint"`` / ``"reversible"``) differentiates with respect to them too."""
    probe = x[:1].detach().requires_grad_(True)
    with torch.enable_grad():
        out = denoiser(probe, t, **{k: (v[:1] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == x.shape[0]
                                        else v) for k, v in cond.items()})
    known = {id(v) for v in exclude} | {id(probe)}
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # an AccumulateGrad node: a leaf that requires grad
        if var is not None and id(var) not in known:
            known.add(id(var))
            found.append(var)
        stack.extend(f for f, _ in fn.next_functions)
    return found


def check_denoiser(denoiser) -> None:
    """Refuse anything but a sdeflow denoiser."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError("denoiser must be a sdeflow Denoiser (wrap a network with ModelDenoiser)")


def check_models(denoiser, sampler) -> None:
    """Refuse anything but a sdeflow denoiser and sampler."""
    check_denoiser(denoiser)
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a sdeflow Sampler, got {type(sampler).__name__}")
    if sampler.needs_flow_map and not is_flow_map(denoiser):
        raise ValueError(f"{type(sampler).__name__} jumps with a flow map, and this model is a plain denoiser: use it "
                         "with a flow-map model (a few-step objective of sdeflow train, or analytic.OracleFlowMap), "
                         "or sample this model with an ODE or SDE sampler")


def check_ode_velocity(denoiser, sampler, plan) -> None:
    """Refuse, before any evaluation, a plan with stages on clean data (``RK4(at_data=True)``, ...) that
    ``denoiser`` cannot give its probability-flow velocity at."""
    def times(p: Plan) -> list[float]:  # with the plans a wrapping sampler runs (CFG++, predictor-corrector, restart)
        inner = [v for v in p.extra.values() if isinstance(v, Plan)]
        inner += [w for v in p.extra.values() if isinstance(v, (list, tuple)) for w in v if isinstance(w, Plan)]
        return p.extra.get("ode_velocity_at", []) + [t for q in inner for t in times(q)]

    for t in times(plan):
        if not denoiser.has_ode_velocity(t):
            raise ValueError(f"{type(sampler).__name__} evaluates the model's probability-flow velocity on clean data "
                             f"(t = {t:.6g}, sigma = 0), which this {type(denoiser).__name__} cannot give: that needs a "
                             "network predicting the noise in some form (eps, v, velocity, edm) on a schedule with finite "
                             "sigma' there. Use the sampler without at_data=True, whose last step evaluates above t = 0")


def is_flow_map(denoiser) -> bool:
    """Whether ``denoiser`` answers jumps ``denoiser(x_t, t, target=s)`` (a :class:`~sdeflow.denoisers.FlowMap`)."""
    from .denoisers import FlowMap

    return isinstance(denoiser, FlowMap)


class Steps:
    """Steps of a planned run taken from a snapshot ``(x, state)`` with the loop's bookkeeping (the
    step index for error messages and noise): what recomputing (:mod:`sdeflow.checkpoint`) and
    inverting (:mod:`sdeflow.inversion`) a run step by step share. Leaves ``plan.inplace`` alone.
    ``state``: the sampler's state at the start (default: its ``init_state``)."""

    def __init__(self, sampler: Sampler, plan: Plan, field: CountingField, noise: NoiseSource | None = None,
                 state=None):
        self.sampler, self.plan, self.field, self.draw = sampler, plan, field, _StepNoise(noise or GeneratorNoise())
        self.state = state

    def start(self, x: torch.Tensor) -> tuple:
        return x, self.sampler.init_state(x, self.plan) if self.state is None else self.state

    def unrun(self, snap: tuple, b: int, a: int) -> tuple:
        """A reversible sampler's snapshot before steps ``a .. b - 1`` given the one after them."""
        x, state = snap
        for i in reversed(range(a, b)):
            self.field.step = i
            x, state = self.sampler.unstep(self.field, x, i, self.plan, state)
        return x, state

    def run(self, snap: tuple, a: int, b: int, callback: Callable[[int, torch.Tensor], None] | None = None) -> tuple:
        """The snapshot after steps ``a .. b - 1``; ``callback(i, x)`` after each."""
        x, state = snap
        for i in range(a, b):
            self.field.step = self.draw.step = i
            self.draw.x = x
            x, state = self.sampler.step(self.field, x, i, self.plan, state, self.draw)
            if callback is not None:
                callback(i, x)
        return x, state


def integrate(field: CountingField, sampler: Sampler, plan: Plan, x_init: torch.Tensor, *,
              noise: NoiseSource | None = None, callback: Callable[[StepInfo], None] | None = None,
              progress: bool = False, return_trajectory: bool = False, state=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loop of :func:`sample` over a planned grid (in either direction: :mod:`sdeflow.inversion` runs
    it on increasing grids), from the sampler's ``state`` (default: its ``init_state``). Returns the
    final state and, if asked, the stacked trajectory."""
    # Nothing outside the loop sees intermediate states unless a trajectory or callback asks for
    # them, or autograd records the run (gradients through sampling): otherwise steps after the first
    # update the state in place. Until the state is a new tensor no step does, so the caller's x_init
    # is never touched; then a state or model output that requires grad shows that autograd records.
    may_overwrite = not return_trajectory and callback is None
    plan.inplace = False
    draw = _StepNoise(noise or GeneratorNoise())
    if state is None:
        state = sampler.init_state(x_init, plan)
    x = x_init
    traj = [x_init] if return_trajectory else None
    steps = range(len(plan.t))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=type(sampler).__name__, leave=False)
    step = sampler.step
    for i in steps:
        field.step = draw.step = i
        draw.x = x
        x, state = step(field, x, i, plan, state, draw)
        if may_overwrite and x is not x_init:
            may_overwrite = False
            recording = torch.is_grad_enabled() and (x.requires_grad or (field.last is not None and field.last.requires_grad))
            plan.inplace = not recording
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(StepInfo(i, plan.t[i], plan.s[i], x, field.last))
    return x, (torch.stack(traj) if traj is not None else None)


def _check_recomputable(sampler: Sampler, noise, return_trajectory: bool) -> None:
    """Refuse what ``gradient="checkpoint"`` cannot recompute step by step."""
    if sampler.adaptive:
        raise ValueError(f"{type(sampler).__name__} chooses its steps while sampling: gradient='checkpoint' needs "
                         "a fixed-grid sampler")
    if sampler.stochastic and not isinstance(noise, (SeededNoise, BrownianTreeNoise)):
        raise ValueError("gradient='checkpoint' recomputes steps, so a stochastic sampler's noise must be drawn "
                         "again identically: pass noise=SeededNoise(seeds) or BrownianTreeNoise(...)")
    if return_trajectory:
        raise ValueError("gradient='checkpoint' or 'reversible' keeps no intermediate states: return_trajectory is "
                         "not available (use a callback to see them)")


class _StepNoise:
    """``noise(draw=0, span=None)`` for the current step: standard normal noise shaped like the
    state (``span = (t, s)``: the standardised Brownian increment over it, see :mod:`sdeflow.noise`)."""

    def __init__(self, source: NoiseSource):
        self.source, self.step, self.x = source, 0, None

    def __call__(self, draw: int = 0, span=None) -> torch.Tensor:
        return self.source(self.x, self.step, draw, span)


_PLANS: dict = {}


def planned(sampler: Sampler, schedule: Schedule, ts, *, increasing: bool = False) -> Plan:
    """``sampler.prepare(schedule, ts)``, cached: sampling many batches on one grid plans it once.
    Returns a fresh copy whose ``inplace`` flag the caller may set. ``increasing``: the grid runs from
    data towards noise (the step rules integrating the probability-flow ODE forwards, for inversion)."""
    ts = check_grid(ts, increasing=increasing)
    below = ts[below_domain(ts, schedule)]
    if below.numel():
        raise ValueError(f"grid time {float(below[0]):.6g} lies below the schedule's smallest time {schedule.t_min:.6g} "
                         "(a discrete schedule's first training step): a grid may end at that time, then 0")
    try:
        key = (sampler, schedule, tuple(ts.tolist()))
        hash(key)
    except TypeError:  # an unhashable user sampler: no caching
        key = None
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = sampler.prepare(schedule, ts)
        plan.ts = ts
        if key is not None:
            if len(_PLANS) > 64:
                _PLANS.clear()
            _PLANS[key] = plan
    return replace(plan)


def prior_sample(schedule: Schedule, shape: tuple[int, ...], *, t: float = 1.0, data_std: float = 0.0,
                 seeds=None, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Draw from the Gaussian approximation of ``p_t``: ``N(0, (alpha^2 data_std^2 + sigma^2) I)``.

    ``seeds`` (one per sample) give per-sample reproducible draws; else ``generator`` is used."""
    like = torch.empty(shape, dtype=dtype, device=device)
    source = SeededNoise(seeds) if seeds is not None else GeneratorNoise(generator)
    return source(like, -1) * prior_std(schedule, t, data_std)


def prior_std(schedule: Schedule, t: float, data_std: float = 0.0) -> float:
    """Standard deviation ``sqrt(alpha^2 data_std^2 + sigma^2)`` of the Gaussian approximation of ``p_t``."""
    return float(torch.sqrt(schedule.alpha(t) ** 2 * data_std ** 2 + schedule.sigma(t) ** 2))

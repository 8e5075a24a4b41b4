"""Sampling: ``sample(denoiser, sampler, ts, x_init)`` steps ``x_init`` (a sample of ``p_{ts[0]}``) along
the grid and returns a :class:`SampleResult`.

The loop runs in a :class:`~sdeflow.run.Run`, which owns NFE counting, the finiteness check,
callbacks, progress, noise and the per-run state of denoiser transforms; samplers own only their
step rule. Gradients flow by autograd, or by recomputing or undoing steps (:mod:`sdeflow.replay`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from .denoisers import Denoiser
from .grids import below_domain, check_grid
from .noise import BrownianTreeNoise, GeneratorNoise, NoiseSource, SeededNoise, as_noise
from .replay import sample_checkpointed
from .run import NonFiniteError, Run, SampleResult, StepInfo, Steps, integrate
from .samplers.base import Plan, Sampler
from .schedules import Schedule
from .shapes import check_batch

#: the loop's results and errors, re-exported where sample() is
__all__ = ["GRADIENTS", "NonFiniteError", "SampleResult", "StepInfo", "check_denoiser", "check_models", "check_ode_velocity",
           "graph_leaves", "is_flow_map", "planned", "prior_sample", "prior_std", "sample"]


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
            ``"full"`` (every output in full) or ``False``/``"off"`` (see :class:`~sdeflow.run.Run`).
        gradient: how gradients of the result flow back to ``x_init``, ``cond``'s tensors and the
            denoiser's parameters when autograd is on: ``"autograd"`` records every step (memory grows
            with the steps); ``"checkpoint"`` records nothing and recomputes steps in the backward
            pass, keeping at most ``log2(n) + 1`` states (see :mod:`sdeflow.replay`);
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
    run = Run(denoiser, cond, check_finite, noise, callback=callback, progress=progress, total=plan.nfe,
              desc=type(sampler).__name__)
    start = None if companion is None else sampler.start_state(x_init, companion.to(x_init), plan)
    if gradient != "autograd":
        _check_recomputable(sampler, noise, return_trajectory)
        params = [p for p in denoiser.parameters() if p.requires_grad]
        params += [v for v in (cond or {}).values() if isinstance(v, torch.Tensor) and v.requires_grad]
        if torch.is_grad_enabled():  # and tensors a plain-function network captured (found by one evaluation)
            params += graph_leaves(denoiser, x_init, plan.t[0], cond or {}, exclude=params)
        if torch.is_grad_enabled() and (x_init.requires_grad or params):
            def step_callback(i, x):
                run.stepped(i, plan.t[i], plan.s[i], x)
            plan.inplace = False
            x = sample_checkpointed(Steps(sampler, plan, run, start), x_init, params,
                                    step_callback if callback is not None else None, gradient == "reversible")
            calls = run.calls
            run.finish(x, plan)
            return SampleResult(x, calls, plan.ts, None)
    x, traj = integrate(run, sampler, plan, x_init, return_trajectory=return_trajectory, state=start)
    run.finish(x, plan)
    return SampleResult(x, run.calls, plan.ts, traj)


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
    for t in plan.velocity_times():  # with the plans a wrapping sampler runs (CFG++, predictor-corrector, restart)
        if not denoiser.has_ode_velocity(t):
            raise ValueError(f"{type(sampler).__name__} evaluates the model's probability-flow velocity on clean data "
                             f"(t = {t:.6g}, sigma = 0), which this {type(denoiser).__name__} cannot give: that needs a "
                             "network predicting the noise in some form (eps, v, velocity, edm) on a schedule with finite "
                             "sigma' there. Use the sampler without at_data=True, whose last step evaluates above t = 0")


def is_flow_map(denoiser) -> bool:
    """Whether ``denoiser`` answers jumps ``denoiser(x_t, t, target=s)`` (a :class:`~sdeflow.denoisers.FlowMap`)."""
    from .denoisers import FlowMap

    return isinstance(denoiser, FlowMap)


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
                 seeds=None, generator: torch.Generator | None = None, noise: NoiseSource | None = None,
                 dtype=torch.float32, device=None) -> torch.Tensor:
    """Draw from the Gaussian approximation of ``p_t``: ``N(0, (alpha^2 data_std^2 + sigma^2) I)``.

    ``seeds`` (one per sample) give per-sample reproducible draws; else ``noise``, a noise source (the
    draw of its step -1, before a run's own steps); else ``generator``."""
    like = torch.empty(shape, dtype=dtype, device=device)
    source = SeededNoise(seeds) if seeds is not None else noise if noise is not None else GeneratorNoise(generator)
    return source(like, -1) * prior_std(schedule, t, data_std)


def prior_std(schedule: Schedule, t: float, data_std: float = 0.0) -> float:
    """Standard deviation ``sqrt(alpha^2 data_std^2 + sigma^2)`` of the Gaussian approximation of ``p_t``."""
    return float(torch.sqrt(schedule.alpha(t) ** 2 * data_std ** 2 + schedule.sigma(t) ** 2))

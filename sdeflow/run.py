"""One sampling run: the context every loop of sdeflow runs in, and the step loop over a plan.

A :class:`Run` owns what a loop needs besides its step rule: the field ``run(x, t) -> x_hat`` (the
denoiser with its conditioning bound), the evaluation count, the finiteness check, the noise (per
step for samplers, successive draws for methods that take their own steps), callbacks and progress
after each step, and the per-run state of denoiser transforms (:meth:`Run.local`: guidance momentum,
CFG++'s request for the unconditional pass), which lives exactly as long as the run. Every loop
(:func:`sdeflow.sample`, its recomputing backward pass, inversion, tuning, likelihoods, the inverse
problem methods, editing and reward fine-tuning) runs in one, so they all count, check and draw
the same way.

:class:`Steps` takes the steps of a planned run from a snapshot ``(x, sampler state)``; :func:`integrate`
is the loop of :func:`sdeflow.sample` on it.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .noise import NoiseSource, as_noise
from .samplers.base import Plan, Sampler


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


_ACTIVE: contextvars.ContextVar["Run | None"] = contextvars.ContextVar("sdeflow_run", default=None)


def active_run() -> "Run | None":
    """The run whose loop is executing (None outside any sdeflow loop: a user's own loop, a peer's)."""
    return _ACTIVE.get()


CHECKS = ("spot", "full", "off")


class Run:
    """The context of one run (see the module docstring).

    ``check`` (``check_finite`` of :func:`sdeflow.sample`): ``"spot"`` (the default; ``True``) sums 16
    evenly spread runs of 256 values of every output, which catches the usual failures (a whole sample
    or channel going NaN) at the step they happen for a negligible cost, and :meth:`finish` checks
    the final state in full, so a non-finite value anywhere is still reported (NaN and Inf never leave
    a linear update); ``"full"`` checks every output in full; ``"off"`` (``False``) not at all. On the
    CPU a failure raises at once; on accelerators it is recorded on the device (no host sync) and
    raised by :meth:`finish`.

    ``noise``: a :class:`~sdeflow.noise.NoiseSource` or ``torch.Generator`` (default: the global RNG).
    ``callback``: called with a :class:`StepInfo` after each step (:meth:`stepped`); ``progress``: a
    progress bar over the run's evaluations (``total``: the expected count, when known).
    """

    def __init__(self, denoiser: Callable, cond: dict | None = None, check: bool | str = "spot", noise=None, *,
                 callback: Callable[[StepInfo], None] | None = None, progress: bool = False, total: int | None = None,
                 desc: str = "sampling"):
        if isinstance(check, bool):
            check = "spot" if check else "off"
        if check not in CHECKS:
            raise ValueError(f"check_finite must be True, False, 'spot', 'full' or 'off', got {check!r}")
        self.denoiser, self.cond, self.check = denoiser, cond or {}, check
        self.noise: NoiseSource = as_noise(noise)
        self.callback = callback
        self.calls, self.step = 0, -1
        self.last: torch.Tensor | None = None
        self.draws = 0  # successive draws of a method's own loop (fresh)
        self.memo: dict[int, tuple[Any, Any]] = {}
        self._bad = None  # device-side step index of the first non-finite output (-1: none)
        self._tokens: list = []
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="NFE", leave=False)

    # ------------------------------------------------------------------ the field
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
        if self.bar is not None:
            self.bar.update(1)
        return out

    def _raise(self, step, t=None, plan=None):
        where = f"at step {step}"
        if t is not None:
            where += f" (t = {float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0]):.6g})"
        elif plan is not None:
            where += f" (from t = {plan.t[step]:.6g} to {plan.s[step]:.6g})"
        raise NonFiniteError(f"the model returned NaN or Inf {where}; check the model, its dtype and its "
                             "parameterization near this time")

    # ------------------------------------------------------------------ noise
    def step_noise(self, x: torch.Tensor) -> "StepNoise":
        """The step's noise for a sampler's step from state ``x``: ``noise(draw=0, span=None)``."""
        return StepNoise(self.noise, self.step, x)

    def fresh(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        """Standard normal noise of ``shape = (batch, ...)``, the next of a method's successive draws
        (draw ``k`` is the source's step ``k``, so a :class:`~sdeflow.noise.SeededNoise` keeps each
        sample's randomness independent of the batch)."""
        like = torch.empty(tuple(shape), dtype=dtype, device=device)
        self.draws += 1
        return self.noise(like, self.draws - 1)

    def uniform(self, batch: int, dtype=torch.float32, device=None) -> float:
        """One uniform number in (0, 1) from the next draw (e.g. the offset of systematic resampling)."""
        return normal_to_uniform(float(self.fresh((batch,), dtype, device)[0]))

    # ------------------------------------------------------------------ per-run state and steps
    def local(self, owner: object, factory: Callable[[], Any] = dict) -> Any:
        """The state ``owner`` (a denoiser transform) keeps for this run, made by ``factory`` on first use."""
        got = self.memo.get(id(owner))
        if got is None or got[0] is not owner:
            got = self.memo[id(owner)] = (owner, factory())
        return got[1]

    def stepped(self, i: int, t: float, s: float, x: torch.Tensor) -> None:
        """Step ``i`` from ``t`` to ``s`` ended at ``x``: the callback sees it."""
        if self.callback is not None:
            self.callback(StepInfo(i, float(t), float(s), x, self.last))

    def __enter__(self) -> "Run":
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def finish(self, x: torch.Tensor, plan: Plan | None = None) -> None:
        """End the run: close its progress bar; raise for a failure recorded on the device, or for a
        non-finite final state."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._bad is not None and float(self._bad) >= 0:
            self._raise(int(self._bad), plan=plan)
        x = x.detach()
        if self.check != "off" and not math.isfinite(float(x.sum(dtype=torch.float32))) \
                and not bool(torch.isfinite(x).all()):
            raise NonFiniteError("the samples contain NaN or Inf: a model output was not finite at some step "
                                 "(sample again with check_finite='full' to find the step)")


def normal_to_uniform(z: float) -> float:
    """The uniform number in (0, 1) a standard normal draw ``z`` maps to (its CDF, kept off 0 and 1)."""
    return min(max(0.5 * (1.0 + math.erf(z / math.sqrt(2.0))), 1e-12), 1 - 1e-12)


def run_local(owner: object, factory: Callable[[], Any] = dict) -> Any:
    """``owner``'s state in the active run (:meth:`Run.local`), or None outside any run."""
    run = _ACTIVE.get()
    return None if run is None else run.local(owner, factory)


class StepNoise:
    """``noise(draw=0, span=None)`` for one step: standard normal noise shaped like the state
    (``span = (t, s)``: the standardised Brownian increment over it, see :mod:`sdeflow.noise`)."""

    def __init__(self, source: NoiseSource, step: int, x: torch.Tensor):
        self.source, self.step, self.x = source, step, x

    def __call__(self, draw: int = 0, span=None) -> torch.Tensor:
        return self.source(self.x, self.step, draw, span)

    def shaped(self, like: torch.Tensor, draw: int) -> torch.Tensor:
        """Standard normal noise of this step shaped like ``like`` (a measurement, not the state), for the
        draws a step takes beyond the state's own; ``like``'s first dimension is the batch."""
        return self.source(like, self.step, draw)

    def uniform(self, draw: int) -> float:
        """One uniform number in (0, 1) from this step's draw ``draw`` (its first value): the offset of
        systematic resampling, shared by the batch."""
        return normal_to_uniform(float(self.source(self.x.new_empty(self.x.shape[:1]), self.step, draw)[0]))  # one per sample


class Steps:
    """Steps of a planned run taken from a snapshot ``(x, state)`` in ``run``: what sampling,
    recomputing (:mod:`sdeflow.replay`) and inverting (:mod:`sdeflow.inversion`) a run share. Leaves
    ``plan.inplace`` alone. ``state``: the sampler's state at the start (default: its ``init_state``)."""

    def __init__(self, sampler: Sampler, plan: Plan, run: Run, state=None):
        self.sampler, self.plan, self.run, self.state = sampler, plan, run, state

    def start(self, x: torch.Tensor) -> tuple:
        return x, self.sampler.init_state(x, self.plan) if self.state is None else self.state

    def unrun(self, snap: tuple, b: int, a: int) -> tuple:
        """A reversible sampler's snapshot before steps ``a .. b - 1`` given the one after them."""
        x, state = snap
        with self.run:
            for i in reversed(range(a, b)):
                self.run.step = i
                x, state = self.sampler.unstep(self.run, x, i, self.plan, state)
        return x, state

    def run_steps(self, snap: tuple, a: int, b: int, callback: Callable[[int, torch.Tensor], None] | None = None) -> tuple:
        """The snapshot after steps ``a .. b - 1``; ``callback(i, x)`` after each."""
        x, state = snap
        run, plan, step, draw = self.run, self.plan, self.sampler.step, StepNoise(self.run.noise, a, x)
        with run:
            for i in range(a, b):
                run.step = draw.step = i
                draw.x = x
                x, state = step(run, x, i, plan, state, draw)
                if callback is not None:
                    callback(i, x)
        return x, state


def integrate(run: Run, sampler: Sampler, plan: Plan, x_init: torch.Tensor, *, return_trajectory: bool = False,
              state=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loop of :func:`sdeflow.sample` over a planned grid (in either direction: :mod:`sdeflow.inversion` runs
    it on increasing grids), from the sampler's ``state`` (default: its ``init_state``). Returns the
    final state and, if asked, the stacked trajectory; ``run``'s callback sees every step."""
    # Nothing outside the loop sees intermediate states unless a trajectory or callback asks for
    # them, or autograd records the run (gradients through sampling): otherwise steps after the first
    # update the state in place. Until the state is a new tensor no step does, so the caller's x_init
    # is never touched; then a state or model output that requires grad shows that autograd records.
    may_overwrite = not return_trajectory and run.callback is None
    plan.inplace = False
    if state is None:
        state = sampler.init_state(x_init, plan)
    x = x_init
    traj = [x_init] if return_trajectory else None
    step, draw = sampler.step, StepNoise(run.noise, 0, x)  # one object, moved along (a step may not keep it)
    with run:
        for i in range(len(plan.t)):
            run.step = draw.step = i
            draw.x = x
            x, state = step(run, x, i, plan, state, draw)
            if may_overwrite and x is not x_init:
                may_overwrite = False
                recording = torch.is_grad_enabled() and (x.requires_grad or (run.last is not None and run.last.requires_grad))
                plan.inplace = not recording
            if traj is not None:
                traj.append(x)
            if run.callback is not None:
                run.stepped(i, plan.t[i], plan.s[i], x)
    return x, (torch.stack(traj) if traj is not None else None)


"""The one sampling loop.

``sample(denoiser, sampler, ts, x_init)`` steps ``x_init`` (a sample of ``p_{ts[0]}``) along the grid
and returns a :class:`SampleResult`. The loop owns NFE counting, the finiteness check, callbacks,
the optional trajectory, progress and noise injection; samplers own only their step rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .denoisers import Denoiser
from .grids import check_grid
from .noise import GeneratorNoise, NoiseSource, SeededNoise
from .samplers.base import Sampler
from .schedules import Schedule


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
    checking their finiteness (at once on the CPU; on accelerators without a host sync, reported at
    the end of sampling)."""

    def __init__(self, denoiser: Callable, cond: dict | None, check_finite: bool = True, step_of=None):
        self.denoiser, self.cond, self.check_finite = denoiser, cond or {}, check_finite
        self.calls = 0
        self.last: torch.Tensor | None = None
        self.step_of = step_of or (lambda: -1)
        self._bad = None  # (call index, time) of the first non-finite output, device-side

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        x_hat = self.denoiser(x, t, **self.cond)
        if self.check_finite:
            ok = torch.isfinite(x_hat).all()
            if x_hat.device.type == "cpu":
                if not ok:
                    self._raise(self.step_of(), t)
            else:
                tt = torch.as_tensor(t, dtype=torch.float64, device=x_hat.device).reshape(-1)[0]
                code = torch.tensor([float(self.step_of()), 0.0], dtype=torch.float64, device=x_hat.device)
                code[1] = tt
                if self._bad is None:
                    self._bad = torch.full((2,), -1.0, dtype=torch.float64, device=x_hat.device)
                self._bad = torch.where((~ok) & (self._bad[0] < 0), code, self._bad)
        self.calls += 1
        self.last = x_hat
        return x_hat

    def _raise(self, step, t):
        t = float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0])
        raise NonFiniteError(f"the model returned NaN or Inf at step {step} (t = {t:.6g}); "
                             "check the model, its dtype and its parameterization near this time")

    def finish(self) -> None:
        if self._bad is not None and float(self._bad[0]) >= 0:
            self._raise(int(self._bad[0]), self._bad[1])


def sample(denoiser: Denoiser, sampler: Sampler, ts, x_init: torch.Tensor, *, cond: dict | None = None,
           noise: NoiseSource | None = None, callback: Callable[[StepInfo], None] | None = None,
           progress: bool = False, return_trajectory: bool = False, check_finite: bool = True) -> SampleResult:
    """Integrate from ``ts[0]`` to ``ts[-1]`` with ``sampler``.

    Args:
        denoiser: a :class:`~sdeflow.denoisers.Denoiser` (it carries the schedule).
        sampler: a :class:`~sdeflow.samplers.Sampler`.
        ts: a decreasing grid of times (see :mod:`sdeflow.grids`), ``n + 1`` values for ``n`` steps.
        x_init: ``(B, *)`` state at ``ts[0]``, in the dtype sampling should keep.
        cond: keyword conditioning passed to every denoiser call.
        noise: a :class:`~sdeflow.noise.NoiseSource` for stochastic samplers (default: the global RNG).
        callback: called with a :class:`StepInfo` after every step.
        progress: show a tqdm progress bar.
        return_trajectory: also return the states at every grid time.
        check_finite: raise :class:`NonFiniteError` naming the step and time if the model returns NaN/Inf.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError("denoiser must be a sdeflow Denoiser (wrap a network with ModelDenoiser)")
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a sdeflow Sampler, got {type(sampler).__name__}")
    if not isinstance(x_init, torch.Tensor) or x_init.ndim < 1 or not x_init.dtype.is_floating_point:
        raise TypeError("x_init must be a floating-point tensor of shape (B, ...)")
    ts = check_grid(ts)
    plan = sampler.prepare(denoiser.schedule, ts)
    noise = noise or GeneratorNoise()
    step = [0]
    field = CountingField(denoiser, cond, check_finite, step_of=lambda: step[0])
    state = sampler.init_state(x_init, plan)
    x = x_init
    traj = [x_init] if return_trajectory else None
    steps = range(len(plan.t))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=type(sampler).__name__, leave=False)
    for i in steps:
        step[0] = i
        x, state = sampler.step(field, x, i, plan, state, lambda draw=0, i=i, x=x: noise(x, i, draw))
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(StepInfo(i, plan.t[i], plan.s[i], x, field.last))
    field.finish()
    return SampleResult(x, field.calls, ts, torch.stack(traj) if traj is not None else None)


def prior_sample(schedule: Schedule, shape: tuple[int, ...], *, t: float = 1.0, data_std: float = 0.0,
                 seeds=None, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Draw from the Gaussian approximation of ``p_t``: ``N(0, (alpha^2 data_std^2 + sigma^2) I)``.

    ``seeds`` (one per sample) give per-sample reproducible draws; else ``generator`` is used."""
    like = torch.empty(shape, dtype=dtype, device=device)
    source = SeededNoise(seeds) if seeds is not None else GeneratorNoise(generator)
    std = float(torch.sqrt(schedule.alpha(t) ** 2 * data_std ** 2 + schedule.sigma(t) ** 2))
    return source(like, -1) * std

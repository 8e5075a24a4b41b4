"""The second stage of tuning: a sampler's coefficients fitted to a model on a fixed grid.

:func:`optimize_coefficients` takes a grid (a hand grid, or one :func:`~.fit.optimize_grid` fitted) and
fits the relative change of every coefficient of the sampler's plan on it (see
:class:`~sdeflow.samplers.FittedSampler`) to the endpoint RMS error against the teacher. Unlike the
grid, the coefficients enter the sampling loop as plain multipliers, so the run is differentiated
with autograd: each loss and its gradient cost one sampling run and one backward pass through it,
and L-BFGS minimises the loss.

A step has several coefficients and a run some tens, more than the grid's few times, so the fit can
learn the draws rather than the model. The draws are split as the grid fit splits them
(:class:`~.draws.Split`): the fit sees those before the ``holdout`` held out, its loss leaves out the
``trim`` share of the worst draws (those that end in another component than the teacher's), and
the coefficients kept are those with the least such error on the rest, checked after every round of
L-BFGS iterations (early stopping). They are kept at all only if they beat the sampler's own
coefficients on the held-out draws, in the trimmed error and in the plain RMS, and are no worse
than them in the plain RMS over all the draws (the trimmed loss is blind to a few more fitting draws
sent to another component).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..samplers.fitted import check_fittable, coefficient_values, with_coefficients
from ..run import Run
from ..sampling import check_ode_velocity, planned
from .draws import HOLDOUT, TRIM, CountedDenoiser, Split, Teacher, check_trim, refusal, run_error
from .store import TunedGrid


def optimize_coefficients(denoiser, sampler, ts, x_init: torch.Tensor | None = None, *, teacher: Teacher | None = None,
                          sampler_name: str | None = None, cond: dict | None = None, holdout: float = HOLDOUT,
                          trim: float = TRIM, rounds: int = 15, iters: int = 10, patience: int = 3,
                          teacher_steps: int = 300, tuned: TunedGrid | None = None, check: float = 0) -> TunedGrid:
    """Coefficients of ``sampler`` on the grid ``ts`` fitted to ``denoiser`` on the draws ``x_init`` of
    ``p_{ts[0]}`` (or on a :class:`~.draws.Teacher` already computed from ``ts[0]`` on them), by L-BFGS
    through autograd on the error without the ``trim`` share of the worst draws, with early stopping on
    the ``holdout`` draws held out (a share below 1, a number from 1 up): at most ``rounds`` rounds
    of ``iters`` iterations, stopping after ``patience`` rounds without a better held-out error.

    Returns a :class:`TunedGrid` whose ``shift`` holds the fitted relative changes (a
    :class:`~sdeflow.samplers.FittedSampler` runs them: :meth:`TunedGrid.sampler_for`), ``loss`` the
    held-out trimmed error with them and ``base_loss`` without, ``heldout`` the held-out RMS with
    them. Coefficients that do not beat the sampler's own on the held-out draws (trimmed error and
    RMS), or lose to them in the RMS over all the draws, are not kept: ``shift`` is then ``None``, with
    a warning. ``check`` (none by default): the last draws kept apart from the fit and its early
    stopping, on which the coefficients must beat the sampler's own too (as for
    :func:`~.fit.optimize_grid`). ``tuned``:
    the :class:`TunedGrid` that fitted ``ts`` (its hand losses and cost carry over; the cost grows by
    this fit's evaluations, forward in ``cost_nfe`` and differentiated in ``cost_grad``)."""
    label = sampler_name or type(sampler).__name__
    check_fittable(sampler, label)
    check_trim(trim)
    if min(rounds, iters, patience) < 1:
        raise ValueError(f"rounds, iters and patience must be >= 1, got {rounds}, {iters}, {patience}")
    if (x_init is None) == (teacher is None):
        raise ValueError("give the draws x_init or a Teacher computed on them, not both")
    Split.fit_count((teacher.x_init if teacher is not None else x_init).shape[0], holdout, check)  # before the solve
    sch = denoiser.schedule
    plan = planned(sampler, sch, ts)
    check_ode_velocity(denoiser, sampler, plan)
    ts = plan.ts
    teacher_calls = 0
    if teacher is None:
        teacher = Teacher(denoiser, x_init, cond=cond, t_max=float(ts[0]), steps=teacher_steps)
        teacher_calls = teacher.calls
    elif abs(teacher.t_max - float(ts[0])) > 1e-9:
        raise ValueError(f"the teacher starts at t = {teacher.t_max:.6g} but the grid at t = {float(ts[0]):.6g}")
    split = Split(teacher, holdout, check=check)
    x = teacher.x_init
    counted = CountedDenoiser(denoiser, x.dtype)
    base = torch.tensor(coefficient_values(plan.coef), dtype=torch.float64)
    if base.numel() == 0:
        raise ValueError(f"{label} plans no coefficients on this grid to fit")

    def run(r: torch.Tensor, which: str, cut: float = trim) -> torch.Tensor:
        p = planned(sampler, sch, ts)
        p.coef = with_coefficients(p.coef, (base * (1.0 + r)).unbind(0))
        xs, target, c = split.draws(which)
        return run_error(sampler, p, Run(counted, c, check="off"), xs, target.to(x.dtype), cut)

    def value(r: torch.Tensor, which: str, cut: float = trim) -> float:
        with torch.no_grad():
            v = float(run(r, which, cut))
        return v if math.isfinite(v) else math.inf

    r = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.LBFGS([r], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")
    grads = 0

    def closure():
        nonlocal grads
        opt.zero_grad()
        before = counted.calls
        loss = run(r, "fit")
        grads += counted.calls - before
        if not torch.isfinite(loss):  # a line-search trial the run does not survive: refuse it
            return torch.tensor(math.inf, dtype=loss.dtype)
        loss.backward()
        return loss

    best_r, best_held = torch.zeros_like(base), value(torch.zeros_like(base), "held")
    stale = 0
    for _ in range(rounds):
        opt.step(closure)
        held = value(r.detach(), "held")
        if held < best_held:
            best_r, best_held, stale = r.detach().clone(), held, 0
        else:
            stale += 1
            if stale >= patience:
                break
    zero = torch.zeros_like(base)
    base_loss, base_rms = value(zero, "held"), value(zero, "held", 0.0)
    loss, rms = value(best_r, "held"), value(best_r, "held", 0.0)
    shift = best_r.tolist()
    why = refusal((loss, rms), (base_loss, base_rms), lambda part: (value(best_r, part), value(best_r, part, 0.0)),
                  lambda part: (value(zero, part), value(zero, part, 0.0)), split.n_check)
    if why is not None:
        warnings.warn(f"fitted coefficients for {label} at NFE {plan.nfe} are no better than its own {why}: "
                      f"{label}'s own coefficients are kept", stacklevel=2)
        shift, loss, rms = None, base_loss, base_rms
    prior = tuned or TunedGrid(ts.tolist(), label, plan.nfe, "given", base_loss)
    return TunedGrid(ts.tolist(), label, plan.nfe, prior.method, loss, prior.hand,
                     prior.cost_nfe + counted.calls + teacher_calls, x.shape[0], shift=shift,
                     base_loss=base_loss, heldout=rms, cost_grad=prior.cost_grad + grads)

"""Inversion: the noise that a deterministic sampler maps to given data.

``invert(denoiser, sampler, ts, x)`` takes the sampling grid ``ts`` (decreasing, as for
:func:`~sdeflow.sample`) and data ``x`` at ``ts[-1]`` and returns the state at ``ts[0]``:

- ``method="explicit"`` runs the sampler's own step rules on the reversed grid: the probability-flow
  ODE integrated forwards, from data towards noise, at the sampler's order and NFE (DDIM inversion is
  the first-order case). Sampling the result back reproduces ``x`` only up to the two directions'
  discretisation errors; the round trip measures them.
- the exact methods invert the discrete sampling map itself: they find the noise ``z`` with
  ``sample(denoiser, sampler, ts, z).x == x`` to a tolerance, starting from the explicit inversion.
  ``"fixed-point"`` solves each sampling step for its input, last step first (a per-sample secant
  iteration on the step as the sampler takes it), for samplers whose steps carry no history (DDIM,
  Euler, Heun, single-step DPM-Solver). Multistep samplers reuse outputs at earlier (noisier) states,
  so their steps cannot be solved one at a time; ``"newton"`` solves the whole map by Newton's method,
  with per-sample GMRES on Jacobian-vector products taken as difference quotients of sampling passes.
  ``"exact"`` picks the one that applies. Every evaluation is counted, and the last sampling pass
  reports the round trip.
- ``"reversible"`` undoes the steps of an algebraically reversible sampler (BDIA, O-BELM, EDICT,
  reversible Heun; see :mod:`sdeflow.samplers.reversible`) one by one from the data, at the
  sampling run's own cost and with no iteration; ``"exact"`` picks it for those samplers. The
  result carries a :attr:`Inversion.companion`, the second half of the start state: sampling with
  ``sample(..., x_init=inv.noise, companion=inv.companion)`` gives back the data to round-off.

The step to ``t = 0`` (the final denoising jump, ``x_0 = x_hat``) maps many states to one and has no
inverse, so inversion grids end above 0, at the data's smallest noise level (``grids.*(t_min=...)``
with ``denoise_to_zero=False`` where a grid offers it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .denoisers import Denoiser
from .grids import check_grid
from .samplers.base import Sampler
from .run import Run, Steps, integrate
from .sampling import check_models, planned, sample
from .shapes import check_batch

METHODS = ("explicit", "exact", "fixed-point", "newton", "reversible")


@dataclass
class Inversion:
    """``noise``: the state at ``ts[0]`` (the sampling grid's start) found for the data; ``ts``: the
    sampling grid; ``nfe``: evaluations the inversion spent; ``round_trip``: per sample, the RMS over
    coordinates of ``sample(noise) - x`` (``None`` when not checked); ``round_trip_nfe``: what that
    check cost (0 for the fixed-point method, whose last sweep is the check); ``sweeps``: sampling
    passes of the fixed-point method; ``trajectory``: ``(n + 1, B, ...)`` states from the data to
    the noise (increasing time) when requested; ``companion``: the reversible method's second half of
    the start state, to pass to :func:`~sdeflow.sample` with the noise."""

    noise: torch.Tensor
    ts: torch.Tensor
    nfe: int
    method: str
    round_trip: torch.Tensor | None = None
    round_trip_nfe: int = 0
    iterations: int = 0
    converged: bool | None = None
    trajectory: torch.Tensor | None = None
    companion: torch.Tensor | None = None

    @property
    def round_trip_rms(self) -> float:
        """Root mean square of the round trip over the batch."""
        if self.round_trip is None:
            raise ValueError("the round trip was not checked (invert(..., check_round_trip=True))")
        return float(self.round_trip.pow(2).mean().sqrt())


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS over coordinates, in float64."""
    return x.reshape(x.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt()


def invert(denoiser: Denoiser, sampler: Sampler, ts, x: torch.Tensor, *, cond: dict | None = None,
           method: str = "explicit", tol: float | None = None, max_iter: int = 30, inner: int = 40,
           check_round_trip: bool = True, return_trajectory: bool = False, check_finite: bool | str = True) -> Inversion:
    """The noise at ``ts[0]`` that ``sampler`` on the grid ``ts`` maps to ``x`` (see the module docstring).

    Args:
        denoiser: a :class:`~sdeflow.denoisers.Denoiser`.
        sampler: a deterministic fixed-grid :class:`~sdeflow.samplers.Sampler`.
        ts: the sampling grid, decreasing, ending above 0; ``x`` lives at ``ts[-1]``.
        x: ``(B, *)`` data (in the dtype to work in).
        cond: conditioning passed to every evaluation (inversion under a class, a prompt, guidance).
        method: ``"explicit"`` (the sampler's steps on the reversed grid), ``"exact"`` (inverts the
            sampling map: ``"reversible"`` for reversible samplers, ``"fixed-point"`` for samplers
            whose steps carry no history, else ``"newton"``), ``"fixed-point"`` (step by step),
            ``"newton"`` (the whole map at once) or ``"reversible"`` (undoing a reversible
            sampler's steps).
        tol: exact methods: stop when every sample's round-trip RMS is at most ``tol`` times its RMS
            (at most ``tol`` for data near 0; the reversible method reports whether it is); default ``1e-9`` in
            float64, ``1e-4`` in float32,
            ``1e-2`` in half precision.
        max_iter, inner: exact methods: sampling passes (fixed-point) or Newton steps, and the
            iterations per step (fixed-point) or the Krylov dimension per Newton step.
        check_round_trip: explicit and reversible: sample the noise back and report the round trip
            (the iterative methods always report theirs, from their last pass).
        return_trajectory: explicit only: also return the states on the grid, data first.
        check_finite: as for :func:`~sdeflow.sample`.
    """
    check_models(denoiser, sampler)
    if sampler.stochastic or sampler.adaptive:
        kind = "stochastic" if sampler.stochastic else "adaptive (its steps depend on the run)"
        raise ValueError(f"{type(sampler).__name__} is {kind}: inversion needs a deterministic fixed-grid "
                         "sampler (DDIM, DPM-Solver(++), UniPC, DEIS, iPNDM, Heun, Euler, ...)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "exact":
        method = "reversible" if sampler.reversible else "newton" if sampler.has_history else "fixed-point"
    if method == "reversible" and not sampler.reversible:
        raise ValueError(f"method='reversible' needs a reversible sampler (BDIA, OBELM, EDICT, ReversibleHeun), "
                         f"got {type(sampler).__name__}: use method='exact'")
    if method == "fixed-point" and sampler.has_history:
        raise ValueError(f"{type(sampler).__name__} reuses model outputs at earlier states, so its steps cannot "
                         "be inverted one by one: use method='newton' (or 'exact'), which inverts the whole map")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    for name, value in (("max_iter", max_iter), ("inner", inner)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if return_trajectory and method != "explicit":
        raise ValueError("return_trajectory is available with method='explicit' only")
    check_batch(x, "x")
    ts = check_grid(ts)
    if float(ts[-1]) <= 0:
        raise ValueError("an inversion grid must end above t = 0: the final denoising step to t = 0 maps many "
                         "states to one and has no inverse (end the grid at the data's smallest noise level, "
                         "e.g. grids.karras_grid(n, schedule, denoise_to_zero=False))")
    sch = denoiser.schedule
    field = Run(denoiser, cond, check_finite)
    if tol is None:
        tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(x.dtype, 1e-2)
    bound = tol * torch.clamp(_rms(x), min=1.0)
    if method == "reversible":
        return _reversible(denoiser, sampler, ts, x, field, cond, check_round_trip, check_finite, bound)
    up = planned(sampler, sch, ts.flip(0), increasing=True)
    z, traj = integrate(field, sampler, up, x, return_trajectory=return_trajectory)
    field.finish(z, up)
    if method == "explicit":
        out = Inversion(z, ts, field.calls, method, trajectory=traj)
        if check_round_trip:
            with torch.no_grad():
                back = sample(denoiser, sampler, ts, z, cond=cond, check_finite=check_finite)
            out.round_trip, out.round_trip_nfe = _rms(back.x - x), back.nfe
        return out
    solve = _newton if method == "newton" else _fixed_point
    down = planned(sampler, sch, ts)
    z, residual, iterations = solve(Steps(sampler, down, field), x, z, bound, max_iter, inner)
    field.finish(z, down)
    return Inversion(z, ts, field.calls, method, residual, 0, iterations, bool((residual <= bound).all()))


def _reversible(denoiser, sampler, ts, x, field, cond, check_round_trip, check_finite, bound) -> Inversion:
    """Undo a reversible sampler's steps from the state its last step may have produced with output
    ``x``; ``converged``: whether the round trip (when checked) is within ``bound``, which only
    round-off amplified by the undone steps can exceed."""
    plan = planned(sampler, denoiser.schedule, ts)
    sampler.check_invertible(plan)
    steps = Steps(sampler, plan, field)
    with torch.no_grad():
        z, state = steps.unrun((x, sampler.end_state(field, x, plan)), len(plan.t), 0)
    field.finish(z, plan)
    out = Inversion(z, ts, field.calls, "reversible", companion=sampler.companion(state))
    if check_round_trip:
        with torch.no_grad():
            back = sample(denoiser, sampler, ts, z, cond=cond, check_finite=check_finite, companion=out.companion)
        out.round_trip, out.round_trip_nfe = _rms(back.x - x), back.nfe
        out.converged = bool((out.round_trip <= bound).all())
    return out


def _pass(steps: Steps, z):
    """One sampling pass from ``z`` without autograd; returns the states on the grid (noise first)
    and the sampler's state before each step."""
    path, states, snap = [z], [], steps.start(z)
    with torch.no_grad():
        for i in range(len(steps.plan.t)):
            states.append(snap[1])
            snap = steps.run_steps(snap, i, i + 1)
            path.append(snap[0])
    return path, states


def _fixed_point(steps, x, z, bound, max_iter, inner):
    """Solve ``sample(z) = x`` step by step, last step first, for a sampler whose steps carry no
    history: each step's input is found by :func:`_solve_step` from the states of a sampling pass
    from the current noise (the first from the explicit inversion); a new pass checks the result.
    Returns the noise, the per-sample round trip and the number of passes."""
    best, stalled = None, 0
    for sweep in range(1, max_iter + 1):
        path, states = _pass(steps, z)
        residual = _rms(path[-1] - x)
        # stop when done, or when three sweeps in a row did not lower the worst residual (data
        # outside the sampling map's image has no preimage to converge to)
        worst = float(residual.max())
        stalled = 0 if best is None or worst < 0.9 * best else stalled + 1
        best = worst if best is None else min(best, worst)
        if bool((residual <= bound).all()) or sweep == max_iter or stalled == 3:
            return z, residual, sweep
        target = x
        for i in reversed(range(len(steps.plan.t))):
            target = _solve_step(steps, i, states[i], path[i], path[i + 1], target, 0.01 * bound, inner)
        z = target


def _solve_step(steps, i, state, u, out, target, bound, max_iter):
    """The input ``u`` with ``step_i(u, state) = target``, from a guess ``u`` whose step gave
    ``out``: ``u <- u + (target - step(u)) / c`` with a per-sample slope ``c``, first the ratio of
    the step's output and input sizes, then secant estimates along the last update."""
    view = (-1,) + (1,) * (u.ndim - 1)
    c = (_rms(out) / torch.clamp(_rms(u), min=1e-30)).clamp(min=1e-8)
    for _ in range(max_iter):
        r = target - out
        if bool((_rms(r) <= bound).all()):
            break
        du = r / c.reshape(view).to(r.dtype)
        u_new = u + du
        with torch.no_grad():
            out_new, _ = steps.run_steps((u_new, state), i, i + 1)
        d_in, d_out = _flat(du), _flat(out_new - out)
        secant = (d_out * d_in).sum(1) / torch.clamp((d_in * d_in).sum(1), min=1e-300)
        c = torch.where(secant > 1e-8 * c, secant, c)
        u, out = u_new, out_new
    return u


def _flat(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).to(torch.float64)


def _newton(steps, x, z, bound, max_iter, krylov):
    """Solve ``sample(z) = x`` by Newton's method on the whole sampling map, for any deterministic
    sampler (multistep ones included, whose steps reuse outputs at earlier states). Each Newton
    system ``J dz = x - F(z)`` is solved per sample by GMRES with Jacobian-vector products as
    difference quotients of sampling passes (every pass's evaluations counted); a step that raises
    a sample's residual is halved for that sample. Returns the noise, the per-sample round trip and
    the number of Newton steps."""
    def run(v):
        with torch.no_grad():
            return steps.run_steps(steps.start(v), 0, len(steps.plan.t))[0]

    view = (-1,) + (1,) * (x.ndim - 1)
    fz = run(z)
    residual = _rms(fz - x)
    rel = torch.finfo(x.dtype).eps ** 0.5
    for step in range(1, max_iter + 1):
        if bool((residual <= bound).all()):
            return z, residual, step - 1
        scale = rel * (1.0 + _flat(z).norm(dim=1))

        def jvp(v):  # per-sample J v for unit-norm rows v
            dz = (v * scale[:, None]).reshape(z.shape).to(z.dtype)
            return _flat(run(z + dz) - fz) / scale[:, None]

        dz = _gmres(jvp, _flat(x - fz), krylov, 1e-3).reshape(z.shape).to(z.dtype)
        # backtracking: halve the step of each sample whose residual it does not lower; a sample that
        # no step lowers keeps its noise (the map may fold there: no preimage nearby)
        factor = torch.ones(z.shape[0], dtype=torch.float64)
        improved = torch.zeros(z.shape[0], dtype=torch.bool)
        z_next, f_next, res_next = z.clone(), fz.clone(), residual.clone()
        for _ in range(8):
            z_try = z + dz * factor.reshape(view).to(z.dtype)
            f_try = run(z_try)
            res_try = _rms(f_try - x)
            better = (res_try < residual) & ~improved
            z_next[better], f_next[better], res_next[better] = z_try[better], f_try[better], res_try[better]
            improved |= better
            if bool(improved.all()):
                break
            factor = torch.where(improved, factor, 0.5 * factor)
        done = residual <= bound
        if not bool((improved | done).any()):
            return z, residual, step
        z, fz, residual = z_next, f_next, res_next
    return z, residual, max_iter


def _gmres(matvec, b: torch.Tensor, m: int, rtol: float) -> torch.Tensor:
    """Per-row GMRES for ``A_r y_r = b_r`` (``b``: ``(B, D)`` float64; ``matvec`` applies every row's
    ``A_r`` to the rows of a ``(B, D)`` batch of unit vectors), at most ``min(m, D)`` iterations, stopping when
    every row's residual is below ``rtol`` times its ``|b_r|``."""
    beta = b.norm(dim=1)
    safe = torch.clamp(beta, min=1e-300)
    basis = [b / safe[:, None]]
    m = min(m, b.shape[1])
    hess = torch.zeros(b.shape[0], m + 1, m, dtype=torch.float64)
    coef = torch.zeros(b.shape[0], 1, dtype=torch.float64)
    for j in range(m):
        w = matvec(basis[j])
        for _ in range(2):  # Gram-Schmidt twice: orthogonal to round-off
            for i, v in enumerate(basis):
                h = (w * v).sum(1)
                hess[:, i, j] += h
                w = w - h[:, None] * v
        norm = w.norm(dim=1)
        hess[:, j + 1, j] = norm
        basis.append(w / torch.clamp(norm, min=1e-300)[:, None])
        rhs = torch.zeros(b.shape[0], j + 2, 1, dtype=torch.float64)
        rhs[:, 0, 0] = beta
        h = hess[:, : j + 2, : j + 1]
        coef = torch.linalg.lstsq(h, rhs).solution
        left = (rhs - h @ coef)[:, :, 0].norm(dim=1)
        if bool((left <= rtol * safe).all()):
            break
    return sum(coef[:, i] * basis[i] for i in range(coef.shape[1]))

"""Editing: moving data from one condition to another (a class, a prompt) with a generative model.

- :func:`edit_grid`: the grid both take by default: logSNR-spaced from the time editing starts to
  the smallest noise level (no final jump to ``t = 0``, which an inversion cannot undo).
- :func:`edit_by_inversion`: invert ``x`` under the source condition (:func:`~sdeflow.invert`, exact
  by default) and sample the noise back under the target one.
- :func:`flow_edit`: FlowEdit, which needs no inversion. It integrates an ODE on the edited sample
  ``z`` (starting at the data ``x``) driven by the difference of the two conditions' velocities at
  coupled noisy points: at each time ``t`` of the grid, with fresh noise ``n``,

      x_t = alpha_t x + sigma_t n,         z_t = z + (x_t - x),
      dz/dt = E_n[ u_target(z_t, t) - u_source(x_t, t) ],

  where ``u = p x + q x_hat`` is the probability-flow ODE's velocity (``n_avg`` noise draws per step
  average the expectation; Euler steps in ``t``). Starting the grid below ``t = 1`` (``t_start``)
  keeps more of the source's structure. Where both conditions' velocities are affine in ``x`` with
  the same linear part (Gaussian classes sharing a covariance) the noise cancels and the edit is
  the translation between the two conditions' flows, the optimal transport map (tested).

Reference: Kulikov, Kleiner, Huberman-Spiegelglas, Michaeli, "FlowEdit: Inversion-Free Text-Based
Editing Using Pre-Trained Flow Models", 2024, arXiv:2412.08629.
"""

from __future__ import annotations

import torch

from .denoisers import Denoiser
from .grids import check_grid, default_t_min, logsnr_grid, start_time
from .inversion import invert
from .noise import NoiseSource
from .run import Run, SampleResult
from .samplers.base import Sampler, ode_coefficients
from .sampling import check_denoiser, sample
from .shapes import check_batch


def edit_grid(n: int, schedule, start: float | None = None) -> torch.Tensor:
    """``n`` logSNR-spaced steps from ``start`` (default: where the schedule's grids start, ``t = 1``
    or just below) down to the noise level 0.002 (:func:`~sdeflow.grids.default_t_min`). A later
    ``start`` keeps more of the input: its noise levels above ``start`` are never visited."""
    top, t_min = start_time(schedule), default_t_min(schedule)
    start = top if start is None else float(start)
    if not t_min < start <= top:
        raise ValueError(f"the start of editing must be a time in ({t_min:.3g}, {top:g}] (above the smallest noise "
                         f"level, at most where the schedule starts), got {start}")
    return logsnr_grid(n, schedule, t_max=start, t_min=t_min, denoise_to_zero=False)


def edit_by_inversion(denoiser: Denoiser, sampler: Sampler, ts, x: torch.Tensor, *, source: dict, target: dict,
                      method: str = "exact", check_finite: bool | str = True) -> SampleResult:
    """Invert ``x`` (at ``ts[-1]``) under ``source`` with :func:`~sdeflow.invert` and sample the noise
    back under ``target``; ``nfe`` counts both. A reversible sampler's companion is passed on."""
    inv = invert(denoiser, sampler, ts, x, cond=source, method=method, check_round_trip=False,
                 check_finite=check_finite)
    out = sample(denoiser, sampler, ts, inv.noise, cond=target, companion=inv.companion, check_finite=check_finite)
    return SampleResult(out.x, inv.nfe + out.nfe, out.ts)


def flow_edit(denoiser: Denoiser, ts, x: torch.Tensor, *, source: dict, target: dict, n_avg: int = 1,
              noise: NoiseSource | None = None, check_finite: bool | str = True) -> SampleResult:
    """FlowEdit (see the module docstring) of data ``x`` from condition ``source`` to ``target``.

    Args:
        denoiser: a :class:`~sdeflow.denoisers.Denoiser` (a guided one for guided editing).
        ts: decreasing grid from the time editing starts (``1``: all of the source's noise levels;
            lower keeps more of the source) to the time it stops (usually 0).
        x: ``(B, *)`` data to edit.
        source, target: the conditioning of the data and of the edit (``cond`` dicts).
        n_avg: noise draws averaged per step (each costs two evaluations).
        noise: the noise source (default: the global RNG).
    """
    check_denoiser(denoiser)
    check_batch(x, "x")
    for name, c in (("source", source), ("target", target)):
        if not isinstance(c, dict):
            raise TypeError(f"{name} must be a dict of conditioning keywords (e.g. {{'label': labels}}), "
                            f"got {type(c).__name__}")
    if not isinstance(n_avg, int) or n_avg < 1:
        raise ValueError(f"n_avg must be an integer >= 1, got {n_avg!r}")
    ts = check_grid(ts)
    sch = denoiser.schedule
    t64 = ts.to(torch.float64)
    a, s = sch.alpha(t64).tolist(), sch.sigma(t64).tolist()
    p, q = (v.tolist() for v in ode_coefficients(sch, t64[:-1]))
    times = t64.tolist()
    run = Run(denoiser, None, check_finite, noise)
    z = x
    with run:
        for i in range(len(ts) - 1):
            t, h = times[i], times[i + 1] - times[i]
            run.step = i
            draw = run.step_noise(x)
            drift = torch.zeros_like(x)
            for k in range(n_avg):
                x_t = a[i] * x + s[i] * draw(k)
                z_t = z + (x_t - x)
                u_src = p[i] * x_t + q[i] * run(x_t, t, **source)
                u_tar = p[i] * z_t + q[i] * run(z_t, t, **target)
                drift += (u_tar - u_src) / n_avg
            z = z + h * drift
            run.stepped(i, times[i], times[i + 1], z)
    run.finish(z)
    return SampleResult(z, run.calls, ts)

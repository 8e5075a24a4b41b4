"""The certificate on Gaussian data: the grid minimising the exact W2 of a sampler's output law, and
Align Your Steps' closed form for Gaussian data."""

from __future__ import annotations

import math

import torch

from .. import grids
from ..schedules import Schedule
from .fit import descend
from .space import GridSpace, hand_grids, steps_for


def exact_optimal_grid(mixture, sampler, schedule: Schedule, nfe: int, *, iters: int = 200,
                       t_max: float | None = None) -> tuple[torch.Tensor, float]:
    """The grid of ``nfe`` evaluations minimising the exact W2 between ``sampler``'s output law and one
    Gaussian ``mixture`` (diagonal covariance), and that W2: the best of descents started from every
    hand grid."""
    from ..analytic.sampler_law import gaussian_output_law, gaussian_w2

    n = steps_for(sampler, schedule, nfe)
    space = GridSpace(schedule, n, t_max)
    mu, var = mixture.means[0], mixture.cov.var[0]

    def w2(ts):
        m, v = gaussian_output_law(mixture, sampler, schedule, ts)
        out = gaussian_w2(m, v.clamp_min(0), mu, var)
        return out if math.isfinite(out) else math.inf

    if n == 1:  # one step from t_max to 0: nothing to choose
        ts = space.grid(torch.zeros(1, dtype=torch.float64))
        return ts, w2(ts)
    best_ts, best = None, math.inf
    for ts in hand_grids(schedule, n, t_max).values():  # a descent from every hand grid: the landscape has
        start = space.grid(space.logits(ts))           # several basins, and the best one wins
        theta, now, _ = descend(lambda th: w2(space.grid(th)), space.logits(start), iters=iters)
        if now < best:
            best_ts, best = space.grid(theta), now
    return best_ts, best


def ays_gaussian_grid(n: int, schedule: Schedule, data_std: float, t_max: float | None = None,
                      t_min: float | None = None) -> torch.Tensor:
    """Align Your Steps' closed form for Gaussian data of standard deviation ``c = data_std``: the
    noise levels ``sigma / alpha`` follow a tangent law, ``r_i = c tan((1 - u_i) atan(r_max / c) +
    u_i atan(r_min / c))`` with ``u_i = i / (n - 1)`` over ``n`` points, then a final step to ``t = 0``.
    Reference: Sabour et al., "Align Your Steps", 2024, arXiv:2404.14507."""
    if not data_std > 0:
        raise ValueError(f"data_std must be > 0, got {data_std}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")
    t_max = grids.start_time(schedule) if t_max is None else t_max
    t_min = grids.default_t_min(schedule) if t_min is None else t_min
    if n == 1:
        return grids.check_grid([t_max, 0.0])
    r = torch.exp(-0.5 * schedule.logsnr(torch.tensor([t_max, t_min], dtype=torch.float64)))
    a, b = torch.atan(r / data_std)
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    ts = grids.sigma_times(data_std * torch.tan((1 - u) * a + u * b), schedule)
    ts[0], ts[-1] = t_max, t_min
    return grids.check_grid(torch.cat([ts, torch.zeros(1, dtype=torch.float64)]))

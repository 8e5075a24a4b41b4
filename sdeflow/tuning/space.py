"""The space of tuned grids: ``n``-step grids ending at ``t = 0`` as ``n`` unconstrained logits, the
candidate times of the DP search, and the hand grids a tuned grid starts from and is compared with."""

from __future__ import annotations

import torch

from .. import grids
from ..schedules import Schedule

#: Smallest noise level ``sigma / alpha`` a tuned grid may step to before its final step to ``t = 0``.
SIGMA_FLOOR = 1e-3
#: Hand grids a tuned grid is compared with (and the descent may start from).
HAND_GRIDS = ("auto", "logsnr", "karras", "polyexponential", "quadratic", "uniform")


class GridSpace:
    """The ``n``-step grids ending at ``t = 0``, as ``n`` unconstrained logits (see the module docstring)."""

    def __init__(self, schedule: Schedule, n: int, t_max: float | None = None):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")
        self.schedule, self.n = schedule, n
        self.t_max = grids.start_time(schedule) if t_max is None else float(t_max)
        self.t_lo = grids.default_t_min(schedule, SIGMA_FLOOR)
        if not 0 < self.t_lo < self.t_max:
            raise ValueError(f"t_max={self.t_max} leaves no room above the smallest time {self.t_lo:.4g}")
        lam = schedule.logsnr(torch.tensor([self.t_max, self.t_lo], dtype=torch.float64))
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("logSNR is infinite at t_max: choose t_max < 1 for a zero-terminal-SNR schedule")
        self.lam0, self.lam_hi = float(lam[0]), float(lam[1])
        self.floor = 1e-4 / n  # every increment keeps at least this share: times stay distinct

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        """The grid of logits ``theta`` (``n`` values)."""
        if self.n == 1:
            return grids.check_grid([self.t_max, 0.0])
        w = self.floor + (1 - self.n * self.floor) * torch.softmax(theta.to(torch.float64), 0)
        lam = self.lam0 + (self.lam_hi - self.lam0) * torch.cumsum(w[:-1], 0)
        inner = self.schedule.t_from_logsnr(lam).clamp(self.t_lo, self.t_max)
        return grids.check_grid(torch.cat([torch.tensor([self.t_max], dtype=torch.float64), inner,
                                           torch.zeros(1, dtype=torch.float64)]))

    def logits(self, ts) -> torch.Tensor:
        """Logits of the grid nearest to ``ts`` (an ``n``-step grid ending at 0) in this space."""
        ts = grids.check_grid(ts)
        if ts.numel() != self.n + 1 or float(ts[-1]) != 0.0:
            raise ValueError(f"expected a grid of {self.n} steps ending at t = 0, got {ts.numel() - 1} steps "
                             f"ending at {float(ts[-1]):.4g}")
        if self.n == 1:
            return torch.zeros(1, dtype=torch.float64)
        inner = ts[1:-1].clamp(self.t_lo, self.t_max)
        u = ((self.schedule.logsnr(inner) - self.lam0) / (self.lam_hi - self.lam0)).clamp(0.0, 1.0)
        steps = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), u, torch.ones(1, dtype=torch.float64)]))
        w = ((steps - self.floor) / (1 - self.n * self.floor)).clamp_min(1e-300)
        return torch.log(w / w.sum())


def steps_for(sampler, schedule: Schedule, nfe: int) -> int:
    """The number of steps of a grid ending at ``t = 0`` whose run takes at most ``nfe`` evaluations."""
    from ..samplers import steps_for_nfe

    return steps_for_nfe(sampler, schedule, "logsnr", nfe)


def candidate_times(space: GridSpace, candidates: int = 40) -> torch.Tensor:
    """``candidates`` times uniform in logSNR from ``t_max`` to the smallest level of ``space``: the
    points the DP search chooses its grid from."""
    lam = torch.linspace(space.lam0, space.lam_hi, candidates, dtype=torch.float64)
    times = space.schedule.t_from_logsnr(lam).clamp(space.t_lo, space.t_max)
    times[0] = space.t_max
    return times


def hand_grids(schedule: Schedule, n: int, t_max: float | None = None) -> dict[str, torch.Tensor]:
    """The hand grids of :data:`HAND_GRIDS` with ``n`` steps ending at ``t = 0`` that the schedule takes."""
    from ..grids import GRIDS

    out = {}
    for name in HAND_GRIDS:
        try:
            ts = GRIDS[name](n, schedule, t_max=t_max)
        except ValueError:
            continue
        if float(ts[-1]) == 0.0 and ts.numel() == n + 1 and not bool(grids.below_domain(ts, schedule).any()):
            out[name] = ts
    return out

"""The one table from names to objects. Strings live here, at the edge; the library passes objects."""

from __future__ import annotations

from typing import Callable

from .. import grids, samplers, schedules

SCHEDULES: dict[str, Callable[[], schedules.Schedule]] = {
    "vp-linear": schedules.VPLinear,
    "vp-cosine": schedules.VPCosine,
    "ddpm-linear": schedules.ddpm_linear,
    "scaled-linear": schedules.scaled_linear,
    "ve": schedules.VE,
    "edm": schedules.EDM,
    "rectified-flow": schedules.RectifiedFlow,
    "trigonometric": schedules.Trigonometric,
}

#: Every sampler with its default settings; the contract tests run over this table.
SAMPLERS: dict[str, Callable[[], samplers.Sampler]] = {
    "euler": samplers.Euler,
    "ddim": samplers.DDIM,
    "ddim-eta1": lambda: samplers.DDIM(eta=1.0),
    "heun": samplers.Heun,
}

#: Grids by name: ``(n_steps, schedule) -> ts``.
GRIDS: dict[str, Callable[[int, schedules.Schedule], "grids.torch.Tensor"]] = {
    "uniform": lambda n, schedule: grids.uniform_grid(n, t_min=0.0),
    "quadratic": lambda n, schedule: grids.quadratic_grid(n),
    "logsnr": lambda n, schedule: grids.logsnr_grid(n, schedule, t_max=_t_max(schedule)),
    "karras": lambda n, schedule: grids.karras_grid(n, schedule, t_max=_t_max(schedule)),
}


def _t_max(schedule) -> float:
    """Noise-spaced grids need finite logSNR at the start: zero-terminal-SNR schedules start just below 1."""
    return 1.0 if bool(schedule.logsnr(1.0) > -30) else 0.999


def lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def steps_for_nfe(sampler: samplers.Sampler, schedule, grid: str, nfe: int) -> int:
    """The largest step count whose run takes at most ``nfe`` evaluations (at least one step)."""
    n = 1
    while sampler.count_nfe(schedule, lookup(GRIDS, "grid", grid)(n + 1, schedule)) <= nfe:
        n += 1
    return n

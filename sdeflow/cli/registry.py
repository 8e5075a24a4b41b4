"""The one table from names to objects. Strings live here, at the edge; the library passes objects."""

from __future__ import annotations

from typing import Callable

from .. import analytic, grids, samplers, schedules

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
    "heun3": lambda: samplers.Heun(third_order=True),
    "edm-heun": samplers.EDMHeun,
    "dpm-solver-1": lambda: samplers.DPMSolver(solver_order=1),
    "dpm-solver-2": lambda: samplers.DPMSolver(solver_order=2),
    "dpm-solver-3": lambda: samplers.DPMSolver(solver_order=3),
    "dpm-solver-2m": lambda: samplers.DPMSolverMultistep(order=2),
    "dpm-solver-3m": lambda: samplers.DPMSolverMultistep(order=3),
    "dpm-solver++-2s": lambda: samplers.DPMSolver(solver_order=2, form="data"),
    "dpm-solver++-2m": lambda: samplers.DPMSolverPP(order=2, variant="midpoint"),
    "dpm-solver++-2m-heun": lambda: samplers.DPMSolverPP(order=2, variant="heun"),
    "dpm-solver++-3m": lambda: samplers.DPMSolverPP(order=3),
    "dpm-solver++-3m-unic": lambda: samplers.DPMSolverPP(order=3, corrector=True),
    "unipc-bh1": lambda: samplers.UniPC(order=2, variant="bh1"),
    "unipc-bh2": lambda: samplers.UniPC(order=2, variant="bh2"),
    "unipc-3": lambda: samplers.UniPC(order=3, variant="bh2"),
    "unip-3": lambda: samplers.UniPC(order=3, corrector=False),
    "deis-1": lambda: samplers.DEIS(order=1),
    "deis-2": lambda: samplers.DEIS(order=2),
    "deis-3": lambda: samplers.DEIS(order=3),
    "deis-rho-3": lambda: samplers.DEIS(order=3, variant="rhoab"),
    "lms": lambda: samplers.DEIS(order=4, variant="rhoab", lower_order_final=False),
    "ipndm": samplers.IPNDM,
    "dpm-solver-12": lambda: samplers.DPMSolverAdaptive(solver_order=2),
    "dpm-solver-23": lambda: samplers.DPMSolverAdaptive(solver_order=3),
    "rk45": samplers.RK45,
    # stochastic
    "euler-maruyama": samplers.EulerMaruyama,
    "euler-maruyama-eta0.5": lambda: samplers.EulerMaruyama(eta=0.5),
    "ddpm": samplers.DDPM,
    "ddpm-large": lambda: samplers.DDPM(variance="large"),
    "euler-ancestral": samplers.EulerAncestral,
    "edm-churn": samplers.EDMStochastic,
    "edm-churn-euler": lambda: samplers.EDMStochastic(heun=False),
    "sde-dpm-solver++-1": lambda: samplers.SDEDPMSolverPP(order=1),
    "sde-dpm-solver++-2m": lambda: samplers.SDEDPMSolverPP(order=2, variant="midpoint"),
    "sde-dpm-solver++-2m-heun": lambda: samplers.SDEDPMSolverPP(order=2, variant="heun"),
    "sde-dpm-solver++-3m": lambda: samplers.SDEDPMSolverPP(order=3),
    "sde-dpm-solver++-2s": samplers.SDEDPMSolverPPSingle,
    "pc-langevin": samplers.PredictorCorrector,
    "restart": samplers.Restart,
    "gotta-go-fast": samplers.GottaGoFast,
}

#: Grids by name: ``(n_steps, schedule) -> ts``. Discrete spacings need a discrete schedule.
GRIDS: dict[str, Callable[[int, schedules.Schedule], "grids.torch.Tensor"]] = {
    "auto": lambda n, schedule: grids.auto_grid(n, schedule, t_max=_t_max(schedule)),
    "uniform": lambda n, schedule: grids.uniform_grid(n, t_min=0.0),
    "quadratic": lambda n, schedule: grids.quadratic_grid(n),
    "logsnr": lambda n, schedule: grids.logsnr_grid(n, schedule, t_max=_t_max(schedule)),
    "karras": lambda n, schedule: grids.karras_grid(n, schedule, t_max=_t_max(schedule)),
    "polyexponential": lambda n, schedule: grids.polyexponential_grid(n, schedule, rho=2.0, t_max=_t_max(schedule)),
    "shifted": lambda n, schedule: grids.shift_grid(grids.uniform_grid(n), 3.0),
    "linspace": lambda n, schedule: grids.discrete_grid(n, schedule, "linspace"),
    "leading": lambda n, schedule: grids.discrete_grid(n, schedule, "leading", steps_offset=1),
    "trailing": lambda n, schedule: grids.discrete_grid(n, schedule, "trailing"),
}


def parse_grid(text: str, n: int, schedule) -> "grids.torch.Tensor":
    """A grid name from :data:`GRIDS`, or a user array of decreasing times ``"1,0.6,0.3,0"``."""
    if "," in text:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"a user grid is comma-separated numbers, got {text!r}")
        return grids.check_grid(values)
    return lookup(GRIDS, "grid", text)(n, schedule)


#: Exact problems by name: ``() -> (mixture, sample shape)``.
PROBLEMS = {
    "ring-2d": lambda: (analytic.ring_2d(), (2,)),
    "mixture-64d": lambda: (analytic.random_mixture(64, 8, seed=1), (64,)),
    "image-mixture": lambda: (analytic.random_mixture(3 * 32 * 32, 4, seed=2), (3, 32, 32)),
}


def _t_max(schedule) -> float:
    """Noise-spaced grids need finite logSNR at the start: zero-terminal-SNR schedules start just below 1."""
    return 1.0 if bool(schedule.logsnr(1.0) > -30) else 0.999


def lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def steps_for_nfe(sampler: samplers.Sampler, schedule, grid: str, nfe: int) -> int:
    """The largest step count whose run takes at most ``nfe`` evaluations (at least one step).
    Error-controlled samplers choose their own steps: they get one grid interval."""
    make = lookup(GRIDS, "grid", grid)
    if sampler.adaptive:
        return 1
    n = 1
    while sampler.prepare(schedule, make(n + 1, schedule)).nfe <= nfe:
        n += 1
    return n

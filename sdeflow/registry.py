"""The one table from names to objects: samplers, schedules, grids, parameterizations, exact problems and
inverse-problem methods. Every layer (the CLI, training, shipped models, benchmarks, tests) reads names
here; inside the library, objects are passed."""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import analytic, grids, samplers, schedules

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
    "midpoint": samplers.Midpoint,
    "rk4": samplers.RK4,
    "rk4-at-data": lambda: samplers.RK4(at_data=True),
    "rk4-38": lambda: samplers.RK4(variant="3/8"),
    "rk4-38-at-data": lambda: samplers.RK4(variant="3/8", at_data=True),
    "edm-heun": samplers.EDMHeun,
    "dpm-solver-1": lambda: samplers.DPMSolver(order=1),
    "dpm-solver-2": lambda: samplers.DPMSolver(order=2),
    "dpm-solver-3": lambda: samplers.DPMSolver(order=3),
    "dpm-solver-2m": lambda: samplers.DPMSolverMultistep(order=2),
    "dpm-solver-3m": lambda: samplers.DPMSolverMultistep(order=3),
    "dpm-solver++-2s": lambda: samplers.DPMSolver(order=2, form="data"),
    "dpm-solver++-2m": lambda: samplers.DPMSolverPP(order=2, variant="midpoint"),
    "dpm-solver++-2m-heun": lambda: samplers.DPMSolverPP(order=2, variant="heun"),
    "dpm-solver++-3m": lambda: samplers.DPMSolverPP(order=3),
    "dpm-solver++-3m-paper": lambda: samplers.DPMSolverPP(order=3, variant="midpoint"),
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
    "dpm-solver-12": lambda: samplers.DPMSolverAdaptive(order=2),
    "dpm-solver-23": lambda: samplers.DPMSolverAdaptive(order=3),
    "rk45": samplers.RK45,
    # reversible
    "bdia": samplers.BDIA,
    "obelm": samplers.OBELM,
    "edict": samplers.EDICT,
    "reversible-heun": samplers.ReversibleHeun,
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

#: Few-step samplers of flow maps (they need a flow-map model, so they are not in ``SAMPLERS``,
#: whose contract tests run on denoisers): plain jumps, and consistency sampling (re-noising).
FLOW_MAP_SAMPLERS: dict[str, Callable[[], samplers.Sampler]] = {
    "flow-map": samplers.FlowMapSampler,
    "consistency": lambda: samplers.FlowMapSampler(gamma=1.0),
}

#: Every sampler name the command line accepts.
ALL_SAMPLERS = {**SAMPLERS, **FLOW_MAP_SAMPLERS}

#: Grids by name: ``(n_steps, schedule) -> ts``. Discrete spacings need a discrete schedule.
GRIDS: dict[str, Callable[[int, schedules.Schedule], "grids.torch.Tensor"]] = {
    "auto": lambda n, schedule: grids.auto_grid(n, schedule),
    "uniform": lambda n, schedule: grids.within_domain(lambda k, lo: grids.uniform_grid(k, t_min=lo), n, schedule),
    "quadratic": lambda n, schedule: grids.within_domain(lambda k, lo: grids.quadratic_grid(k, t_min=lo), n, schedule),
    "logsnr": lambda n, schedule: grids.logsnr_grid(n, schedule),
    "karras": lambda n, schedule: grids.karras_grid(n, schedule),
    "polyexponential": lambda n, schedule: grids.polyexponential_grid(n, schedule, rho=2.0),
    "shifted": lambda n, schedule: grids.shift_grid(grids.uniform_grid(n), 3.0),
    "linspace": lambda n, schedule: grids.discrete_grid(n, schedule, "linspace"),
    "leading": lambda n, schedule: grids.discrete_grid(n, schedule, "leading", steps_offset=1),
    "trailing": lambda n, schedule: grids.discrete_grid(n, schedule, "trailing"),
}


#: sdeflow's default ``(sampler, grid)`` per schedule family, for NFE budgets up to the first number
#: (then the next row), chosen from the ODE benchmark (``docs/benchmarks/ode_solvers.json``; the
#: ratios to the best configuration are in ``docs/benchmarks/defaults.md``, ``python benchmarks/defaults.py``).
DEFAULTS = {
    "vp": [(10, "deis-3", "quadratic"), (35, "ipndm", "quadratic"), (math.inf, "dpm-solver++-3m-unic", "quadratic")],
    "sigma": [(10, "dpm-solver++-3m-unic", "auto"), (math.inf, "ipndm", "auto")],
    "flow": [(15, "unipc-bh2", "uniform"), (math.inf, "dpm-solver++-3m-unic", "quadratic")],
}


def family(schedule) -> str:
    """``sigma`` (alpha = 1: VE, EDM), ``flow`` (interpolants: rectified flow, trigonometric) or ``vp``
    (every other variance-preserving or general schedule, discrete ones included)."""
    if isinstance(schedule, (schedules.VE, schedules.EDM)):
        return "sigma"
    if isinstance(schedule, (schedules.RectifiedFlow, schedules.Trigonometric)):
        return "flow"
    return "vp"


def default_sampling(schedule, nfe: int) -> tuple[str, str]:
    """The default sampler and grid names for ``schedule`` at a budget of ``nfe`` evaluations."""
    return next((sampler, grid) for most, sampler, grid in DEFAULTS[family(schedule)] if nfe <= most)


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
    "labelled-ring-2d": lambda: (analytic.ring_2d(n_classes=4), (2,)),
    "mixture-64d": lambda: (analytic.random_mixture(64, 8, seed=1), (64,)),
    "image-mixture": lambda: (analytic.random_mixture(3 * 32 * 32, 4, seed=2), (3, 32, 32)),
}


def _inpaint_box(shape, seed=0):  # hide a centred box covering the middle half of each side
    from .inverse import Mask

    mask = torch.ones(shape, dtype=torch.bool)
    h, w = shape[-2:]
    mask[..., h // 4:h - h // 4, w // 4:w - w // 4] = False
    return Mask(mask)


def _operators():
    from .inverse import Blur, Downsample, Identity, Mask, RandomProjection

    return {
        "inpaint": _inpaint_box,
        "inpaint-random": lambda shape, seed=0: Mask(torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3),
        "superres": lambda shape, seed=0: Downsample(shape, 2),
        "blur": lambda shape, seed=0: Blur.gaussian(shape, std=1.0),
        "denoise": lambda shape, seed=0: Identity(shape),
        "compressed-sensing": lambda shape, seed=0: RandomProjection(shape, max(1, math.prod(shape) // 4), seed=seed),
    }


#: Measurement operators by name: ``(sample shape, seed) -> Operator`` (keep 30% of the entries at
#: random, 2x super-resolution, Gaussian blur of std 1, identity, a random projection to a quarter).
OPERATORS = ("inpaint", "inpaint-random", "superres", "blur", "denoise", "compressed-sensing")


def make_operator(name: str, shape: tuple[int, ...], seed: int = 0):
    """A measurement operator by name for samples of ``shape``."""
    return lookup(_operators(), "operator", name)(shape, seed)


#: Posterior samplers (``sdeflow.inverse.solve``) and when each is exact.
INVERSE_METHODS = {
    "mmps": "exact for a Gaussian prior of any covariance and a linear operator",
    "pigdm": "exact for an isotropic Gaussian prior whose variance is data_var",
    "dps": "approximate at every NFE (its step size zeta sets the bias)",
    "ddnm": "exact for an isotropic Gaussian prior and noiseless measurements; biased when the prior correlates "
            "measured and unmeasured directions",
    "diffpir": "approximate",
    "ddrm": "exact for an isotropic Gaussian prior (to O(1/steps)); biased when the prior correlates measured and "
            "unmeasured directions",
    "repaint": "approximate; masks only (more resampling, smaller error)",
    "daps": "approximate (Langevin on a Gaussian approximation of p(x | x_t))",
    "red-diff": "a point estimate: no posterior spread",
    "enkg": "approximate; needs no gradient of the operator, and more particles than measured dimensions",
    "smc": "asymptotically exact as the particles grow, for any prior (reports its effective sample size)",
}


def lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def deterministic_samplers() -> list[str]:
    """Names of the deterministic fixed-grid samplers: those inversion, editing and likelihood run."""
    return [name for name, make in SAMPLERS.items() if not ((s := make()).stochastic or s.adaptive)]


def steps_for_nfe(sampler: samplers.Sampler, schedule, grid: str, nfe: int) -> int:
    """The largest step count whose run takes at most ``nfe`` evaluations (at least one step).

    The NFE of a run grows with its step count and every step costs at least one evaluation, so the
    answer lies in ``1..nfe``. Beyond a few steps the NFE is affine in the step count (a fixed cost per
    step, plus warm-up and final steps), so two small plans predict the answer and two plans around
    it confirm it; where they do not, bisection finds it with about ``log2(nfe)`` plans.
    Error-controlled samplers choose their own steps: they get one grid interval."""
    make = lookup(GRIDS, "grid", grid)
    if sampler.adaptive:
        return 1
    limit = getattr(schedule, "num_steps", None) if grid in ("linspace", "leading", "trailing") else None
    hi = max(1, min(nfe, limit or nfe))

    def fits(n):
        return sampler.prepare(schedule, make(n, schedule)).nfe <= nfe

    if hi > 64:
        c16, c32 = (sampler.prepare(schedule, make(n, schedule)).nfe for n in (16, 32))
        slope = max((c32 - c16) / 16, 1.0)
        guess = min(max(1, int((nfe - (c16 - 16 * slope)) // slope)), hi)
        if fits(guess) and (guess == hi or not fits(guess + 1)):
            return guess
    if fits(hi):
        return hi
    lo = 1  # fits(1) holds: one step is the least a run can take
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo

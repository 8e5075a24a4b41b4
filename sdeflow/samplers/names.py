"""Samplers by name (a :class:`~sdeflow.names.NameTable` with a one-line summary each), the few-step ones of
flow maps, and sdeflow's default sampler and grid for each schedule family and budget."""

from __future__ import annotations

import math

from .. import schedules
from ..grids import DISCRETE_SPACINGS, GRIDS
from ..names import NameTable
from .adaptive import RK45, DPMSolverAdaptive
from .adaptive_sde import GottaGoFast
from .base import Sampler
from .bdia import BDIA
from .belm import OBELM
from .ddim import DDIM
from .ddpm import DDPM
from .deis import DEIS
from .dpm_solver import DPMSolver
from .dpm_solver_multistep import DPMSolverMultistep, DPMSolverPP
from .edict import EDICT
from .edm import EDMHeun
from .edm_stochastic import EDMStochastic
from .euler import Euler
from .euler_ancestral import EulerAncestral
from .euler_maruyama import EulerMaruyama
from .flow_map import FlowMapSampler
from .heavy_ball import HeavyBall
from .heun import RK4, Heun, Midpoint
from .ipndm import IPNDM
from .predictor_corrector import PredictorCorrector
from .restart import Restart
from .reversible_heun import ReversibleHeun
from .sde_dpm_solver import SDEDPMSolverPP
from .sde_dpm_solver_single import SDEDPMSolverPPSingle
from .unipc import UniPC

#: Every sampler with its default settings; the contract tests run over this table.
SAMPLERS = NameTable("sampler", {
    "euler": (Euler, "Euler on the probability-flow ODE in t"),
    "ddim": (DDIM, "DDIM (exponential integrator, order 1)"),
    "ddim-eta1": (lambda: DDIM(eta=1.0), "DDIM with eta = 1 (ancestral)"),
    "heun": (Heun, "Heun (EDM Algorithm 1) in t"),
    "heun3": (lambda: Heun(third_order=True), "Heun's third-order Runge-Kutta in t"),
    "midpoint": (Midpoint, "explicit midpoint in t (RF-Solver on flows)"),
    "rk4": (RK4, "classical Runge-Kutta 4 in t"),
    "rk4-at-data": (lambda: RK4(at_data=True), "classical RK4, last stage the model's velocity on clean data"),
    "rk4-38": (lambda: RK4(variant="3/8"), "Kutta's 3/8 rule (RK4) in t"),
    "rk4-38-at-data": (lambda: RK4(variant="3/8", at_data=True), "3/8 rule, last stage on clean data (flow_matching's rk4)"),
    "edm-heun": (EDMHeun, "EDM's Heun in sigma on x / alpha"),
    "dpm-solver-1": (lambda: DPMSolver(order=1), "DPM-Solver-1 (= DDIM)"),
    "dpm-solver-2": (lambda: DPMSolver(order=2), "DPM-Solver-2, single-step"),
    "dpm-solver-3": (lambda: DPMSolver(order=3), "DPM-Solver-3, single-step"),
    "dpm-solver-2m": (lambda: DPMSolverMultistep(order=2), "DPM-Solver, multistep, order 2"),
    "dpm-solver-3m": (lambda: DPMSolverMultistep(order=3), "DPM-Solver, multistep, order 3"),
    "dpm-solver++-2s": (lambda: DPMSolver(order=2, form="data"), "DPM-Solver++(2S)"),
    "dpm-solver++-2m": (lambda: DPMSolverPP(order=2, variant="midpoint"), "DPM-Solver++(2M), midpoint"),
    "dpm-solver++-2m-heun": (lambda: DPMSolverPP(order=2, variant="heun"), "DPM-Solver++(2M), Heun variant"),
    "dpm-solver++-3m": (lambda: DPMSolverPP(order=3), "DPM-Solver++(3M)"),
    "dpm-solver++-3m-paper": (lambda: DPMSolverPP(order=3, variant="midpoint"), "DPM-Solver++(3M), the papers' finite differences"),
    "dpm-solver++-3m-unic": (lambda: DPMSolverPP(order=3, corrector=True), "DPM-Solver++(3M) + UniC corrector"),
    "heavy-ball": (HeavyBall, "DPM-Solver++(2M) with heavy-ball momentum, beta 0.8 (wider stability, order 1)"),
    "unipc-bh1": (lambda: UniPC(order=2, variant="bh1"), "UniPC-2, B(h) = h"),
    "unipc-bh2": (lambda: UniPC(order=2, variant="bh2"), "UniPC-2, B(h) = e^h - 1"),
    "unipc-3": (lambda: UniPC(order=3, variant="bh2"), "UniPC-3 (bh2)"),
    "unip-3": (lambda: UniPC(order=3, corrector=False), "UniP-3, no corrector"),
    "deis-1": (lambda: DEIS(order=1), "DEIS tAB-1 (= DDIM)"),
    "deis-2": (lambda: DEIS(order=2), "DEIS tAB-2"),
    "deis-3": (lambda: DEIS(order=3), "DEIS tAB-3"),
    "deis-rho-3": (lambda: DEIS(order=3, variant="rhoab"), "DEIS rhoAB-3"),
    "lms": (lambda: DEIS(order=4, variant="rhoab", lower_order_final=False), "linear multistep in sigma (rhoAB-4)"),
    "ipndm": (IPNDM, "iPNDM / PLMS (constant-step AB-4)"),
    "dpm-solver-12": (lambda: DPMSolverAdaptive(order=2), "adaptive DPM-Solver-12"),
    "dpm-solver-23": (lambda: DPMSolverAdaptive(order=3), "adaptive DPM-Solver-23"),
    "rk45": (RK45, "adaptive Dormand-Prince RK45 in t"),
    "bdia": (BDIA, "BDIA (reversible leapfrog of DDIM steps, gamma 1)"),
    "obelm": (OBELM, "O-BELM (reversible two-step, noise variables)"),
    "edict": (EDICT, "EDICT (two coupled DDIM sequences, p 0.93)"),
    "reversible-heun": (ReversibleHeun, "reversible Heun in t"),
    "euler-maruyama": (EulerMaruyama, "Euler-Maruyama on the reverse SDE"),
    "euler-maruyama-eta0.5": (lambda: EulerMaruyama(eta=0.5), "Euler-Maruyama, half the reverse SDE's noise"),
    "ddpm": (DDPM, "DDPM ancestral, posterior variance"),
    "ddpm-large": (lambda: DDPM(variance="large"), "DDPM ancestral, variance beta"),
    "euler-ancestral": (EulerAncestral, "Euler-ancestral (= DDIM eta = 1)"),
    "edm-churn": (EDMStochastic, "EDM stochastic Heun (churn 40)"),
    "edm-churn-euler": (lambda: EDMStochastic(heun=False), "EDM stochastic Euler (churn 40)"),
    "sde-dpm-solver++-1": (lambda: SDEDPMSolverPP(order=1), "SDE-DPM-Solver-1 (= DDPM)"),
    "sde-dpm-solver++-2m": (lambda: SDEDPMSolverPP(order=2, variant="midpoint"), "SDE-DPM-Solver++(2M), midpoint"),
    "sde-dpm-solver++-2m-heun": (lambda: SDEDPMSolverPP(order=2, variant="heun"), "SDE-DPM-Solver++(2M), Heun"),
    "sde-dpm-solver++-3m": (lambda: SDEDPMSolverPP(order=3), "SDE-DPM-Solver++(3M)"),
    "sde-dpm-solver++-2s": (SDEDPMSolverPPSingle, "SDE-DPM-Solver++(2S), single-step"),
    "pc-langevin": (PredictorCorrector, "DDPM predictor + Langevin corrector"),
    "restart": (Restart, "Restart (Heun, jumps in rho 0.1 to 2)"),
    "gotta-go-fast": (GottaGoFast, "adaptive SDE solver (Gotta Go Fast)"),
})

#: Few-step samplers of flow maps (they need a flow-map model, so they are not in ``SAMPLERS``,
#: whose contract tests run on denoisers): plain jumps, and consistency sampling (re-noising).
FLOW_MAP_SAMPLERS = NameTable("sampler", {
    "flow-map": (FlowMapSampler, "jumps of a flow-map model along the probability-flow ODE"),
    "consistency": (lambda: FlowMapSampler(gamma=1.0), "consistency sampling: a jump to data, then re-noising"),
})

#: Every sampler name the command line accepts.
ALL_SAMPLERS = SAMPLERS.merged(FLOW_MAP_SAMPLERS)

#: The configurations defaults are chosen among (``benchmarks/families.py``) and a pilot run compares
#: (:func:`sdeflow.tuning.choose_configuration`): the strongest deterministic samplers of every family,
#: single-step ones included, on every grid that suits the schedule family.
CANDIDATE_SAMPLERS = ("ddim", "heun", "dpm-solver-2", "dpm-solver-3", "dpm-solver++-2m", "dpm-solver++-3m",
                      "dpm-solver++-3m-unic", "dpm-solver-3m", "unipc-bh1", "unipc-bh2", "unipc-3", "deis-3", "ipndm")
CANDIDATE_GRIDS = {"vp": ("auto", "quadratic", "logsnr", "karras", "trailing"),
                   "sigma": ("auto", "karras", "logsnr", "polyexponential", "uniform"),
                   "flow": ("auto", "uniform", "logsnr", "quadratic", "karras")}
#: From this budget on, only the samplers of order three and more are candidates: lower orders lose there.
HIGH_BUDGET = 50
HIGH_ORDER = ("dpm-solver-3", "dpm-solver++-3m", "dpm-solver++-3m-unic", "dpm-solver-3m", "unipc-3", "deis-3", "ipndm")


def candidate_samplers(nfe: int) -> tuple[str, ...]:
    """The candidate samplers at a budget of ``nfe`` evaluations (see :data:`CANDIDATE_SAMPLERS`)."""
    return HIGH_ORDER if nfe >= HIGH_BUDGET else CANDIDATE_SAMPLERS


#: sdeflow's default ``(sampler, grid)`` per schedule family, for NFE budgets up to the first number
#: (then the next row): samplers of one evaluation per step (a budget is then a step count, as
#: ``SdeflowScheduler``'s ``num_inference_steps`` is), chosen by ``python benchmarks/defaults.py`` on 20
#: random exact problems (``benchmarks/families.py``) for the least ``max(p90 / 1.5, max / 3)`` of the
#: ratio to the best configuration; ``docs/benchmarks/defaults.md`` reports the ratios on 20 others.
DEFAULTS = {
    "vp": [(1, "ddim", "auto"), (2, "dpm-solver-3m", "quadratic"), (4, "unipc-bh1", "quadratic"), (5, "ipndm", "logsnr"),
           (8, "ipndm", "karras"), (12, "dpm-solver-3m", "karras"), (math.inf, "unipc-3", "auto")],
    "sigma": [(2, "ddim", "auto"), (5, "unipc-bh1", "auto"), (8, "dpm-solver++-2m", "logsnr"), (10, "dpm-solver-3m", "karras"),
              (math.inf, "dpm-solver++-3m-unic", "auto")],
    "flow": [(1, "ddim", "auto"), (2, "ddim", "uniform"), (5, "unipc-bh1", "auto"), (8, "ipndm", "auto"),
             (10, "unipc-bh2", "auto"), (15, "dpm-solver-3m", "auto"), (20, "dpm-solver++-3m", "auto"),
             (math.inf, "unipc-3", "auto")],
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
    return default_for_family(family(schedule), nfe)


def recommended(schedule, nfe: int):
    """sdeflow's default configuration at a budget of ``nfe`` evaluations, ready to run:
    ``(sampler, ts)``, the same choice ``sdeflow sample`` and ``SdeflowScheduler(sampler="auto")`` make.
    ``sample(denoiser, *recommended(schedule, 10), x_init)`` takes at most 10 evaluations."""
    from ..grids import GRIDS

    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    name, grid = default_sampling(schedule, nfe)
    sampler = SAMPLERS[name]()
    return sampler, GRIDS[grid](steps_for_nfe(sampler, schedule, grid, nfe), schedule)


def default_for_family(name: str, nfe: int) -> tuple[str, str]:
    """The default sampler and grid names for the schedule family ``name`` (see :func:`family`) at ``nfe``."""
    return next((sampler, grid) for most, sampler, grid in DEFAULTS[name] if nfe <= most)


def deterministic_samplers() -> list[str]:
    """Names of the deterministic fixed-grid samplers: those inversion, editing and likelihood run."""
    return [name for name, make in SAMPLERS.items() if not ((s := make()).stochastic or s.adaptive)]


def steps_for_nfe(sampler: Sampler, schedule, grid: str, nfe: int) -> int:
    """The largest step count whose run takes at most ``nfe`` evaluations (at least one step).

    The NFE of a run grows with its step count and every step costs at least one evaluation, so the
    answer lies in ``1..nfe``. Beyond a few steps the NFE is affine in the step count (a fixed cost per
    step, plus warm-up and final steps), so two small plans predict the answer and two plans around
    it confirm it; where they do not, bisection finds it with about ``log2(nfe)`` plans.
    Error-controlled samplers choose their own steps: they get one grid interval."""
    make = GRIDS.lookup(grid)
    if sampler.adaptive:
        return 1
    limit = getattr(schedule, "num_steps", None) if grid in DISCRETE_SPACINGS else None
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

"""Samplers: immutable step rules driven by :func:`sdeflow.sample`, one per file.

Deterministic (probability-flow ODE): :class:`Euler`, :class:`DDIM`, :class:`Heun` (2nd or 3rd
order), :class:`Midpoint` (RF-Solver), :class:`RK4`, :class:`EDMHeun`, :class:`DPMSolver` (single-step, noise or data form),
:class:`DPMSolverMultistep` / :class:`DPMSolverPP`, :class:`UniPC`, :class:`DEIS` (tAB, rhoAB/LMS),
:class:`IPNDM`, and the error-controlled :class:`DPMSolverAdaptive` and :class:`RK45`.

Fitted to a model: :class:`FittedSampler` runs a deterministic sampler of the linear engines with
coefficients that :func:`sdeflow.tuning.optimize_coefficients` fitted on one grid.

Few-step, for flow maps (:class:`~sdeflow.denoisers.FlowMap`): :class:`FlowMapSampler` (jumps,
or consistency sampling with re-noising).

Reversible (each step undone exactly, see :mod:`.reversible`): :class:`BDIA`, :class:`OBELM`,
:class:`EDICT`, :class:`ReversibleHeun`.

Names: :data:`SAMPLERS` (every sampler by name, with a one-line summary), :data:`FLOW_MAP_SAMPLERS`,
and sdeflow's default sampler and grid per schedule family and budget (:func:`default_sampling`), in :mod:`.names`.

Stochastic (the reverse-SDE family of :mod:`.sde`): :class:`EulerMaruyama`, :class:`DDPM`,
:class:`DDIM` with ``eta``, :class:`EulerAncestral`, :class:`EDMStochastic` (churn),
:class:`SDEDPMSolverPP` (1, 2M, 3M), :class:`SDEDPMSolverPPSingle` (2S), the Langevin
:class:`PredictorCorrector`, :class:`Restart`, :class:`Recurrent` (each step repeated after re-noising)
and the error-controlled :class:`GottaGoFast`.
"""

from .adaptive import RK45, DPMSolverAdaptive
from .adaptive_sde import GottaGoFast
from .base import Plan, Sampler, ode_coefficients
from .bdia import BDIA
from .belm import OBELM
from .ddim import DDIM
from .ddpm import DDPM
from .deis import DEIS
from .dpm_solver import DPMSolver
from .dpm_solver_multistep import DPMSolverMultistep, DPMSolverPP
from .edm import EDMHeun
from .edict import EDICT
from .edm_stochastic import EDMStochastic
from .engine import Multistep, SingleStep
from .euler import Euler
from .euler_ancestral import EulerAncestral
from .euler_maruyama import EulerMaruyama
from .fitted import FittedSampler
from .flow_map import FlowMapSampler
from .heun import RK4, Heun, Midpoint
from .ipndm import IPNDM
from .predictor_corrector import PredictorCorrector
from .recurrent import Recurrent
from .restart import Restart
from .reversible import Reversible, TwoStep
from .reversible_heun import ReversibleHeun
from .sde_dpm_solver import SDEDPMSolverPP
from .sde_dpm_solver_single import SDEDPMSolverPPSingle
from .unipc import UniPC
from .names import (ALL_SAMPLERS, DEFAULTS, FLOW_MAP_SAMPLERS, SAMPLERS, default_sampling, deterministic_samplers,
                    family, recommended, steps_for_nfe)


__all__ = ["Sampler", "Plan", "ode_coefficients", "Multistep", "SingleStep", "Euler", "DDIM", "Heun", "Midpoint", "RK4", "EDMHeun",
           "DPMSolver", "DPMSolverMultistep", "DPMSolverPP", "UniPC", "DEIS", "IPNDM", "DPMSolverAdaptive", "RK45",
           "EulerMaruyama", "DDPM", "EulerAncestral", "EDMStochastic", "SDEDPMSolverPP", "SDEDPMSolverPPSingle",
           "PredictorCorrector", "Recurrent", "Restart", "GottaGoFast", "Reversible", "TwoStep", "BDIA", "OBELM", "EDICT",
           "ReversibleHeun", "FittedSampler", "FlowMapSampler", "SAMPLERS", "FLOW_MAP_SAMPLERS", "ALL_SAMPLERS", "DEFAULTS",
           "default_sampling", "deterministic_samplers", "family", "recommended", "steps_for_nfe"]


def _registered() -> dict:
    """Every sampler class the name tables use, by class name, that is not imported above: a sampler
    registered in :mod:`.names` is importable from here without being listed in this file."""
    return {type(make()).__name__: type(make()) for make in ALL_SAMPLERS.values()
            if type(make()).__name__ not in globals()}


_more = _registered()
globals().update(_more)
__all__ += sorted(_more)

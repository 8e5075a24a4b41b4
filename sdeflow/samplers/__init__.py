"""Samplers: immutable step rules driven by :func:`sdeflow.sample`, one per file.

Deterministic (probability-flow ODE): :class:`Euler`, :class:`DDIM`, :class:`Heun` (2nd or 3rd
order), :class:`EDMHeun`, :class:`DPMSolver` (single-step, noise or data form),
:class:`DPMSolverMultistep` / :class:`DPMSolverPP`, :class:`UniPC`, :class:`DEIS` (tAB, rhoAB/LMS),
:class:`IPNDM`, and the error-controlled :class:`DPMSolverAdaptive` and :class:`RK45`.
"""

from .adaptive import RK45, DPMSolverAdaptive
from .base import Plan, Sampler, ode_coefficients
from .ddim import DDIM
from .deis import DEIS
from .dpm_solver import DPMSolver
from .dpm_solver_multistep import DPMSolverMultistep, DPMSolverPP
from .edm import EDMHeun
from .engine import Multistep, SingleStep
from .euler import Euler
from .heun import Heun
from .ipndm import IPNDM
from .unipc import UniPC

__all__ = ["Sampler", "Plan", "ode_coefficients", "Multistep", "SingleStep", "Euler", "DDIM", "Heun", "EDMHeun",
           "DPMSolver", "DPMSolverMultistep", "DPMSolverPP", "UniPC", "DEIS", "IPNDM", "DPMSolverAdaptive", "RK45"]

"""Inverse problems with diffusion and flow priors: measurement operators with adjoints and posterior
samplers, measured against the exact Gaussian-mixture posterior. ``solve(name, ...)`` runs any of
them by name (:data:`METHODS`)."""

from .daps import daps
from .enkg import enkg
from .guidance import DPS, MMPS, PiGDM, PosteriorDenoiser
from .methods import METHODS, TRANSFORMS, Bound, Solution, solve
from .operators import (Blur, Downsample, Identity, LinearOperator, Mask, Matrix, Nonlinear, Operator, RandomProjection,
                        conjugate_gradient)
from .operator_names import OPERATORS, make_operator
from .projection import DDNM, DiffPIR
from .repaint import repaint
from .smc import twisted_smc
from .variational import red_diff

__all__ = ["Blur", "Bound", "DDNM", "DPS", "DiffPIR", "Downsample", "Identity", "LinearOperator", "METHODS", "MMPS", "Mask",
           "Matrix", "Nonlinear", "OPERATORS", "Operator", "PiGDM", "PosteriorDenoiser", "RandomProjection", "Solution", "TRANSFORMS",
           "conjugate_gradient", "daps", "enkg", "make_operator", "red_diff", "repaint", "solve", "twisted_smc"]

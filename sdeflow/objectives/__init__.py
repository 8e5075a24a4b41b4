"""Training objectives: the denoising / flow-matching loss for any parameterization, weighting and time
density, the time densities, minibatch optimal-transport coupling, and the few-step objectives
(consistency, shortcut, MeanFlow, progressive distillation). What a network is trained to compute;
the training loop that minimises them is :mod:`sdeflow.training`."""

from .coupling import global_ot_pairing, ot_pairing
from .densities import DENSITIES, LogitNormal, LogNormalSigma, Stratified, TimeDensity, UShaped, Uniform
from .losses import WEIGHTINGS, DenoisingLoss

__all__ = ["DENSITIES", "DenoisingLoss", "LogNormalSigma", "LogitNormal", "Stratified", "TimeDensity", "UShaped",
           "Uniform", "WEIGHTINGS", "global_ot_pairing", "ot_pairing"]

"""Training: the denoising / flow-matching loss for any parameterization, weighting and time
density, minibatch optimal-transport coupling, EMA of weights, checkpoints (safetensors + JSON) and
the training loop behind ``sdeflow train`` (single process or torchrun / DistributedDataParallel)."""

from .coupling import global_ot_pairing, ot_pairing
from .densities import DENSITIES, LogitNormal, LogNormalSigma, Stratified, TimeDensity, UShaped, Uniform
from .ema import EMA
from .losses import WEIGHTINGS, DenoisingLoss

__all__ = ["DENSITIES", "DenoisingLoss", "EMA", "LogNormalSigma", "LogitNormal", "Stratified", "TimeDensity", "UShaped",
           "Uniform", "WEIGHTINGS", "global_ot_pairing", "ot_pairing"]

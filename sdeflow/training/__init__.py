"""Training: the loop behind ``sdeflow train`` (single process or torchrun / DistributedDataParallel) with
EMA of weights, checkpoints (:mod:`sdeflow.checkpoint`), resume, teachers and reflow pairs for the few-step
objectives. The objectives themselves (losses, time densities, coupling) live in :mod:`sdeflow.objectives`
and are re-exported here."""

from ..objectives import (DENSITIES, WEIGHTINGS, DenoisingLoss, LogitNormal, LogNormalSigma, Stratified, TimeDensity,
                          UShaped, Uniform, global_ot_pairing, ot_pairing)
from .ema import EMA

__all__ = ["DENSITIES", "DenoisingLoss", "EMA", "LogNormalSigma", "LogitNormal", "Stratified", "TimeDensity", "UShaped",
           "Uniform", "WEIGHTINGS", "global_ot_pairing", "ot_pairing"]

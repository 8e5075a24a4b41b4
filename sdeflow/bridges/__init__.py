"""Processes pinned at a source: bridges (DDBM, I2SB, Brownian, Ornstein-Uhlenbeck), IR-SDE's
mean-reverting SDE and residual diffusion (RDDM), run on sdeflow's one sampling loop through the residual
``y = x_t - b_t x1``, an ordinary (alpha, sigma) path for ``p(x0 | x1)``.

- :mod:`.processes`: ``x_t = a_t x0 + b_t x1 + c_t z`` and the residual schedule;
- :mod:`.denoiser`: a bridge network (x0, eps, residual, DDBM-preconditioned, I2SB outputs) as a denoiser
  of the residual;
- :mod:`.samplers`: the boot step of pinned processes, DDBM's Heun sampler, the named bridge samplers
  and :func:`sample_bridge`;
- :mod:`.loss`: the bridge training loss for every parameterization;
- :mod:`.exact`: paired Gaussian mixtures, whose ``p(x0 | x1)`` and ``x_hat`` are closed form.
"""

from .denoiser import BRIDGE_PARAMETERIZATIONS, BridgeDenoiser, BridgeParameterization, PinnedDenoiser, bridge_denoiser
from .exact import BridgeOracle, PairedMixture
from .loss import BRIDGE_WEIGHTINGS, BridgeLoss
from .processes import PROCESSES, RDDM, BrownianBase, LinearBridge, MeanReverting, Process, Residual, SymmetricBeta
from .samplers import (BOOT_LOGSNR, BRIDGE_SAMPLERS, DEFAULT_BRIDGE_SAMPLER, Boot, DDBMHeun, bridge_grid, bridge_sampler,
                       bridge_steps, for_process, restore, sample_bridge)

__all__ = ["BOOT_LOGSNR", "BRIDGE_PARAMETERIZATIONS", "BRIDGE_SAMPLERS", "BRIDGE_WEIGHTINGS", "DEFAULT_BRIDGE_SAMPLER",
           "PROCESSES", "RDDM", "Boot", "BridgeDenoiser", "BridgeLoss", "BridgeOracle", "BridgeParameterization",
           "BrownianBase", "DDBMHeun", "LinearBridge", "MeanReverting", "PairedMixture", "PinnedDenoiser", "Process",
           "Residual", "SymmetricBeta", "bridge_denoiser", "bridge_grid", "bridge_sampler", "bridge_steps", "for_process",
           "restore", "sample_bridge"]

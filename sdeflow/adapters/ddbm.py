"""DDBM's and DBIM's bridge models (the ``ddbm`` code base's ``KarrasDenoiser`` conventions) as sdeflow bridges.

In that code a bridge model is a network ``net(c_in x_t, c_noise, xT=x1)`` with DDBM's preconditioning
``D = c_skip x_t + c_out net(...)``, on one of two processes, each written with its own time:

- ``"vp"``: the VP SDE with ``beta(t) = beta_min + beta_d t`` pinned at the source at ``t = 1``;
  ``c_noise = 250 log(t)``;
- ``"ve"``: the VE process ``sigma = t`` on ``[0, sigma_max]`` pinned at ``t = sigma_max``;
  ``c_noise = 250 log(sigma)``.

:func:`load_ddbm_weights` reads that code's checkpoint files (the model's or the EMA's state dict, as
saved plainly, through DistributedDataParallel or after ``torch.compile``) into the network that code
builds, and :func:`from_ddbm` wraps the network into a :class:`~sdeflow.bridges.BridgeDenoiser` on sdeflow's
``LinearBridge(VPLinear(beta_min, beta_min + beta_d))`` or ``LinearBridge(EDM(sigma_max))``, with time
running over [0, 1] (``sigma = sigma_max t`` for VE), the ``ddbm`` parameterization with the run's
``sigma_data`` (for the source too, as that code does) and ``cov_xy``, and the source passed as ``xT``.
Every sampler of sdeflow then runs it (:func:`sdeflow.bridges.restore`); ``tests/test_bridges.py``
checks the wrapped ``x_hat`` against that code's preconditioning formula and DBIM's sampler against
sdeflow's ``dbim``.

Reference: Zhou et al., "Denoising Diffusion Bridge Models", 2023, arXiv:2309.16948; Zheng et al.,
"Diffusion Bridge Implicit Models", 2024, arXiv:2405.15885.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..bridges import BridgeDenoiser, BridgeParameterization, LinearBridge
from ..schedules import EDM, VPLinear

DDBM_PROCESSES = ("vp", "ve")


class _SourceAsXT(torch.nn.Module):
    """``net(x, c, source=x1, **cond)`` for a network that takes the source as ``xT``."""

    def __init__(self, net: Callable):
        super().__init__()
        self.net = net

    def forward(self, x, c, source=None, **cond):
        return self.net(x, c, xT=source, **cond)


def from_ddbm(net: Callable, pred_mode: str = "vp", *, beta_d: float = 2.0, beta_min: float = 0.1,
              sigma_max: float = 80.0, sigma_data: float = 0.5, cov_xy: float = 0.0) -> BridgeDenoiser:
    """A DDBM/DBIM bridge network ``net(x, c_noise, xT=x1)`` as a sdeflow bridge denoiser.

    Args:
        pred_mode: ``"vp"`` or ``"ve"`` (that code's ``pred_mode``).
        beta_d, beta_min: the VP process' ``beta(t) = beta_min + beta_d t``.
        sigma_max: the VE process' largest noise level (its time ``t`` runs to ``sigma_max``).
        sigma_data, cov_xy: the preconditioning constants the network was trained with.
    """
    if pred_mode not in DDBM_PROCESSES:
        raise ValueError(f"unknown DDBM process {pred_mode!r}; allowed: {', '.join(DDBM_PROCESSES)}")
    for name, v in (("beta_d", beta_d), ("beta_min", beta_min), ("sigma_max", sigma_max), ("sigma_data", sigma_data)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not callable(net):
        raise TypeError("net must be callable: net(x, c_noise, xT=source) -> output")
    if pred_mode == "vp":
        process, scale = LinearBridge(VPLinear(beta_min=beta_min, beta_max=beta_min + beta_d)), 1.0
    else:
        process, scale = LinearBridge(EDM(sigma_max=sigma_max)), sigma_max
    param = BridgeParameterization("ddbm", sigma_data=sigma_data, sigma_source=sigma_data, covariance=cov_xy)
    return BridgeDenoiser(_SourceAsXT(net), process, param,
                          time_input=lambda process, t: 250.0 * torch.log(scale * t + 1e-44))


PREFIXES = ("module.", "_orig_mod.")


def load_ddbm_weights(net: torch.nn.Module, checkpoint) -> torch.nn.Module:
    """Load a DDBM / DBIM checkpoint (a ``.pt`` file of that code's ``torch.save(state_dict)``, the model's or
    its EMA's, or the dict itself) into ``net``, the network that code builds for it. Names saved through
    DistributedDataParallel (``module.``) or ``torch.compile`` (``_orig_mod.``) are mapped back, a dict nested
    under ``state_dict``/``model`` is unwrapped, and anything missing, unexpected or of another shape is
    refused with the names, before any weight changes. Read with ``weights_only=True`` (no code runs)."""
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"net must be the torch.nn.Module the checkpoint's code builds, got {type(net).__name__}")
    state = checkpoint
    if not isinstance(state, dict):
        import os

        if not os.path.isfile(str(checkpoint)):
            raise ValueError(f"no checkpoint file {checkpoint!r}")
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not any(
                isinstance(v, torch.Tensor) for v in state.values()):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the checkpoint is not a state dict (names to tensors)")
    renamed = {}
    for k, v in state.items():
        for prefix in PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        renamed[k] = v
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(renamed)), sorted(set(renamed) - set(own))
    wrong = sorted(k for k in set(own) & set(renamed) if own[k].shape != renamed[k].shape)
    if missing or unexpected or wrong:
        def few(names):
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                 f"of another shape {few(wrong)}" if wrong else ""]
        raise ValueError("the checkpoint does not fit this network: " + "; ".join(p for p in parts if p)
                         + " (build the network with the settings it was trained with)")
    net.load_state_dict(renamed)
    return net


__all__ = ["DDBM_PROCESSES", "from_ddbm", "load_ddbm_weights"]

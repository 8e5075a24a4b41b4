"""The exact oracle as a :class:`~sdeflow.denoisers.Denoiser`."""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..schedules import Schedule
from .mixture import GaussianMixture


class OracleDenoiser(Denoiser):
    """``x_hat = E[x | x_t]`` of a :class:`GaussianMixture`, computed in float64 and returned in
    the state's dtype; differentiable in ``x_t`` (guidance methods take its vector-Jacobian
    products). Accepts and ignores conditioning keywords."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(schedule)
        self.mixture = mixture

    def forward(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        x_hat = self.mixture.x_hat(x_t.cpu(), self.schedule, torch.as_tensor(t).detach().cpu())
        return x_hat.to(device=x_t.device, dtype=x_t.dtype)

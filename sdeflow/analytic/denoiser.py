"""The exact oracle as a :class:`~sdeflow.denoisers.Denoiser`."""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..schedules import Schedule
from .mixture import GaussianMixture


class OracleDenoiser(Denoiser):
    """``x_hat = E[x | x_t]`` of a :class:`GaussianMixture`, computed in float64 and returned in
    the state's dtype; differentiable in ``x_t`` (guidance methods take its vector-Jacobian
    products). A labelled mixture takes ``label=`` (one class per sample, ``-1`` for unconditional
rows, ``None`` for all); other conditioning keywords are accepted and ignored."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(schedule)
        self.mixture = mixture

    def forward(self, x_t: torch.Tensor, t, label=None, **cond) -> torch.Tensor:
        label = label if self.mixture.classes is not None else None
        x_hat = self.mixture.x_hat(x_t.cpu(), self.schedule, torch.as_tensor(t, dtype=torch.float64).detach().cpu(), label)
        return x_hat.to(device=x_t.device, dtype=x_t.dtype)

    def null_cond(self, cond: dict) -> dict:
        """The conditioning of the unconditional pass (classifier-free guidance): label -1."""
        if "label" not in cond or cond["label"] is None:
            return dict(cond)
        return {**cond, "label": torch.full_like(torch.as_tensor(cond["label"]).long(), -1)}


class OracleClassifier:
    """The exact noise-aware classifier of a labelled mixture: ``(x_t, t, label) -> log p_t(c | x_t)``,
    shape ``(B,)``, in float64 and differentiable in ``x_t`` (classifier guidance takes its gradient)."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        if mixture.classes is None:
            raise ValueError("a classifier needs a labelled mixture (classes=)")
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x_t: torch.Tensor, t, label) -> torch.Tensor:
        return self.mixture.class_log_prob(x_t.cpu(), self.schedule, torch.as_tensor(t, dtype=torch.float64).detach().cpu(), label)

"""The exact oracle as a :class:`~sdeflow.denoisers.Denoiser`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..denoisers import Denoiser
from ..denoisers.flow_map import FlowMap, jump_coefficients
from ..schedules import Schedule

if TYPE_CHECKING:  # the mixture builds its denoiser: only its type is needed here
    from .mixture import GaussianMixture


class OracleDenoiser(Denoiser):
    """``x_hat = E[x | x_t]`` of a :class:`GaussianMixture`, computed in float64 and returned in
    the state's dtype; differentiable in ``x_t`` and ``t`` (guidance methods take its vector-Jacobian
    products). A labelled mixture takes ``label=`` (one class per sample, ``-1`` for unconditional
rows, ``None`` for all); other conditioning keywords are accepted and ignored."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(schedule)
        self.mixture = mixture

    def forward(self, x_t: torch.Tensor, t, label=None, **cond) -> torch.Tensor:
        label = label if self.mixture.classes is not None else None
        x_hat = self.mixture.x_hat(x_t.cpu(), self.schedule, torch.as_tensor(t, dtype=torch.float64).cpu(), label)
        return x_hat.to(device=x_t.device, dtype=x_t.dtype)

    def has_ode_velocity(self, t: float) -> bool:
        """Also at clean data where ``sigma'`` is finite there (see :meth:`ode_velocity`)."""
        return super().has_ode_velocity(t) or bool(torch.isfinite(self.schedule.d_sigma(float(t))))

    def ode_velocity(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """The exact field; at clean data (``sigma = 0``) its limit ``(alpha'/alpha) x_t``: the noise term
        ``sigma' eps_hat = -sigma' sigma grad log p_t`` vanishes there for a smooth density (a mixture's)
        when ``sigma'`` is finite."""
        if super().has_ode_velocity(float(t)):
            return super().ode_velocity(x_t, t, **cond)
        if not self.has_ode_velocity(float(t)):
            raise ValueError(f"the probability-flow velocity of {type(self.schedule).__name__} is unbounded at "
                             f"t = {float(t):.6g}, where sigma = 0 and sigma' is infinite")
        sch = self.schedule
        return x_t * float(sch.d_alpha(float(t)) / sch.alpha(float(t)))

    def null_cond(self, cond: dict) -> dict:
        """The conditioning of the unconditional pass (classifier-free guidance): label -1."""
        if "label" not in cond or cond["label"] is None:
            return dict(cond)
        return {**cond, "label": torch.full_like(torch.as_tensor(cond["label"]).long(), -1)}


class OracleFlowMap(FlowMap):
    """The exact flow map of one Gaussian (:meth:`GaussianMixture.flow_map`) as a
    :class:`~sdeflow.denoisers.FlowMap`: ``forward(x_t, t, target=s)`` returns the jump denoiser
    ``D = (X - a x_t) / b`` of the exact jump ``X`` (``x_hat`` when ``s = t`` or no target is given),
    in float64 and differentiable in ``x_t``, ``t`` and ``s``. The certificate of the few-step
    samplers and of the flow-map training losses."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(schedule)
        if mixture.num_components != 1:
            raise ValueError(f"the exact flow map is closed form for one Gaussian, got {mixture.num_components} components")
        self.mixture = mixture

    def forward(self, x_t: torch.Tensor, t, target=None, **cond) -> torch.Tensor:
        x = x_t.to(torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        x_hat = self.mixture.x_hat(x, self.schedule, t64)
        if target is None:
            return x_hat.to(x_t.dtype)
        s64 = torch.as_tensor(target, dtype=torch.float64, device=x.device)
        a, b = jump_coefficients(self.schedule, t64, s64)
        safe = torch.where(b == 0, torch.ones_like(b), b)
        shape = (-1,) + (1,) * (x.ndim - 1)
        d = (self.mixture.flow_map(x, self.schedule, t64, s64) - a.reshape(shape) * x) / safe.reshape(shape)
        return torch.where((b == 0).reshape(shape), x_hat, d).to(x_t.dtype)


class OracleClassifier:
    """The exact noise-aware classifier of a labelled mixture: ``(x_t, t, label) -> log p_t(c | x_t)``,
    shape ``(B,)``, in float64 and differentiable in ``x_t`` (classifier guidance takes its gradient)."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        if mixture.classes is None:
            raise ValueError("a classifier needs a labelled mixture (classes=)")
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x_t: torch.Tensor, t, label) -> torch.Tensor:
        return self.mixture.class_log_prob(x_t.cpu(), self.schedule, torch.as_tensor(t, dtype=torch.float64).detach().cpu(), label)

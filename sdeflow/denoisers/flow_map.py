"""Flow maps: models that jump along the probability-flow ODE from time ``t`` to time ``s``.

A flow map ``X(x_t, t, s)`` is the solution at ``s`` of the probability-flow ODE started at ``x_t``
at time ``t``. sdeflow writes every flow map in the form of one DDIM step,

    X(x_t, t, s) = a(t, s) x_t + b(t, s) D(x_t, t, s),
    a = sigma_s / sigma_t,   b = alpha_s - alpha_t sigma_s / sigma_t,

with a *jump denoiser* ``D``. The form keeps every jump well conditioned and gives the special cases
for free:

- ``s = t``: ``a = 1, b = 0``, so ``X(x_t, t, t) = x_t`` exactly, and ``D(x_t, t, t)`` is the ordinary
  denoiser ``x_hat(x_t, t)`` (the instantaneous field: any ODE sampler runs a flow map);
- ``s = 0``: ``a = 0, b = 1``, so ``D(x_t, t, 0)`` is the consistency function (Song et al. 2023);
- rectified flow with a velocity network ``F``: ``D = x_t - t F`` and ``X = x_t + (s - t) F``, so
  ``F`` is the average velocity over ``[s, t]`` (MeanFlow, shortcut models).

A :class:`FlowMap` is a :class:`Denoiser` whose ``forward(x_t, t, target=s)`` returns ``D`` (and
``x_hat`` without a target); :meth:`FlowMap.jump` returns ``X``. :class:`FlowMapDenoiser` wraps a
network that takes the gap ``t - s`` besides the time (sdeflow's MLP and UNet with ``jump=True``);
the exact flow map of one Gaussian is :class:`~sdeflow.analytic.OracleFlowMap`. The few-step
samplers (:class:`~sdeflow.samplers.FlowMapSampler`) drive either through :func:`sdeflow.sample`.

Reference: Boffi, Albergo, Vanden-Eijnden, "Flow map matching", 2024, arXiv:2406.07507; Sabour,
Fidler, Kreis, "Align Your Flow: Scaling Continuous-Time Flow Map Distillation", 2025, arXiv:2506.14603.
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from ..shapes import Time, as_time, expand_as_batch
from .base import Denoiser
from .model import ModelDenoiser


def jump_coefficients(schedule: Schedule, t: Time, s: Time) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of ``X = a x_t + b D`` in float64 (scalars or ``(B,)``): ``a = sigma_s / sigma_t``,
    ``b = alpha_s - alpha_t a``; exactly ``(1, 0)`` where ``s = t`` (also at ``t = 0``).
    Differentiable in ``t`` and ``s``."""
    t, s = as_time(t), as_time(s)
    t, s = torch.broadcast_tensors(t, s)
    same = s == t
    sigma_t = schedule.sigma(t)
    a = torch.where(same, torch.ones_like(t), schedule.sigma(s) / torch.where(same, torch.ones_like(t), sigma_t))
    b = torch.where(same, torch.zeros_like(t), schedule.alpha(s) - schedule.alpha(t) * a)
    return a, b


class FlowMap(Denoiser):
    """Base class of flow maps: ``forward(x_t, t, target=None, **cond)`` returns the jump denoiser
    ``D(x_t, t, target)`` (``x_hat`` when ``target`` is None) and :meth:`jump` the jump itself."""

    def jump(self, x_t: torch.Tensor, t: Time, s: Time, **cond) -> torch.Tensor:
        """``X(x_t, t, s) = a x_t + b D(x_t, t, s)``."""
        a, b = jump_coefficients(self.schedule, t, s)
        def cast(c):
            return expand_as_batch(c.to(device=x_t.device, dtype=x_t.dtype), x_t)
        return cast(a) * x_t + cast(b) * self(x_t, t, target=s, **cond)


class FlowMapDenoiser(ModelDenoiser, FlowMap):
    """A jump network with its schedule, parameterization and time input:
    ``D(x_t, t, s) = skip(t) x_t + out(t) F(in(t) x_t, c(t), gap = t - s)``.

    The parameterization is the one of the instantaneous field (``D(x_t, t, t) = x_hat``), so a
    flow map fine-tuned from a denoiser starts as that denoiser. The network takes the keyword
    ``gap`` (a ``(B,)`` tensor of ``t - s``); without it the gap is 0.
    """

    def forward(self, x_t, t, target: Time | None = None, **cond):
        if target is None:
            return super().forward(x_t, t, **cond)
        if isinstance(t, (int, float)) and isinstance(target, (int, float)):  # the sampling loop's scalars
            gap = self._time_tensor(float(t) - float(target), x_t.shape[0], self.time_dtype(x_t), x_t.device)
        else:
            gap = (as_time(t, device=x_t.device) - as_time(target, device=x_t.device)).reshape(-1)
            gap = gap.expand(x_t.shape[0]).to(self.time_dtype(x_t))
        return super().forward(x_t, t, gap=gap, **cond)

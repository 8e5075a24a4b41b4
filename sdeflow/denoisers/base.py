"""The denoiser: ``forward(x_t, t, **cond) -> x_hat = E[x | x_t]``, tied to its schedule.

Samplers, guidance, training and likelihood all consume this one interface; every model output
(eps, v, score, velocity, ...) is converted to ``x_hat`` at this boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schedules import Schedule
from ..shapes import Time


class Denoiser(nn.Module):
    """Base class. ``schedule`` is the forward process the denoiser belongs to."""

    schedule: Schedule

    def __init__(self, schedule: Schedule):
        super().__init__()
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a sdeflow Schedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def forward(self, x_t: torch.Tensor, t: Time, **cond) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError("a Denoiser subclass must implement forward(x_t, t, **cond) -> x_hat")

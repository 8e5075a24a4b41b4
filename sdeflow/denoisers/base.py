"""The denoiser: ``forward(x_t, t, **cond) -> x_hat = E[x | x_t]``, tied to its schedule.

Samplers, guidance, training and likelihood all consume this one interface; every model output
(eps, v, score, velocity, ...) is converted to ``x_hat`` at this boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from ..parameterizations import velocity_from_x_hat
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

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of one sample this denoiser was trained on when known (a loaded checkpoint's; a
        wrapper's ``inner``'s), else None: what operators and inputs are checked against."""
        own = self.__dict__.get("_sample_shape")
        inner = getattr(self, "inner", None)
        return own if own is not None or not isinstance(inner, Denoiser) else inner.sample_shape

    @sample_shape.setter
    def sample_shape(self, shape) -> None:
        self.__dict__["_sample_shape"] = None if shape is None else tuple(int(n) for n in shape)

    def check_cond(self, x: torch.Tensor, cond: dict) -> None:
        """Refuse, before a run starts, conditioning this denoiser cannot take (a label outside a
        class-conditional network's classes). The sampling loop calls it once per run; a denoiser that
        wraps another as ``inner`` (guidance, bound conditioning) asks it, anything else accepts."""
        inner = getattr(self, "inner", None)
        if isinstance(inner, Denoiser):
            inner.check_cond(x, cond)

    def has_ode_velocity(self, t: float) -> bool:
        """Whether :meth:`ode_velocity` answers at the scalar time ``t``: wherever ``sigma(t) > 0``; at
        clean data (``sigma(t) = 0``) only for denoisers that know more than ``x_hat`` there (a
        :class:`~sdeflow.denoisers.ModelDenoiser` whose network predicts the noise in some form, the
        exact oracle)."""
        return float(self.schedule.sigma(float(t))) > 0

    def ode_velocity(self, x_t: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        """The probability-flow ODE's field ``dx_t/dt = alpha' x_hat + sigma' eps_hat`` at a scalar time.

        Where ``sigma(t) > 0`` it is ``x_hat`` in another form. At clean data ``x_hat = x_t / alpha``
        for every model and the field's noise term is ``0 * inf``: only the model's own noise
        prediction fixes it, which subclasses that have one give (see :meth:`has_ode_velocity`).
        A Runge-Kutta stage on clean data (``RK4(at_data=True)``) asks for it."""
        if not self.has_ode_velocity(float(t)):
            raise ValueError(f"{type(self).__name__} gives x_hat only, which at t = {float(t):.6g} (sigma = 0) "
                             "does not fix the probability-flow velocity")
        return velocity_from_x_hat(self(x_t, t, **cond), x_t, self.schedule, t)

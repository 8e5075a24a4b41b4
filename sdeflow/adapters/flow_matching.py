"""Velocity fields in the flow_matching / torchcfm convention as sdeflow denoisers.

Those libraries run time from noise (``t = 0``) to data (``t = 1``): ``x_t = t x1 + (1 - t) x0`` with
``x0`` noise, and the network predicts ``u = dx_t/dt = x1 - x0``. sdeflow runs time the other way
(``t = 0`` data, ``t = 1`` noise, :class:`~sdeflow.schedules.RectifiedFlow`), so its time is
``1 - t`` and its velocity ``dx/dt = -u``. :func:`from_flow_matching` does both in one call;
``sigma_min`` covers torchcfm's and flow_matching's ``x_t = t x1 + (1 - (1 - sigma_min) t) x0`` path.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..denoisers import ModelDenoiser
from ..schedules import RectifiedFlow


class _Reversed(torch.nn.Module):
    """``u(x, 1 - t)`` negated: a noise-to-data velocity as sdeflow's data-to-noise one."""

    def __init__(self, velocity, time_kw: str | None):
        super().__init__()
        self.velocity, self.time_kw = velocity, time_kw

    def forward(self, x, t, **cond):
        s = 1.0 - t
        out = self.velocity(x, **{self.time_kw: s}, **cond) if self.time_kw else self.velocity(x, s, **cond)
        return -out


def from_flow_matching(velocity: Callable, *, sigma_min: float = 0.0, time_kw: str | None = None,
                       dtype: torch.dtype | None = None) -> ModelDenoiser:
    """A velocity ``velocity(x, t, **cond)`` with ``t`` from noise (0) to data (1) as a sdeflow
    denoiser on rectified flow. ``time_kw``: pass time by keyword (flow_matching's ``ModelWrapper``
    takes ``velocity(x=..., t=...)``: use ``time_kw="t"``). ``sigma_min > 0`` is not the rectified-flow
    path; it is refused with the change of variables to use instead."""
    if sigma_min != 0.0:
        raise ValueError("sigma_min > 0 gives x_t = t x1 + (1 - (1 - sigma_min) t) x0, not rectified flow; "
                         "rescale the state by 1 / (1 - (1 - sigma_min) t) or train with sigma_min = 0")
    if not callable(velocity):
        raise TypeError("velocity must be callable: velocity(x, t, **cond) -> dx/dt")
    return ModelDenoiser(_Reversed(velocity, time_kw), RectifiedFlow(), "velocity", time_input="t", dtype=dtype)


__all__ = ["from_flow_matching"]

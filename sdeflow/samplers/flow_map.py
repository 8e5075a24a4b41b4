"""Few-step sampling with a flow map: jumps, and consistency-style jumps with re-noising.

A flow map (:class:`~sdeflow.denoisers.FlowMap`) answers ``X(x_t, t, s) = a x_t + b D(x_t, t, s)``
(see :mod:`sdeflow.denoisers.flow_map`). On a grid ``t_0 > ... > t_n`` this sampler takes one
evaluation per step. With ``gamma = 0`` every step is a jump, ``x_s = X(x_t, t, s)``: exact when the
flow map is. With ``gamma > 0`` a step jumps past ``s`` to the time ``u`` whose noise level is
``sigma_u / alpha_u = sqrt(1 - gamma^2) sigma_s / alpha_s`` and adds fresh noise back to ``s``:

    x_s = (alpha_s / alpha_u) X(x_t, t, u) + gamma sigma_s z,

which has the law of ``p_s`` when ``X(x_t, t, u)`` has that of ``p_u`` (the noise variances add up to
``sigma_s^2``). ``gamma = 1`` jumps to the data (``u = 0``) and re-noises fully: the multistep
sampler of consistency models; ``0 < gamma < 1`` is the gamma-sampling of consistency trajectory
models. The last step (``s = 0``) is always a plain jump.

References: Song, Dhariwal, Chen, Sutskever, "Consistency Models", 2023, arXiv:2303.01469 (Algorithm 1);
Kim et al., "Consistency Trajectory Models", 2024, arXiv:2310.02279 (gamma-sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from typing import NamedTuple

from ..denoisers.flow_map import jump_coefficients
from .base import Plan, Sampler
from .engine import is_exactly, axpy_


class JumpRow(NamedTuple):
    """One planned jump: ``x_s = c_x x_t + c_d D(x_t, t, target) + c_z z``."""

    target: float
    c_x: float
    c_d: float
    c_z: float
    STRUCTURE = ("target",)


@dataclass(frozen=True)
class FlowMapSampler(Sampler):
    """Jumps of a flow map along the grid, re-noising by ``gamma`` in [0, 1] (see the module docstring)."""

    gamma: float = 0.0
    order = 1
    #: Steps ask the model for jumps ``D(x_t, t, s)``: it must be a :class:`~sdeflow.denoisers.FlowMap`.
    needs_flow_map = True
    evaluates_first = False  # a jump, not x_hat

    def __post_init__(self):
        if not (isinstance(self.gamma, (int, float)) and 0.0 <= self.gamma <= 1.0):
            raise ValueError(f"gamma must be in [0, 1] (0: plain jumps, 1: consistency sampling), got {self.gamma!r}")

    @property
    def stochastic(self) -> bool:
        return self.gamma > 0

    def prepare(self, schedule, ts):
        t, s = ts[:-1], ts[1:]
        u = s.clone()
        noisy = (s > 0) & (schedule.sigma(s) > 0) if self.gamma > 0 else torch.zeros_like(s, dtype=torch.bool)
        if bool(noisy.any()):
            ratio = math.sqrt(1.0 - self.gamma ** 2) * schedule.sigma(s[noisy]) / schedule.alpha(s[noisy])
            u[noisy] = torch.where(ratio > 0, schedule.t_from_sigma_ratio(ratio.clamp_min(1e-300)),
                                   torch.zeros_like(ratio))
        a, b = jump_coefficients(schedule, t, u)
        scale = torch.where(noisy, schedule.alpha(s) / schedule.alpha(u), torch.ones_like(s))
        c_z = torch.where(noisy, self.gamma * schedule.sigma(s), torch.zeros_like(s))
        rows = [JumpRow(*r) for r in zip(u.tolist(), (scale * a).tolist(), (scale * b).tolist(), c_z.tolist())]
        return Plan(t.tolist(), s.tolist(), rows, self.count_nfe(schedule, ts))

    def step(self, field, x, i, plan, state, noise):
        u, c_x, c_d, c_z = plan.coef[i]
        d = field(x, plan.t[i], target=u)
        x_s = axpy_(x.mul_(c_x) if plan.inplace else x.mul(c_x), c_d, d)
        if not is_exactly(c_z, 0):
            axpy_(x_s, c_z, noise())
        return x_s, state

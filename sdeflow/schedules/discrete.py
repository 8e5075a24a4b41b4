"""Discrete-time VP schedules built from ``betas`` or ``alphas_cumprod`` of a DDPM-style checkpoint.

Index ``n`` in ``0..N-1`` (the integer the network was trained on) sits at continuous time
``t_n = (n + 1) / N``; ``t = 0`` is clean data (``alpha = 1``). Between the nodes ``log alpha`` is
linear in ``t``, which makes alpha, sigma, logSNR and its inverse closed form and monotone.
The map is explicit: :meth:`DiscreteVP.index_from_t` and :meth:`DiscreteVP.t_from_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..shapes import as_time
from .vp import VPSchedule


@dataclass(frozen=True, eq=False)
class DiscreteVP(VPSchedule):
    """VP schedule interpolating a given ``alphas_cumprod`` (``N`` values, strictly decreasing in (0, 1]).

    Use :meth:`from_betas`, :func:`ddpm_linear` or :func:`scaled_linear` to build one.
    """

    alphas_cumprod: torch.Tensor = field(repr=False)

    def __post_init__(self):
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2:
            raise ValueError("alphas_cumprod needs at least 2 entries")
        if not bool(((ac > 0) & (ac <= 1)).all()):
            outside = ((ac < 0) | (ac > 1) | ~torch.isfinite(ac)).nonzero()
            zeros = (ac == 0).nonzero()
            if outside.numel():
                k = int(outside[0, 0])
                raise ValueError(f"alphas_cumprod must lie in (0, 1]; entry {k} is {float(ac[k]):.6g} (a beta above 1, "
                                 "or a table that is not a cumulative product of alphas)")
            if zeros.numel() == 1 and int(zeros[0, 0]) == ac.numel() - 1:
                raise ValueError("alphas_cumprod must lie in (0, 1]; a zero terminal value has infinite negative "
                                 "logSNR: use a continuous schedule such as VPCosine for it (diffusers adapters raise it "
                                 "to 2**-24 as diffusers' Euler scheduler does)")
            raise ValueError(f"alphas_cumprod underflows to 0 at {zeros.numel()} of {ac.numel()} training steps (from "
                             f"step {int(zeros[0, 0])} on): the signal is gone long before the schedule ends, so those "
                             "steps cannot be told apart; use smaller betas (a beta_end near 0.02 for 1000 steps)")
        if not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        object.__setattr__(self, "alphas_cumprod", ac)
        n = ac.numel()
        knots_t = torch.arange(n + 1, dtype=torch.float64) / n
        knots_la = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(ac)])
        object.__setattr__(self, "_t", knots_t)
        object.__setattr__(self, "_la", knots_la)
        object.__setattr__(self, "_key", hash(ac.numpy().tobytes()))
        object.__setattr__(self, "_devices", {})  # the knots copied to each accelerator that asks for them

    # Value semantics over the defining tensor: two schedules are equal exactly when their
    # alphas_cumprod are (caches of planned coefficients key on schedules).
    def __eq__(self, other):
        return (type(other) is type(self) and self._key == other._key
                and torch.equal(self.alphas_cumprod, other.alphas_cumprod))

    def __hash__(self):
        return self._key

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVP":
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        return cls(torch.cumprod(1.0 - betas, 0))

    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def t_min(self) -> float:
        return 1.0 / self.num_steps

    def index_from_t(self, t) -> torch.Tensor:
        """Continuous (fractional) training index ``n = t N - 1``; integer at the nodes."""
        return as_time(t) * self.num_steps - 1.0

    def t_from_index(self, n) -> torch.Tensor:
        return (torch.as_tensor(n, dtype=torch.float64) + 1.0) / self.num_steps

    def _knots(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The knots ``(t, log alpha)`` on ``device`` (times on an accelerator index them there)."""
        if device.type == "cpu":
            return self._t, self._la
        key = str(device)
        if key not in self._devices:
            self._devices[key] = (self._t.to(device), self._la.to(device))
        return self._devices[key]

    def _segment(self, t):
        n = self.num_steps
        _, la = self._knots(t.device)
        k = torch.clamp(torch.floor(t * n), 0, n - 1).long()
        slope = (la[k + 1] - la[k]) * n
        return k, slope

    def log_alpha(self, t):
        t = as_time(t)
        knots_t, la = self._knots(t.device)
        k, slope = self._segment(t)
        return la[k] + slope * (t - knots_t[k])

    def d_log_alpha(self, t):
        return self._segment(as_time(t))[1]

    def t_from_log_alpha(self, log_alpha):
        la = torch.as_tensor(log_alpha, dtype=torch.float64)
        knots_t, knots_la = self._knots(la.device)
        desc = -knots_la  # increasing
        k = torch.clamp(torch.searchsorted(desc, -la, right=True) - 1, 0, self.num_steps - 1)
        slope = (knots_la[k + 1] - knots_la[k]) * self.num_steps
        return knots_t[k] + (la - knots_la[k]) / slope


def ddpm_linear(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
    """DDPM's linear betas (Ho et al., 2020, arXiv:2006.11239)."""
    return DiscreteVP.from_betas(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))


def scaled_linear(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteVP:
    """Stable Diffusion's "scaled_linear" betas: linear in sqrt(beta)."""
    b = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    return DiscreteVP.from_betas(b)

"""Discrete-state diffusion over ``L`` positions of tokens ``0..V-1``: the noise schedule and two processes.

A schedule ``alpha(t)`` (``alpha(0) = 1``, ``alpha(1) = 0``, decreasing) is the probability that a token is
still clean at time ``t``. The forward kernel acts on each position independently:

- :class:`Masked` (absorbing): ``q(x_t = x0) = alpha``, ``q(x_t = m) = 1 - alpha``, with the mask token
  ``m = V`` (so states take ``V + 1`` values);
- :class:`Uniform`: ``q(x_t = v | x0) = alpha [v = x0] + (1 - alpha) / V``.

Both are ``Q_t = alpha I + (1 - alpha) 1 pi^T`` with ``pi`` the mask's point mass or the uniform law, the
matrix exponential of a rate ``beta(t) = -alpha' / alpha`` times the generator ``1 pi^T - I``
(``tests/test_discrete.py`` checks this against ``torch.matrix_exp``).

References: Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces", 2021,
arXiv:2107.03006; Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
arXiv:2406.07524; Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", 2024,
arXiv:2406.04329; Lou et al., "Discrete Diffusion Modeling by Estimating the Ratios of the Data
Distribution", 2024, arXiv:2310.16834.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..names import NameTable
from ..schedules.base import exact_ends
from ..shapes import Time, as_time


@dataclass(frozen=True)
class TokenSchedule:
    """``alpha(t)``: ``"linear"`` ``1 - t``, ``"cosine"`` ``cos(pi t / 2)``, ``"polynomial"`` ``1 - t^power``,
    ``"power"`` ``(1 - t)^power`` (flow_matching's ``PolynomialConvexScheduler(power)`` in sdeflow's time)."""

    kind: str = "linear"
    power: float = 2.0

    def __post_init__(self):
        if self.kind not in ("linear", "cosine", "polynomial", "power"):
            raise ValueError(f"unknown token schedule {self.kind!r}; allowed: linear, cosine, polynomial, power")
        if not (math.isfinite(self.power) and self.power > 0):
            raise ValueError(f"the {self.kind} schedule's power must be > 0, got {self.power}")

    def alpha(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        if self.kind == "linear":
            a = 1.0 - t
        elif self.kind == "cosine":
            a = torch.cos(0.5 * math.pi * t)
        elif self.kind == "power":
            a = (1.0 - t).clamp_min(0.0) ** self.power
        else:
            a = 1.0 - t ** self.power
        return exact_ends(t, a, 1.0, 0.0)

    def d_alpha(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        if self.kind == "linear":
            return -torch.ones_like(t)
        if self.kind == "cosine":
            return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)
        if self.kind == "power":
            return -self.power * (1.0 - t).clamp_min(0.0) ** (self.power - 1.0)
        return -self.power * t ** (self.power - 1.0)

    def t_from_alpha(self, alpha: Time) -> torch.Tensor:
        """The time at which ``alpha(t) = alpha`` (closed form)."""
        a = as_time(alpha).clamp(0.0, 1.0)
        if self.kind == "linear":
            return 1.0 - a
        if self.kind == "cosine":
            return torch.arccos(a) * (2.0 / math.pi)
        if self.kind == "power":
            return 1.0 - a ** (1.0 / self.power)
        return (1.0 - a) ** (1.0 / self.power)


@dataclass(frozen=True)
class TokenProcess(ABC):
    """Base: ``vocab`` tokens, a :class:`TokenSchedule`, the stationary law ``pi`` of the noise."""

    vocab: int
    schedule: TokenSchedule = TokenSchedule()

    def __post_init__(self):
        if not isinstance(self.vocab, int) or isinstance(self.vocab, bool) or self.vocab < 2:
            raise ValueError(f"vocab must be an integer >= 2, got {self.vocab!r}")
        if not isinstance(self.schedule, TokenSchedule):
            raise TypeError(f"schedule must be a TokenSchedule, got {type(self.schedule).__name__}")

    @property
    def states(self) -> int:
        """Values a noised token takes (``vocab``, plus the mask for the masked process)."""
        return self.vocab

    @abstractmethod
    def noise_law(self) -> torch.Tensor:
        """``pi``, the law a noised token is redrawn from, ``(states,)`` float64."""

    def kernel(self, t: Time) -> torch.Tensor:
        """``Q_t[x0, x_t]``, ``(vocab, states)`` float64 (rows: clean tokens); ``(B, vocab, states)`` for one
        time per row (a ``(B,)`` tensor)."""
        a = self.schedule.alpha(t)
        a = a[..., None, None] if a.ndim else a
        eye = torch.eye(self.vocab, self.states, dtype=torch.float64)
        return a * eye + (1.0 - a) * self.noise_law()[None, :]

    def kernels(self, t, batch: int, device=None) -> torch.Tensor:
        """``Q_t`` for each of ``batch`` rows, ``(batch, vocab, states)`` float64 (``t`` scalar or one per row)."""
        return self.kernel(torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(batch)).to(device)

    def observed(self, x: torch.Tensor, t) -> torch.Tensor:
        """``Q_t[v, x^l]`` for every clean token ``v``, ``(B, L, vocab)`` float64: how likely each clean token
        makes the observed ``x`` (``(B, L)``); ``t`` scalar or one per row."""
        Q = self.kernels(t, x.shape[0], x.device)
        return torch.gather(Q, 2, x[:, None, :].expand(-1, self.vocab, -1)).transpose(1, 2)

    def rate(self, t: Time, x: torch.Tensor, towards_data: bool = True) -> torch.Tensor:
        """The mixture path's jump rate at ``t`` shaped to broadcast against ``(B, L, S)`` tensors of ``x``'s rows:
        ``-alpha' / (1 - alpha)`` towards the data (``towards_data``), the forward ``-alpha' / alpha`` otherwise."""
        t = as_time(t)
        a, da = self.schedule.alpha(t), self.schedule.d_alpha(t)
        r = -da / ((1.0 - a) if towards_data else a)
        return (r.reshape(-1, 1, 1) if r.ndim else r).to(x.device)

    def transition(self, s: Time, t: Time) -> torch.Tensor:
        """``Q_{t|s}[x_s, x_t]`` for ``s < t``, ``(states, states)``: ``r I + (1 - r) 1 pi^T``, ``r = alpha_t / alpha_s``."""
        r = float(self.schedule.alpha(t) / self.schedule.alpha(s))
        return r * torch.eye(self.states, dtype=torch.float64) + (1.0 - r) * self.noise_law()[None, :]

    def noise(self, x0: torch.Tensor, t: Time, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws of ``x_t`` given clean tokens ``x0`` (long, any shape; ``t`` scalar or one per row)."""
        a = self.schedule.alpha(as_time(t)).reshape(-1, *([1] * (x0.ndim - 1))).to(x0.device)
        keep = torch.rand(x0.shape, generator=generator, dtype=torch.float64).to(x0.device) < a
        from .categorical import draw

        noise = draw(self.noise_law().to(x0.device).expand(*x0.shape, self.states), generator)
        return torch.where(keep, x0, noise)


@dataclass(frozen=True)
class Masked(TokenProcess):
    """The absorbing process: a token is replaced by the mask ``m = vocab`` with probability ``1 - alpha``."""

    @property
    def states(self) -> int:
        return self.vocab + 1

    @property
    def mask(self) -> int:
        return self.vocab

    def noise_law(self) -> torch.Tensor:
        out = torch.zeros(self.states, dtype=torch.float64)
        out[self.mask] = 1.0
        return out


@dataclass(frozen=True)
class Uniform(TokenProcess):
    """The uniform process: a token is redrawn uniformly from the vocabulary with probability ``1 - alpha``."""

    def noise_law(self) -> torch.Tensor:
        return torch.full((self.vocab,), 1.0 / self.vocab, dtype=torch.float64)


#: Token processes by name (their vocabulary given when made).
TOKEN_PROCESSES = NameTable("token process", {
    "masked": (Masked, "absorbing: each token is masked with probability 1 - alpha(t)"),
    "uniform": (Uniform, "uniform: each token is redrawn uniformly with probability 1 - alpha(t)"),
})


def process_of(name: str, vocab: int, schedule: str = "linear", power: float = 2.0) -> TokenProcess:
    """The token process ``name`` (:data:`TOKEN_PROCESSES`) over ``vocab`` tokens on the schedule ``schedule``."""
    return TOKEN_PROCESSES.lookup(name)(vocab, TokenSchedule(schedule, power))

"""Densities of the training time ``t`` (equivalently of the noise level).

Each density maps a generator to ``n`` times in float64. Samples are kept inside ``[t_lo, t_hi]``
(default ``[1e-5, 1 - 1e-5]``) so that no loss weight meets ``0 * inf``; on a discrete schedule the
times are snapped to its training nodes ``t_n = (n + 1) / N`` (uniform over the node indices for the
uniform density, as in DDPM).

- ``Uniform()``: ``t ~ U[0, 1]``.
- ``Stratified()``: one uniform draw per stratum ``[(i + u_i) / B]``, shuffled: lower-variance
  uniform times for a batch.
- ``LogitNormal(mean=0, std=1)``: ``t = sigmoid(mean + std n)`` (rectified-flow training,
  Esser et al., "Scaling Rectified Flow Transformers", 2024, arXiv:2403.03206).
- ``LogNormalSigma(mean=-1.2, std=1.2)``: ``log(sigma / alpha) ~ N(mean, std^2)`` (EDM,
  Karras et al. 2022, arXiv:2206.00364), mapped to ``t`` through the schedule.
- ``UShaped(a=4)``: ``p(t) ~ cosh(a (t - 1/2))``, most weight near both ends, where a reflowed
  (nearly straight) flow's one-step prediction from pure noise and its last steps live (Lee, Lin,
  Fanti, "Improving the Training of Rectified Flows", 2024, arXiv:2405.20320).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..names import NameTable
from ..schedules import DiscreteVP, Schedule

T_LO, T_HI = 1e-5, 1.0 - 1e-5


@dataclass(frozen=True)
class TimeDensity(ABC):
    """A law of the training time ``t``: subclasses give :meth:`draw`; :meth:`sample` keeps the draws
    inside the schedule's domain (on a discrete schedule's training steps)."""

    @abstractmethod
    def draw(self, n: int, schedule: Schedule, generator: torch.Generator | None) -> torch.Tensor:
        """``n`` raw draws of ``t``."""

    def sample(self, n: int, schedule: Schedule, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.draw(n, schedule, generator).clamp(max(T_LO, schedule.t_min), T_HI)
        if isinstance(schedule, DiscreteVP):
            t = schedule.t_from_index(torch.round(schedule.index_from_t(t)).clamp(0, schedule.num_steps - 1))
        return t


@dataclass(frozen=True)
class Uniform(TimeDensity):
    def draw(self, n, schedule, generator):
        if isinstance(schedule, DiscreteVP):  # uniform over the node indices
            idx = torch.randint(schedule.num_steps, (n,), generator=generator).double()
            return schedule.t_from_index(idx)
        return torch.rand(n, generator=generator, dtype=torch.float64)


def stratified(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` uniforms on ``[0, 1)``, one in each stratum ``[i / n, (i + 1) / n)``, shuffled (float64)."""
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return u[torch.randperm(n, generator=generator)]


@dataclass(frozen=True)
class Stratified(TimeDensity):
    def draw(self, n, schedule, generator):
        u = stratified(n, generator)
        if isinstance(schedule, DiscreteVP):
            return schedule.t_from_index(torch.floor(u * schedule.num_steps))
        return u


@dataclass(frozen=True)
class LogitNormal(TimeDensity):
    mean: float = 0.0
    std: float = 1.0

    def draw(self, n, schedule, generator):
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))


@dataclass(frozen=True)
class LogNormalSigma(TimeDensity):
    mean: float = -1.2
    std: float = 1.2

    def draw(self, n, schedule, generator):
        ratio = torch.exp(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))
        return schedule.t_from_sigma_ratio(ratio)


@dataclass(frozen=True)
class UShaped(TimeDensity):
    a: float = 4.0

    def draw(self, n, schedule, generator):
        # inverse of the CDF  F(t) = (sinh(a (t - 1/2)) + sinh(a / 2)) / (2 sinh(a / 2))
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return 0.5 + torch.asinh((2 * u - 1) * torch.sinh(torch.tensor(self.a / 2, dtype=torch.float64))) / self.a


#: Training-time densities by name (module docstring).
DENSITIES = NameTable("time density", {
    "uniform": (Uniform, "t uniform on [0, 1] (a discrete schedule: its training indices)"),
    "stratified": (Stratified, "uniform, one draw per stratum of the batch"),
    "logit-normal": (LogitNormal, "t = sigmoid(N(0, 1)) (rectified-flow training)"),
    "log-normal": (LogNormalSigma, "log(sigma / alpha) ~ N(-1.2, 1.2^2) (EDM)"),
    "u-shaped": (UShaped, "p(t) ~ cosh(4 (t - 1/2)): both ends (reflow)"),
})


def as_density(d: TimeDensity | str) -> TimeDensity:
    """Accept a :class:`TimeDensity` or one of the names in :data:`DENSITIES`."""
    return DENSITIES.instance(d, TimeDensity)

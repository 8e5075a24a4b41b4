"""The schedule interface: ``x_t = alpha(t) * x + sigma(t) * eps`` for ``t`` in [0, 1].

``t = 0`` is clean data and ``t = 1`` the prior. Every method takes ``t`` as a Python number or a
tensor and returns float64 tensors: schedule arithmetic is scalar work, so it is done in double
precision and the result is cast to the state's dtype only where it meets the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..shapes import Time, as_time


@dataclass(frozen=True)
class Schedule:
    """Base class. Subclasses define :meth:`alpha`, :meth:`sigma`, :meth:`d_alpha`, :meth:`d_sigma`
    and, where a closed form exists, :meth:`t_from_logsnr`."""

    def alpha(self, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Time) -> torch.Tensor:
        """d alpha / dt."""
        raise NotImplementedError

    def d_sigma(self, t: Time) -> torch.Tensor:
        """d sigma / dt."""
        raise NotImplementedError

    # ---- derived quantities -------------------------------------------------------------------
    def logsnr(self, t: Time) -> torch.Tensor:
        """``lam(t) = log(alpha / sigma)``; ``+inf`` where sigma = 0, ``-inf`` where alpha = 0."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def d_logsnr(self, t: Time) -> torch.Tensor:
        return self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t)

    def noise_to_signal(self, t: Time) -> torch.Tensor:
        """``sigma / alpha``: the noise level of the scaled state ``x_t / alpha`` (EDM's sigma)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_logsnr(self, lam: Time) -> torch.Tensor:
        """Inverse of :meth:`logsnr`. The generic version bisects in float64 (logSNR is strictly
        decreasing); schedules with a closed form override it."""
        lam = as_time(lam)
        lo = torch.full_like(lam, float(self.t_min))
        hi = torch.ones_like(lam)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.logsnr(mid) > lam
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def t_min(self) -> float:
        """Smallest time the schedule is defined at (0 unless a discrete schedule says otherwise)."""
        return 0.0

    def t_from_sigma_ratio(self, ratio: Time) -> torch.Tensor:
        """Time at which ``sigma / alpha`` equals ``ratio`` (the EDM noise level)."""
        return self.t_from_logsnr(-torch.log(as_time(ratio)))


def exact_ends(t, value: torch.Tensor, at_0: float, at_1: float) -> torch.Tensor:
    """``value`` with its entries at ``t = 0`` and ``t = 1`` replaced by the exact ``at_0`` and ``at_1``:
    boundary values hold by construction, not by the luck of one CPU's rounding."""
    t = as_time(t)
    return torch.where(t <= 0, at_0, torch.where(t >= 1, at_1, value))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))

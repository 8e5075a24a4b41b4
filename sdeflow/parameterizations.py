"""What a network predicts, as an affine view of the canonical output ``x_hat = E[x | x_t]``.

Every parameterization is ``x_hat = skip(t) * x_t + out(t) * F(in(t) * x_t, ...)``; one generic
inverse, ``F = (x_hat - skip * x_t) / out``, converts back. With ``x_t = alpha x + sigma eps``:

========== ========================================= ================================
name       F                                         (skip, out)
========== ========================================= ================================
x0         x_hat                                     (0, 1)
eps        eps_hat                                   (1/alpha, -sigma/alpha)
v          alpha eps_hat - sigma x_hat               (alpha, -sigma) / (alpha^2 + sigma^2)
score      grad log p_t = -eps_hat / sigma           (1/alpha, sigma^2/alpha)
velocity   E[dx_t/dt] = alpha' x_hat + sigma' eps_hat (-sigma', sigma) / (alpha' sigma - sigma' alpha)
edm        EDM preconditioned network on x_t/alpha   (c_skip/alpha, c_out), in = c_in/alpha
========== ========================================= ================================

References: Salimans, Ho, "Progressive Distillation", 2022, arXiv:2202.00512 (v); Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models", 2022, arXiv:2206.00364 (edm);
Lipman et al., "Flow Matching for Generative Modeling", 2022, arXiv:2210.02747 (velocity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .names import NameTable
from .schedules import Schedule
from .shapes import Time, as_time, expand_as_batch


@dataclass(frozen=True)
class Parameterization:
    """Base class: subclasses give ``coefficients(schedule, t) -> (skip, out)`` as float64 tensors."""

    name = "x0"

    def coefficients(self, schedule: Schedule, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def input_scale(self, schedule: Schedule, t: Time) -> torch.Tensor:
        """``in(t)``: the factor applied to ``x_t`` before the network sees it."""
        return torch.ones_like(as_time(t))

    def to_x_hat(self, output: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t: Time) -> torch.Tensor:
        skip, out = self.coefficients(schedule, t)
        return affine(skip, x_t, out, output)

    def from_x_hat(self, x_hat: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t: Time) -> torch.Tensor:
        skip, out = self.coefficients(schedule, t)
        return affine(-skip / out, x_t, 1.0 / out, x_hat)

    def eps_coefficients(self, schedule: Schedule, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e_x, e_F)`` with ``eps_hat = e_x x_t + e_F F``. In general ``((1 - alpha skip) / sigma,
        -alpha out / sigma)``, which is 0/0 where ``sigma = 0``; a parameterization that predicts the noise
        in some form gives the closed form, finite there too, so its network's own answer at clean data
        is kept (what :meth:`sdeflow.denoisers.ModelDenoiser.ode_velocity` needs). Not finite where the
        output does not determine the noise (``x0``, ``score`` at ``sigma = 0``)."""
        t = as_time(t)
        a, s = schedule.alpha(t), schedule.sigma(t)
        skip, out = self.coefficients(schedule, t)
        return (1.0 - a * skip) / s, -a * out / s


def affine(c_x: torch.Tensor, x: torch.Tensor, c_y: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``c_x * x + c_y * y`` with per-sample float64 coefficients cast to the state's dtype."""
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    c_x = expand_as_batch(c_x.to(device=x.device, dtype=dtype), x)
    c_y = expand_as_batch(c_y.to(device=x.device, dtype=dtype), x)
    return c_x * x + c_y * y


@dataclass(frozen=True)
class X0(Parameterization):
    name = "x0"


@dataclass(frozen=True)
class Eps(Parameterization):
    name = "eps"

    def coefficients(self, schedule, t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        return 1.0 / a, -s / a

    def eps_coefficients(self, schedule, t):
        t = as_time(t)
        return torch.zeros_like(t), torch.ones_like(t)


@dataclass(frozen=True)
class V(Parameterization):
    name = "v"

    def coefficients(self, schedule, t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        n = a * a + s * s
        return a / n, -s / n

    def eps_coefficients(self, schedule, t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        n = a * a + s * s
        return s / n, a / n


@dataclass(frozen=True)
class Score(Parameterization):
    name = "score"

    def coefficients(self, schedule, t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        return 1.0 / a, s * s / a


@dataclass(frozen=True)
class Velocity(Parameterization):
    name = "velocity"

    def coefficients(self, schedule, t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        da, ds = schedule.d_alpha(t), schedule.d_sigma(t)
        det = da * s - ds * a
        return -ds / det, s / det

    def eps_coefficients(self, schedule, t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        det = schedule.d_alpha(t) * s - schedule.d_sigma(t) * a
        return schedule.d_alpha(t) / det, -a / det


@dataclass(frozen=True)
class EDMPrecond(Parameterization):
    """EDM preconditioning with data standard deviation ``sigma_data``, on the scaled state
    ``x_t / alpha`` whose noise level is ``sigma / alpha`` (so it applies to any schedule)."""

    sigma_data: float = 0.5
    name = "edm"

    def _c(self, schedule, t):
        a = schedule.alpha(t)
        sig = schedule.sigma(t) / a
        n = sig * sig + self.sigma_data ** 2
        return a, sig, n

    def coefficients(self, schedule, t):
        a, sig, n = self._c(schedule, t)
        return self.sigma_data ** 2 / n / a, sig * self.sigma_data / torch.sqrt(n)

    def input_scale(self, schedule, t):
        a, _, n = self._c(schedule, t)
        return 1.0 / (torch.sqrt(n) * a)

    def eps_coefficients(self, schedule, t):
        a, sig, n = self._c(schedule, t)
        return sig / (n * a), -self.sigma_data / torch.sqrt(n)


#: Parameterizations by name: what a network predicts.
PARAMETERIZATIONS = NameTable("parameterization", {
    "x0": (X0, "the clean data x_hat"),
    "eps": (Eps, "the noise eps"),
    "v": (V, "v = alpha eps - sigma x"),
    "score": (Score, "the score of p_t"),
    "velocity": (Velocity, "the probability-flow velocity dx_t/dt (flow matching)"),
    "edm": (EDMPrecond, "EDM's preconditioned output F (sigma_data 0.5)"),
})


def as_parameterization(p: Parameterization | str) -> Parameterization:
    """Accept a :class:`Parameterization` or one of the names in :data:`PARAMETERIZATIONS`."""
    return PARAMETERIZATIONS.instance(p, Parameterization)


def eps_from_x_hat(x_hat: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t: Time) -> torch.Tensor:
    """``eps_hat = (x_t - alpha x_hat) / sigma``."""
    return Eps().from_x_hat(x_hat, x_t, schedule, t)


def score_from_x_hat(x_hat: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t: Time) -> torch.Tensor:
    """``score = (alpha x_hat - x_t) / sigma^2``."""
    return Score().from_x_hat(x_hat, x_t, schedule, t)


def velocity_from_x_hat(x_hat: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t: Time) -> torch.Tensor:
    """The probability-flow ODE field ``dx_t/dt = alpha' x_hat + sigma' eps_hat``."""
    return Velocity().from_x_hat(x_hat, x_t, schedule, t)

"""Processes pinned at a source: ``x_t = a_t x0 + b_t x1 + c_t z`` for ``t`` in [0, 1].

``x0`` is the clean data (``t = 0``), ``x1`` the source (the degraded image, or the other endpoint of a
paired translation) and ``z ~ N(0, I)``. Given the source, the residual ``y = x_t - b_t x1 = a_t x0 + c_t z``
is an ordinary (alpha, sigma) = (a, c) path for the conditional law ``p(x0 | x1)``: :class:`Residual` is
that path as a :class:`~sdeflow.schedules.Schedule`, so every sampler, grid and tuner runs on it.

Three families:

- :class:`LinearBridge`: a linear Gaussian process from the data (any schedule ``x_t = alpha x0 +
  sigma eps``) conditioned to end at ``x1``. With ``r = SNR(1) / SNR(t)``,
  ``a = alpha (1 - r)``, ``b = alpha(1) sigma^2 / (alpha sigma(1)^2)``, ``c = sigma sqrt(1 - r)``
  (Doob's h-transform of the forward SDE). DDBM's VP and VE bridges, I2SB's symmetric-beta bridge, the
  Brownian bridge and the Ornstein-Uhlenbeck bridge are members. Pinned: ``a(1) = c(1) = 0``.
- :class:`MeanReverting`: IR-SDE's ``dx = theta(t) (mu - x) dt + g(t) dw`` with ``g^2 = 2 lam^2 theta``
  and ``mu = x1``: ``a = exp(-theta_bar)``, ``b = 1 - a``, ``c = lam sqrt(1 - a^2)``. Starts from its
  stationary law ``N(x1, lam^2 I)``.
- :class:`Residual` diffusion (RDDM): ``x_t = x0 + alpha_bar (x1 - x0) + beta_bar z``, i.e.
  ``a = 1 - alpha_bar``, ``b = alpha_bar``, ``c = beta_bar``; ``a(1) = 0``, so it starts exactly at
  ``x1 + beta_bar(1) z``.

All arithmetic is float64; the values at ``t = 0`` (``a = 1, b = c = 0``) and at a pinned end
(``a = c = 0, b = 1``) hold exactly.

References: Zhou et al., "Denoising Diffusion Bridge Models", 2023, arXiv:2309.16948; Liu et al.,
"I2SB: Image-to-Image Schrodinger Bridge", 2023, arXiv:2302.05872; Luo et al., "Image Restoration with
Mean-Reverting Stochastic Differential Equations", 2023, arXiv:2301.11699; Liu et al., "Residual
Denoising Diffusion Models", 2024, arXiv:2308.13712.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from ..names import NameTable
from ..schedules import EDM, Schedule, VPLinear
from ..schedules.base import exact_ends, log1mexp
from ..shapes import Time, as_time, expand_as_batch


@dataclass(frozen=True)
class Process(ABC):
    """Base class: ``abc(t) -> (a, b, c)`` and ``d_abc(t)`` (their time derivatives), float64."""

    #: ``a(1) = c(1) = 0``: every path starts at the source, and the first step must be stochastic
    pinned = False

    @abstractmethod
    def abc(self, t: Time) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, c)`` at ``t``."""

    @abstractmethod
    def d_abc(self, t: Time) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Their time derivatives."""

    def residual_logsnr(self, t: Time) -> torch.Tensor:
        """``log(a / c)``, the logSNR of the residual path (``+inf`` at ``t = 0``)."""
        a, _, c = self.abc(t)
        return torch.log(a) - torch.log(c)

    @property
    def start_std(self) -> float:
        """Standard deviation of the start ``x(1) = x1 + start_std z`` (0 for a pinned process)."""
        return float(self.abc(1.0)[2])

    @property
    def residual(self) -> "Residual":
        """The residual path ``y = a x0 + c z`` as a schedule."""
        return Residual(self)

    def marginal(self, x0: torch.Tensor, x1: torch.Tensor, t: Time, z: torch.Tensor) -> torch.Tensor:
        """``x_t = a x0 + b x1 + c z`` at a scalar or per-sample ``(B,)`` time."""
        a, b, c = (expand_as_batch(v.to(device=x0.device, dtype=x0.dtype), x0) for v in self.abc(t))
        return a * x0 + b * x1 + c * z

    def start_residual(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The residual ``y(1) = x(1) - b(1) x1`` of the process' start ``x(1) = x1 + start_std z``."""
        b1 = float(self.abc(1.0)[1])
        return source * (1.0 - b1) + self.start_std * z if not self.pinned else torch.zeros_like(source)


@dataclass(frozen=True)
class Residual(Schedule):
    """The residual ``y = x_t - b_t x1 = a_t x0 + c_t z`` of a :class:`Process`: alpha = a, sigma = c."""

    process: Process

    def alpha(self, t: Time) -> torch.Tensor:
        return self.process.abc(t)[0]

    def sigma(self, t: Time) -> torch.Tensor:
        return self.process.abc(t)[2]

    def d_alpha(self, t: Time) -> torch.Tensor:
        return self.process.d_abc(t)[0]

    def d_sigma(self, t: Time) -> torch.Tensor:
        return self.process.d_abc(t)[2]

    def logsnr(self, t: Time) -> torch.Tensor:
        return self.process.residual_logsnr(t)


# ---- linear bridges ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BrownianBase(Schedule):
    """Brownian motion from the data: ``alpha = 1``, ``sigma = sqrt(t)``."""

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def d_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return torch.sqrt(as_time(t))

    def d_sigma(self, t):
        return 0.5 / torch.sqrt(as_time(t))

    def logsnr(self, t):
        return -0.5 * torch.log(as_time(t))


@dataclass(frozen=True)
class SymmetricBeta(Schedule):
    """I2SB's noise: ``alpha = 1``, ``sigma^2 = int_0^t beta``, with ``sqrt(beta)`` rising linearly from
    ``sqrt(beta_min)`` towards ``sqrt(beta_max)`` over the first half and mirrored over the second (the
    continuous form of I2SB's table of ``n`` betas ``beta_min / n .. beta_max / n``)."""

    beta_min: float = 0.1
    beta_max: float = 1.0

    def _root(self, u):
        return math.sqrt(self.beta_min) + (math.sqrt(self.beta_max) - math.sqrt(self.beta_min)) * u

    def _cumulative(self, u):  # int_0^u (root)^2 for u <= 1/2, cancellation-free
        p, q = math.sqrt(self.beta_min), math.sqrt(self.beta_max) - math.sqrt(self.beta_min)
        return u * (p * p + p * q * u + q * q * u * u / 3.0)

    def beta(self, t):
        t = as_time(t)
        return self._root(torch.minimum(t, 1.0 - t)) ** 2

    def variance(self, t):
        t = as_time(t)
        half = self._cumulative(0.5)
        return torch.where(t <= 0.5, self._cumulative(t), 2.0 * half - self._cumulative((1.0 - t).clamp(min=0.0)))

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def d_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return torch.sqrt(self.variance(t))

    def d_sigma(self, t):
        return 0.5 * self.beta(t) / self.sigma(t)

    def logsnr(self, t):
        return -0.5 * torch.log(self.variance(t))


@dataclass(frozen=True)
class LinearBridge(Process):
    """The process ``x_t = alpha x0 + scale sigma eps`` of ``base`` conditioned to end at ``x1`` at ``t = 1``.

    With ``lam`` the base's logSNR and ``r = exp(2 (lam(1) - lam(t)))``: ``a = alpha (1 - r)``,
    ``b = alpha(1) sigma^2 / (alpha sigma(1)^2)``, ``c = scale sigma sqrt(1 - r)``; the residual's logSNR
    is ``lam + log1mexp(2 (lam(1) - lam)) / 2 - log(scale)``, ``-inf`` at the pinned end."""

    base: Schedule = field(default_factory=BrownianBase)
    scale: float = 1.0
    pinned = True

    def __post_init__(self):
        if not isinstance(self.base, Schedule):
            raise TypeError(f"a linear bridge's base must be a sdeflow Schedule, got {type(self.base).__name__}")
        lam1 = float(self.base.logsnr(1.0))
        if float(self.base.sigma(0.0)) != 0.0 or float(self.base.alpha(0.0)) != 1.0:
            raise ValueError(f"a linear bridge starts at the data: its base must have alpha(0) = 1 and sigma(0) = 0, "
                             f"{type(self.base).__name__} has {float(self.base.alpha(0.0))} and {float(self.base.sigma(0.0))}")
        if not math.isfinite(lam1) or not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError("a linear bridge needs a base with finite logSNR at t = 1 (it pins the noise there) "
                             f"and scale > 0; got logSNR(1) = {lam1} and scale = {self.scale}")

    def _parts(self, t):
        t = as_time(t)
        base = self.base
        lam, lam1 = base.logsnr(t), base.logsnr(1.0)
        r = torch.exp(2.0 * (lam1 - lam))
        return t, base.alpha(t), base.sigma(t), lam, lam1, r

    def abc(self, t):
        t, al, sg, lam, lam1, r = self._parts(t)
        al1, sg1 = self.base.alpha(1.0), self.base.sigma(1.0)
        a = exact_ends(t, al * (1.0 - r), 1.0, 0.0)
        b = exact_ends(t, (al1 / al) * (sg / sg1) ** 2, 0.0, 1.0)
        c = exact_ends(t, self.scale * sg * torch.sqrt((1.0 - r).clamp(min=0.0)), 0.0, 0.0)
        return a, b, c

    def d_abc(self, t):
        t, al, sg, lam, lam1, r = self._parts(t)
        base = self.base
        dal, dsg, dlam = base.d_alpha(t), base.d_sigma(t), base.d_logsnr(t)
        al1, sg1 = base.alpha(1.0), base.sigma(1.0)
        dr = -2.0 * dlam * r
        da = dal * (1.0 - r) - al * dr
        db = (al1 / sg1 ** 2) * (2.0 * sg * dsg / al - sg * sg * dal / al ** 2)
        root = torch.sqrt((1.0 - r).clamp(min=0.0))
        # sigma dr / (2 root): 0 at clean data (r = 0), -inf at the pinned end (root = 0)
        tail = torch.where(r > 0, -sg * dr / (2.0 * root), torch.zeros_like(r))
        dc = self.scale * (dsg * root + tail)
        return da, db, dc

    def residual_logsnr(self, t):
        t, al, sg, lam, lam1, r = self._parts(t)
        out = lam + 0.5 * log1mexp((2.0 * (lam1 - lam)).clamp(max=0.0)) - math.log(self.scale)
        return exact_ends(t, out, math.inf, -math.inf)

    @property
    def start_std(self) -> float:
        return 0.0


# ---- mean-reverting (IR-SDE) ---------------------------------------------------------------------
THETAS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class MeanReverting(Process):
    """IR-SDE's mean-reverting SDE ``dx = theta(t) (x1 - x) dt + sqrt(2 lam^2 theta(t)) dw``:
    ``a = exp(-theta_bar)``, ``b = 1 - a``, ``c = lam sqrt(1 - a^2)``, ``theta_bar = int_0^t theta``.

    ``theta`` is the shape of ``theta(t)``, scaled so that ``a(1) = end`` (IR-SDE scales its table so
    that ``exp(-theta_bar(T))`` is a small ``eps``): ``"constant"``; ``"linear"`` (rising from 0);
    ``"cosine"``, ``theta_bar`` proportional to ``-2 log(cos phi(t) / cos phi(0))`` with
    ``phi = pi (t + s) / (2 (1 + 2 s))``, ``s = 0.008`` (the improved-DDPM cosine's cumulative
    beta, its end pulled in by ``s`` as IR-SDE's clipped table does). ``lam``: the stationary
    standard deviation."""

    theta: str = "cosine"
    lam: float = 0.5
    end: float = 0.01
    pinned = False

    def __post_init__(self):
        if self.theta not in THETAS:
            raise ValueError(f"unknown theta schedule {self.theta!r}; allowed: {', '.join(THETAS)}")
        if not (math.isfinite(self.lam) and self.lam > 0 and 0 < self.end < 1):
            raise ValueError(f"IR-SDE needs lam > 0 and 0 < end < 1, got lam = {self.lam}, end = {self.end}")

    _S = 0.008

    def _shape(self, t):
        """``(theta_bar, theta)`` before scaling."""
        if self.theta == "constant":
            return t, torch.ones_like(t)
        if self.theta == "linear":
            return t * t, 2.0 * t
        k = math.pi / (2.0 * (1.0 + 2.0 * self._S))
        phi = k * (t + self._S)
        return -2.0 * (torch.log(torch.cos(phi)) - math.log(math.cos(k * self._S))), 2.0 * k * torch.tan(phi)

    def theta_bar(self, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """``(theta_bar(t), theta(t))``, scaled so that ``exp(-theta_bar(1)) = end``."""
        t = as_time(t)
        total = float(self._shape(torch.tensor(1.0, dtype=torch.float64))[0])
        scale = -math.log(self.end) / total
        tb, th = self._shape(t)
        return exact_ends(t, tb * scale, 0.0, -math.log(self.end)), th * scale

    def abc(self, t):
        tb, _ = self.theta_bar(t)
        a = torch.exp(-tb)
        return a, -torch.expm1(-tb), self.lam * torch.sqrt(-torch.expm1(-2.0 * tb))

    def d_abc(self, t):
        tb, th = self.theta_bar(t)
        a = torch.exp(-tb)
        return -th * a, th * a, self.lam * th * a * a / torch.sqrt(-torch.expm1(-2.0 * tb))

    def residual_logsnr(self, t):
        tb, _ = self.theta_bar(t)
        return -tb - math.log(self.lam) - 0.5 * torch.log(-torch.expm1(-2.0 * tb))

    @property
    def start_std(self) -> float:
        return self.lam


# ---- residual diffusion (RDDM) -------------------------------------------------------------------
SHAPES = ("linear", "increasing", "decreasing")


def _cumulative_shape(shape: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F(t), F'(t))`` with ``F(0) = 0``, ``F(1) = 1`` for a rate that is constant, rises or falls linearly."""
    if shape == "linear":
        return t, torch.ones_like(t)
    if shape == "increasing":
        return t * t, 2.0 * t
    return t * (2.0 - t), 2.0 - 2.0 * t


@dataclass(frozen=True)
class RDDM(Process):
    """Residual diffusion: ``x_t = x0 + alpha_bar (x1 - x0) + beta_bar z`` with ``alpha_bar = F_a(t)`` and
    ``beta_bar^2 = beta_max^2 F_b(t)``, each ``F`` the cumulative of a rate ``"linear"`` (constant),
    ``"increasing"`` or ``"decreasing"`` (linearly), ``F(0) = 0``, ``F(1) = 1``."""

    alphas: str = "linear"
    betas: str = "linear"
    beta_max: float = 1.0

    def __post_init__(self):
        for name, v in (("alphas", self.alphas), ("betas", self.betas)):
            if v not in SHAPES:
                raise ValueError(f"unknown RDDM {name} shape {v!r}; allowed: {', '.join(SHAPES)}")
        if not (math.isfinite(self.beta_max) and self.beta_max > 0):
            raise ValueError(f"RDDM needs beta_max > 0, got {self.beta_max}")

    def abc(self, t):
        t = as_time(t)
        fa, _ = _cumulative_shape(self.alphas, t)
        fb, _ = _cumulative_shape(self.betas, t)
        fa, fb = exact_ends(t, fa, 0.0, 1.0), exact_ends(t, fb, 0.0, 1.0)
        return 1.0 - fa, fa, self.beta_max * torch.sqrt(fb)

    def d_abc(self, t):
        t = as_time(t)
        _, da = _cumulative_shape(self.alphas, t)
        fb, dfb = _cumulative_shape(self.betas, t)
        return -da, da, self.beta_max * 0.5 * dfb / torch.sqrt(fb)

    def residual_logsnr(self, t):
        t = as_time(t)
        fa, _ = _cumulative_shape(self.alphas, t)
        fb, _ = _cumulative_shape(self.betas, t)
        out = torch.log1p(-fa) - math.log(self.beta_max) - 0.5 * torch.log(fb)
        return exact_ends(t, out, math.inf, -math.inf)


#: Pinned and mean-reverting processes by name, with their published defaults.
PROCESSES = NameTable("process", {
    "ddbm-vp": (lambda: LinearBridge(VPLinear(beta_min=0.1, beta_max=2.1)),
                "DDBM's VP bridge (beta_min 0.1, beta_d 2): the VP SDE pinned at the source"),
    "ddbm-ve": (lambda: LinearBridge(EDM(sigma_max=80.0)), "DDBM's VE bridge (sigma = 80 t) pinned at the source"),
    "i2sb": (lambda: LinearBridge(SymmetricBeta(0.1, 1.0)), "I2SB's bridge over its symmetric beta table (0.1, 1.0)"),
    "brownian": (lambda: LinearBridge(BrownianBase()), "the Brownian bridge: a = 1 - t, b = t, c = sqrt(t (1 - t))"),
    "ou-bridge": (lambda: LinearBridge(VPLinear(beta_min=2.0, beta_max=2.0)),
                  "the Ornstein-Uhlenbeck bridge (theta 1, stationary variance 1)"),
    "ir-sde": (MeanReverting, "IR-SDE's mean-reverting SDE (cosine theta, lam 0.5, a(1) = 0.01)"),
    "rddm": (RDDM, "residual diffusion: alpha_bar = t, beta_bar^2 = t"),
})

"""A network of a pinned process as a denoiser of the residual path.

A bridge network sees the state ``x_t`` and the source ``x1`` and predicts some affine view of the clean
data. Every such view is one form of the hub

    x_hat = skip y + src x1 + out F(in x_t, c(t), source=x1),       y = x_t - b_t x1,

so one generic inverse converts back (``F = (x_hat - skip y - src x1) / out``). With
``x_t = a x0 + b x1 + c z``:

============ =========================================== =======================================
name         F                                           (in, skip, src, out)
============ =========================================== =======================================
x0           the clean data                              (1, 0, 0, 1)
eps          the residual's noise ``z``                  (1, 1/a, 0, -c/a)
residual     ``x1 - x0`` (RDDM's residual)               (1, 0, 1, -1)
ddbm         DDBM's preconditioned network               (c_in, c_skip, c_skip b, c_out)
i2sb         the forward noise of the unpinned process   (1, 1/alpha, b/alpha, -sigma/alpha)
============ =========================================== =======================================

DDBM's preconditioning, from the second moments of target and source (``sigma_data``, ``sigma_source``
and their covariance per value): ``A = a^2 sd^2 + b^2 ss^2 + 2 a b cov + c^2``, ``c_in = A^-1/2``,
``c_skip = (a sd^2 + b cov) / A``, ``c_out = sqrt(b^2 (ss^2 sd^2 - cov^2) + sd^2 c^2) / sqrt(A)``: the
network's input and target have unit variance. ``i2sb`` is I2SB's prediction of the noise of the
process before pinning, ``x_t = alpha x0 + sigma eps`` (linear bridges only).

:class:`BridgeDenoiser` is a :class:`~sdeflow.denoisers.Denoiser` on the residual schedule: its input
is the residual ``y``, its ``source=`` condition the source, its answer ``x_hat = E[x0 | y, x1]``. So
``sample(BridgeDenoiser(...), sampler, ts, y)`` runs any sampler on the bridge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..denoisers import Denoiser
from ..denoisers.model import checked_output
from ..shapes import Time, as_time, expand_as_batch
from .processes import LinearBridge, Process

BRIDGE_PARAMETERIZATIONS = ("x0", "eps", "residual", "ddbm", "i2sb")


@dataclass(frozen=True)
class BridgeParameterization:
    """What a bridge network predicts (see the module docstring); ``sigma_data``, ``sigma_source`` and
    ``covariance`` are DDBM's preconditioning constants (``ddbm`` only)."""

    name: str = "x0"
    sigma_data: float = 0.5
    sigma_source: float = 0.5
    covariance: float = 0.0

    def __post_init__(self):
        if self.name not in BRIDGE_PARAMETERIZATIONS:
            raise ValueError(f"unknown bridge parameterization {self.name!r}; allowed: {', '.join(BRIDGE_PARAMETERIZATIONS)}")
        sd, ss, cov = self.sigma_data, self.sigma_source, self.covariance
        if not all(math.isfinite(v) for v in (sd, ss, cov)) or sd <= 0 or ss <= 0 or cov * cov > sd * sd * ss * ss:
            raise ValueError(f"DDBM's constants need sigma_data > 0, sigma_source > 0 and |covariance| <= "
                             f"sigma_data sigma_source; got {sd}, {ss}, {cov}")

    def check(self, process: Process) -> None:
        """Refuse a parameterization the process cannot express."""
        if self.name == "i2sb" and not isinstance(process, LinearBridge):
            raise ValueError("the i2sb parameterization predicts the noise of the process before pinning, which only "
                             f"a linear bridge has; {type(process).__name__} does not (use x0, eps, residual or ddbm)")

    def coefficients(self, process: Process, t: Time) -> tuple[torch.Tensor, ...]:
        """``(in, skip, src, out)`` at ``t`` (float64)."""
        t = as_time(t)
        a, b, c = process.abc(t)
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        if self.name == "x0":
            return one, zero, zero, one
        if self.name == "eps":
            return one, 1.0 / a, zero, -c / a
        if self.name == "residual":
            return one, zero, one, -one
        if self.name == "i2sb":
            base = process.base
            al, sg = base.alpha(t), process.scale * base.sigma(t)
            return one, 1.0 / al, b / al, -sg / al
        sd2, ss2, cov = self.sigma_data ** 2, self.sigma_source ** 2, self.covariance
        big = a * a * sd2 + b * b * ss2 + 2.0 * a * b * cov + c * c
        c_in = 1.0 / torch.sqrt(big)
        c_skip = (a * sd2 + b * cov) / big
        c_out = torch.sqrt((b * b * (ss2 * sd2 - cov * cov) + sd2 * c * c).clamp(min=0.0)) * c_in
        return c_in, c_skip, c_skip * b, c_out


def as_bridge_parameterization(p) -> BridgeParameterization:
    return p if isinstance(p, BridgeParameterization) else BridgeParameterization(p)


class PinnedDenoiser(Denoiser):
    """Base of denoisers of a pinned process' residual path: ``forward(y, t, source=x1) -> x_hat``, with the
    ``process`` they belong to. A run is refused before it starts without a source shaped like the state."""

    def __init__(self, process: Process):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a sdeflow bridge Process, got {type(process).__name__}")
        super().__init__(process.residual)
        self.process = process

    def check_cond(self, x: torch.Tensor, cond: dict) -> None:
        source = (cond or {}).get("source")
        if source is None:
            raise ValueError("a bridge model samples from a source: pass cond={'source': x1} (the degraded input), "
                             f"one per sample, shaped like the state {tuple(x.shape)}")
        if not isinstance(source, torch.Tensor) or source.shape != x.shape:
            shape = tuple(source.shape) if isinstance(source, torch.Tensor) else type(source).__name__
            raise ValueError(f"the source must be a tensor shaped like the state {tuple(x.shape)}, got {shape}")
        if not bool(torch.isfinite(source).all()):
            raise ValueError("the source holds NaN or infinite values")


class BridgeDenoiser(PinnedDenoiser):
    """A bridge network with its process and parameterization, as a denoiser of the residual path.

    Args:
        model: ``model(x, c, source=x1, **cond) -> F``, with ``x = in(t) x_t`` and ``c`` the time input.
        process: the :class:`~sdeflow.bridges.processes.Process` it was trained on.
        parameterization: a :class:`BridgeParameterization` or its name.
        time_input: ``"t"`` (time in [0, 1]) or a callable ``(process, t) -> c``.

    ``forward(y, t, source=x1)`` returns ``x_hat``; :meth:`to_state` and :meth:`to_residual` convert
    between the residual ``y`` and the process' state ``x_t``.
    """

    def __init__(self, model: Callable, process: Process, parameterization="x0", *,
                 time_input: str | Callable = "t"):
        super().__init__(process)
        if not callable(model):
            raise TypeError("model must be callable: model(x, time, source=..., **cond) -> output")
        self.model = model
        self.parameterization = as_bridge_parameterization(parameterization)
        self.parameterization.check(process)
        if time_input == "t":
            time_input = _time_t
        if not callable(time_input):
            raise ValueError(f"time_input must be 't' or a callable (process, t) -> c, got {time_input!r}")
        self.time_input = time_input
        self._cache: dict[float, tuple[float, ...]] = {}

    def _coefficients(self, t):
        """``(in, skip, src, out, b, c)``: floats (cached) at a scalar time, else ``(B,)`` tensors."""
        if isinstance(t, float) or (isinstance(t, torch.Tensor) and t.ndim == 0 and not t.requires_grad
                                    and not torch.compiler.is_compiling()):
            key = float(t)
            hit = self._cache.get(key)
            if hit is None:
                tt = as_time(key)
                values = self.parameterization.coefficients(self.process, tt) + (self.process.abc(tt)[1],
                                                                                   self.time_input(self.process, tt))
                if len(self._cache) > 4096:
                    self._cache.clear()
                hit = self._cache[key] = tuple(float(v) for v in values)
            return hit
        t = as_time(t)
        return self.parameterization.coefficients(self.process, t) + (self.process.abc(t)[1], self.time_input(self.process, t))

    def to_state(self, y: torch.Tensor, t: Time, source: torch.Tensor) -> torch.Tensor:
        """``x_t = y + b_t x1``."""
        return y + _scale(self.process.abc(t)[1], source)

    def to_residual(self, x_t: torch.Tensor, t: Time, source: torch.Tensor) -> torch.Tensor:
        """``y = x_t - b_t x1``."""
        return x_t - _scale(self.process.abc(t)[1], source)

    def network_output(self, y: torch.Tensor, t, source: torch.Tensor, **cond) -> torch.Tensor:
        """The raw output ``F(in x_t, c, source=x1)`` at a scalar or per-sample time."""
        c_in, _, _, _, b, c = self._coefficients(t)
        x_t = y + _scale(b, source)
        dtype = torch.float64 if y.dtype == torch.float64 else torch.float32  # the time input at full precision
        c = torch.as_tensor(c, dtype=dtype, device=y.device)
        c = c.expand(y.shape[0]) if c.ndim == 0 else c.to(dtype)
        return checked_output(self.model(_scale(c_in, x_t), c, source=source, **cond), y).to(y.dtype)

    def forward(self, y, t, source=None, **cond):
        if source is None:
            self.check_cond(y, {})
        _, skip, src, out, _, _ = self._coefficients(t)
        f = self.network_output(y, t, source, **cond)
        return _scale(skip, y) + _scale(src, source) + _scale(out, f)

    def from_x_hat(self, x_hat: torch.Tensor, y: torch.Tensor, t, source: torch.Tensor) -> torch.Tensor:
        """The network output ``F`` that gives ``x_hat``: ``(x_hat - skip y - src x1) / out``."""
        _, skip, src, out, _, _ = self._coefficients(t)
        return _scale(1.0 / out, x_hat - _scale(skip, y) - _scale(src, source))


def _time_t(process, t):
    return t


def _scale(c, x: torch.Tensor) -> torch.Tensor:
    """``c x`` for a float or a 0-d / ``(B,)`` float64 coefficient, in ``x``'s dtype."""
    if isinstance(c, float):
        return x if c == 1.0 else x * c
    c = torch.as_tensor(c)
    return x * expand_as_batch(c.to(device=x.device, dtype=x.dtype), x)


def bridge_denoiser(network, process: Process, parameterization: str = "ddbm", sigma_data: float = 0.5) -> BridgeDenoiser:
    """A network trained by ``sdeflow train --process`` as its denoiser: time input ``t``, DDBM's constants
    ``sigma_data`` for the data and the source, no covariance assumed."""
    p = BridgeParameterization(parameterization, sigma_data=sigma_data, sigma_source=sigma_data)
    return BridgeDenoiser(network, process, p)

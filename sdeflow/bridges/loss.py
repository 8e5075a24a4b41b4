"""The bridge training loss for every bridge parameterization.

With pairs ``(x0, x1)``, ``t`` uniform on ``[t_min, t_max]`` and ``x_t = a x0 + b x1 + c z``, a network
output ``F`` that the parameterization maps to ``x_hat = skip y + src x1 + out F`` (``y = x_t - b x1``) is
regressed on its exact target ``F* = (x0 - skip y - src x1) / out``:

    L = E [ w(t) ||F - F*||^2 ] / D,   w = 1 ("output", the network's own error) or out^2 ("x0", the data error).

Both are minimised by ``x_hat = E[x0 | x_t, x1]``, the field every sampler of the residual needs; at that
optimum the "x0" loss at time ``t`` is ``tr Cov[x0 | x_t, x1] / D``. DDBM trains its preconditioned
network with weight ``1 / c_out^2`` on the data error, which is the "output" weighting here.
"""

from __future__ import annotations

import math

import torch

from ..shapes import expand_as_batch
from .denoiser import BridgeDenoiser

BRIDGE_WEIGHTINGS = ("output", "x0")


class BridgeLoss:
    """``loss(denoiser, x0, cond={"source": x1}, generator=...) -> (B,)`` per-sample losses.

    Args:
        weighting: ``"output"`` or ``"x0"`` (see the module docstring).
        t_min, t_max: the training times (the ends of a pinned process are excluded: an ``eps`` target is
            0/0 where ``a = c = 0``; DDBM trains up to ``1 - 1e-4``).
    """

    def __init__(self, weighting: str = "output", t_min: float = 1e-4, t_max: float = 1 - 1e-4):
        if weighting not in BRIDGE_WEIGHTINGS:
            raise ValueError(f"unknown bridge weighting {weighting!r}; allowed: {', '.join(BRIDGE_WEIGHTINGS)}")
        if not (0 <= t_min < t_max <= 1 and math.isfinite(t_min) and math.isfinite(t_max)):
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
        self.weighting, self.t_min, self.t_max = weighting, float(t_min), float(t_max)

    def draw(self, x: torch.Tensor, schedule=None, generator: torch.Generator | None = None):
        """Times ``(B,)`` float64, uniform on ``[t_min, t_max]``, and noise like ``x`` (drawn on the CPU)."""
        u = torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return self.t_min + (self.t_max - self.t_min) * u, eps.to(device=x.device, dtype=x.dtype)

    def targets(self, denoiser: BridgeDenoiser, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, z: torch.Tensor):
        """``(y, F*, weight)`` at per-sample times ``t`` (float64 ``(B,)``)."""
        process, p = denoiser.process, denoiser.parameterization
        a, b, c = process.abc(t)
        _, skip, src, out = p.coefficients(process, t)
        weight = torch.ones_like(t) if self.weighting == "output" else out ** 2

        def cast(v):
            return expand_as_batch(v.to(device=x0.device, dtype=x0.dtype), x0)

        if not bool(torch.isfinite(skip).all() & torch.isfinite(src).all() & (out != 0).all() & torch.isfinite(out).all()):
            raise ValueError(f"the {p.name} target is not finite at some training time in [{float(t.min()):.3g}, "
                             f"{float(t.max()):.3g}] of {type(process).__name__}; narrow t_min / t_max")
        y = cast(a) * x0 + cast(c) * z
        target = (x0 - cast(skip) * y - cast(src) * x1) / cast(out)
        return y, target, weight

    def __call__(self, denoiser: BridgeDenoiser, x: torch.Tensor, *, cond: dict | None = None,
                 generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                 eps: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(denoiser, BridgeDenoiser):
            raise TypeError(f"the bridge loss trains a BridgeDenoiser, got {type(denoiser).__name__}")
        cond = dict(cond or {})
        source = cond.pop("source", None)
        denoiser.check_cond(x, {"source": source})
        if t is None or eps is None:
            t_draw, eps_draw = self.draw(x, None, generator)
            t, eps = (t_draw if t is None else t), (eps_draw if eps is None else eps)
        t = torch.as_tensor(t, dtype=torch.float64)
        y, target, weight = self.targets(denoiser, x, source, t, eps)
        f = denoiser.network_output(y, t.to(x.device), source, **cond)
        err = (f.float() - target.float()).pow(2).reshape(x.shape[0], -1).mean(1)
        return weight.to(device=x.device, dtype=torch.float32) * err

"""TFG: training-free guidance by a predictor on clean data, as a denoiser transform.

Given a differentiable predictor ``log f(c | x0)`` of clean data (a classifier, a loss: nothing
trained on noisy inputs), TFG moves the clean estimate ``x_hat(x_t)`` by two terms:

- **variance guidance** (strength ``rho``): the gradient through the denoiser,
  ``rho (sigma_t^2 / alpha_t) grad_{x_t} log f~(c | x_hat(x_t))``, the classifier-guidance term of
  :class:`~sdeflow.guidance.ClassifierGuided` with ``log p_t(c | x_t)`` replaced by the predictor at the
  clean estimate (``rho = 1``: DPS's approximation);
- **mean guidance** (strength ``mu``, ``iterations`` steps): gradient ascent on the clean estimate,
  ``x0 <- x0 + mu grad_{x0} log f~(c | x0)`` from ``x0 = x_hat``.

``f~`` is the predictor smoothed by Gaussian noise of standard deviation ``gamma sigma_t`` (TFG's
implicit dynamics), ``log f~(x0) = log mean_k f(x0 + gamma sigma_t eps_k)`` over ``probes`` draws
(fixed by ``seed``, so a run is reproducible): smoothing widens the basin of the predictor where
the clean estimate is still blurry. The transform works with every sampler; TFG's fourth component,
recurrence (each step repeated after re-noising back to its start), is
:class:`~sdeflow.samplers.recurrent.Recurrent` around any single-step sampler.

Reference: Ye, Lin, Han, Xu, Liu, Liang, Ma, Zou, Ermon, "TFG: Unified Training-Free Guidance for
Diffusion Models", NeurIPS 2024, arXiv:2409.15761.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..denoisers import Denoiser


class TFG(Denoiser):
    """The TFG-guided denoiser (see the module docstring).

    Args:
        denoiser: the denoiser to guide.
        predictor: ``(x0, **cond) -> (B,)`` log-likelihood of the target property of clean data,
            differentiable in ``x0``; it receives the sampling conditioning (the target, e.g. ``label=``).
        unconditional: evaluate ``denoiser`` under its null conditioning (its ``null_cond``, else the
            conditioning without ``label_key``): the guidance alone steers, as training-free guidance of
            an unconditional model; False guides the conditional denoiser further.
        rho: variance-guidance strength; mu: mean-guidance step; iterations: mean-guidance steps.
        gamma: smoothing of the predictor, relative to ``sigma_t``; probes: its Monte Carlo draws.
        seed: the smoothing draws' seed.
    ``predictor_calls`` counts predictor forward-backward passes (each over ``probes`` copies)."""

    def __init__(self, denoiser: Denoiser, predictor: Callable, *, rho: float = 1.0, mu: float = 0.0,
                 iterations: int = 1, gamma: float = 0.0, probes: int = 4, seed: int = 0, unconditional: bool = True,
                 label_key: str = "label"):
        super().__init__(denoiser.schedule)
        if not callable(predictor):
            raise TypeError("predictor must be callable: (x0, **cond) -> log f(c | x0), one value per sample")
        for name, v in (("rho", rho), ("mu", mu), ("gamma", gamma)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name, v in (("iterations", iterations), ("probes", probes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.inner, self.predictor = denoiser, predictor
        self.rho, self.mu, self.gamma = float(rho), float(mu), float(gamma)
        self.iterations, self.probes, self.seed = iterations, probes, int(seed)
        self.unconditional, self.label_key = bool(unconditional), label_key
        self.predictor_calls = 0

    def smoothed(self, x0: torch.Tensor, std: float, cond: dict) -> torch.Tensor:
        """``(B,)``: ``log f~(c | x0)``, the predictor averaged over ``probes`` Gaussian perturbations of
        standard deviation ``std`` (the predictor itself when ``std = 0``)."""
        self.predictor_calls += 1
        if std == 0.0:
            return self.predictor(x0, **cond).reshape(x0.shape[0])
        b = x0.shape[0]
        eps = torch.randn((self.probes, *x0.shape), generator=torch.Generator().manual_seed(self.seed),
                          dtype=torch.float64).to(device=x0.device, dtype=x0.dtype)
        many = (x0[None] + std * eps).reshape(self.probes * b, *x0.shape[1:])
        rep = {k: (v.repeat(self.probes, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.ndim
                   and v.shape[0] == b else v) for k, v in cond.items()}
        logf = self.predictor(many, **rep).reshape(self.probes, b)
        return torch.logsumexp(logf, 0) - math.log(self.probes)

    def forward(self, x_t, t, **cond):
        sch = self.schedule
        a, s = float(sch.alpha(float(t))), float(sch.sigma(float(t)))
        std = self.gamma * s
        variance = self.rho > 0 and a > 0 and s > 0
        inner_cond = cond
        if self.unconditional:
            null = getattr(self.inner, "null_cond", None)
            inner_cond = null(cond) if null is not None else {k: v for k, v in cond.items() if k != self.label_key}
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(variance)
            x_hat = self.inner(x, t, **inner_cond)
            work = torch.promote_types(x_hat.dtype, torch.float32)
            out = x_hat.detach().to(work)
            if variance:
                (g,) = torch.autograd.grad(self.smoothed(x_hat.to(work), std, cond).sum(), x)
                out = out + (self.rho * s * s / a) * g.to(work)
            if self.mu > 0:
                x0 = x_hat.detach().to(work)
                for _ in range(self.iterations):
                    x0 = x0.requires_grad_(True)
                    (g0,) = torch.autograd.grad(self.smoothed(x0, std, cond).sum(), x0)
                    x0 = x0.detach() + self.mu * g0
                out = out + (x0 - x_hat.detach().to(work))
        return out.to(x_hat.dtype)

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
recurrence (each step repeated after re-noising back to its start), is :class:`Recurrent` around any
single-step sampler.

Reference: Ye, Lin, Han, Xu, Liu, Liang, Ma, Zou, Ermon, "TFG: Unified Training-Free Guidance for
Diffusion Models", NeurIPS 2024, arXiv:2409.15761.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from ..denoisers import Denoiser
from ..samplers.base import Plan, Sampler, Wrapper
from ..samplers.ddim import DDIM

RECUR_DRAW = 48  # the recurrence's re-noising draws start here, above any inner sampler's own


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


class RecurRow(NamedTuple):
    """Re-noising from the step's end back to its start: ``x <- c_x x + c_z z``."""

    c_x: float
    c_z: float


@dataclass(frozen=True)
class Recurrent(Wrapper):
    """Each step of ``inner`` taken ``times`` times, re-noised back to its start by the exact forward
    transition ``x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) z`` between
    the takes (TFG's recurrence, RePaint's resampling): the repeated steps let the guidance act more
    often per noise level. ``inner`` must carry no history; a final step to ``t = 0`` is taken once."""

    inner: Sampler = field(default_factory=lambda: DDIM(eta=1.0))
    times: int = 2
    stochastic = True

    @property
    def wrapped(self) -> Sampler:
        return self.inner

    def __post_init__(self):
        if not isinstance(self.inner, Sampler):
            raise TypeError(f"inner must be a sdeflow Sampler, got {type(self.inner).__name__}")
        if self.inner.has_history or self.inner.adaptive:
            raise ValueError(f"recurrence repeats steps one at a time: {type(self.inner).__name__} carries history "
                             "between steps or chooses its own (use DDIM, DDPM, Euler, Heun, DPM-Solver single-step)")
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise ValueError(f"times must be an integer >= 1, got {self.times!r}")

    @property
    def convergence_order(self) -> int:
        return 0  # the re-noising adds fresh noise per step: a different process, not a discretisation

    def count_nfe(self, schedule, ts):
        return self.prepare(schedule, ts).nfe

    def prepare(self, schedule, ts):
        inner = self.inner.prepare(schedule, ts)
        rows, nfe = [], 0
        per_step = (inner.nfe or 0) / max(1, len(inner.t))
        for t, s in zip(inner.t, inner.s):
            a_t, s_t, a_s, s_s = (float(v) for v in (schedule.alpha(t), schedule.sigma(t), schedule.alpha(s),
                                                     schedule.sigma(s)))
            if s_s == 0 or a_s == 0:
                rows.append(None)
                nfe += per_step
                continue
            r = a_t / a_s
            rows.append(RecurRow(r, math.sqrt(max(0.0, s_t * s_t - (r * s_s) ** 2))))
            nfe += per_step * self.times
        return Plan(inner.t, inner.s, rows, None if inner.nfe is None else int(round(nfe)), inner=(inner,))

    def step(self, field, x, i, plan, state, noise):
        row, inner = plan.coef[i], plan.inner[0]
        takes = 1 if row is None else self.times
        for k in range(takes):
            if k > 0:
                x = x.mul(row.c_x).add_(noise(draw=RECUR_DRAW + k), alpha=row.c_z)
                state = self.inner.after_external_update(state)
            x, state = self.inner.step(field, x, i, inner, state, noise if k == 0 else _Take(noise, k))
        return x, state


class _Take:
    """The step's noise for take ``k > 0``: draws of their own (a repeated take is not the same path)."""

    def __init__(self, noise, k: int):
        self.noise, self.k = noise, k

    def __call__(self, draw: int = 0, span=None):
        return self.noise(draw=RECUR_DRAW + 16 * self.k + draw)

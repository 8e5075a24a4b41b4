"""Twisted sequential Monte Carlo for posterior sampling: asymptotically exact as particles grow.

K particles follow the prior's ancestral (DDPM) reverse kernel ``p(x_s | x_t) = N(a x_t + b x_hat(x_t), v I)``
proposed with the twisting gradient, ``q(x_s | x_t) = N(a x_t + b x_hat + v grad log p~_t(y | x_t), v I)``,
and carry the importance weights

    w <- w p(x_s | x_t) p~_s(y | x_s) / (q(x_s | x_t) p~_t(y | x_t)),

with the twisting function ``p~_t(y | x_t) = N(y; A x_hat(x_t), (noise_std^2 + c r_t^2) I)``, ``r_t^2 =
v_d sigma^2 / (alpha^2 v_d + sigma^2)``. Particles are resampled (systematic) when the effective sample
size drops below ``ess_threshold K``.

The last step, to clean data, uses the kernel ``p(x | x_t) = N(x_hat, r_t^2 I)`` (exact for Gaussian data
of variance ``v_d``; the ancestral kernel is a point mass there, which cannot tell resampled copies apart)
and draws from it times the likelihood exactly: for a linear operator by Matheron's rule,
``x = x~ + A^T (A A^T + noise_std^2 / r^2)^-1 (y - A x~ - noise_std n)`` with ``x~ = x_hat + r z``, with the
weight ``N(y; A x_hat, r^2 A A^T + noise_std^2 I) / p~_t(y | x_t)``; for a nonlinear one from
``N(x_hat + r^2 grad log N(y; A(x_hat), noise_std^2 + r^2), r^2 I)`` with its importance weight. So the
weighted particles target the posterior of the model's chain, the resampled copies of a particle end
as distinct samples, and no sharper final reweighting collapses them. The result keeps the effective
sample size of every step and the final log weights; a final ESS below ``min_ess K`` warns. Wu, Trippe, Naesseth,
Blei, Cunningham, "Practical and Asymptotically Exact
Conditional Sampling in Diffusion Models", 2023, arXiv:2306.17775 (the twisted diffusion sampler).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource, as_noise
from ..run import Run, integrate, run_local
from ..samplers.base import ByIdentity, Plan, Sampler
from ..sampling import planned, prior_sample
from .guidance import gaussian_posterior_var
from .operators import Operator
from .result import Solution


def ancestral_coefficients(schedule, t, s) -> tuple[float, float, float]:
    """``(a, b, v)`` of the ancestral reverse kernel ``p(x_s | x_t, x) = N(a x_t + b x, v I)`` for
    ``s < t`` (the posterior of the forward process; DDPM's kernel when ``x`` is ``x_hat``)."""
    a_t, s_t, a_s, s_s = (float(v) for v in (schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)))
    ratio = a_t / a_s
    var_ts = s_t ** 2 - ratio ** 2 * s_s ** 2  # variance of x_t given x_s
    return ratio * s_s ** 2 / s_t ** 2, a_s * var_ts / s_t ** 2, var_ts * s_s ** 2 / s_t ** 2


def _systematic(log_w: torch.Tensor, u0: float) -> torch.Tensor:
    """Systematic resampling: ancestor indices for the points ``(u0 + j) / K``."""
    w = torch.softmax(log_w.double(), 0)
    k = w.numel()
    u = ((u0 + torch.arange(k, dtype=torch.float64)) / k).to(w.device)
    return torch.searchsorted(torch.cumsum(w, 0), u).clamp(max=k - 1)


class ProposalRow(NamedTuple):
    """A step to ``s`` before the last: the ancestral kernel ``N(c_x x_t + c_hat x_hat, v I)``, the twist's
    variance at ``s`` and whether the twist has a gradient there (``sigma_s > 0``)."""

    c_x: float
    c_hat: float
    v: float
    var_s: float
    grad_s: bool


class FinalRow(NamedTuple):
    """The last step, to clean data: the kernel ``N(x_hat, r2 I)`` times the likelihood."""

    r2: float


class SMCState(NamedTuple):
    """Per particle: the twist ``log p~_t(y | x_t)``, its gradient and ``x_hat`` at the current state; the log
    weights; the effective sample size after each step so far."""

    logp: torch.Tensor
    grad: torch.Tensor
    x_hat: torch.Tensor
    log_w: torch.Tensor
    ess: list


@dataclass(frozen=True, eq=False)
class TwistedSMC(ByIdentity, Sampler):
    """The twisted diffusion sampler as a sampler whose batch is the particle set (see the module
    docstring): one denoiser evaluation (with a vector-Jacobian product) per step, carried to the next
    step; resampling couples the batch. The grid must end at ``t = 0``. The effective sample size of every
    step and the final log weights are kept in the run (:meth:`sdeflow.run.Run.local` of this sampler)."""

    operator: Operator
    y: torch.Tensor
    noise_std: float
    data_var: float = 1.0
    ess_threshold: float = 0.5
    stochastic = True
    couples_batch = True
    evaluates_first = False
    carries_evaluation = True
    has_history = True

    def prepare(self, schedule, ts):
        if float(ts[-1]) != 0.0:
            raise ValueError("the twisted SMC sampler needs a grid ending at t = 0 (the twist becomes the likelihood there)")
        if len(ts) < 2:
            raise ValueError("the twisted SMC sampler needs at least one step")
        t, s = ts[:-1].tolist(), ts[1:].tolist()
        rows: list = []
        for i in range(len(t) - 1):
            rows.append(ProposalRow(*ancestral_coefficients(schedule, t[i], s[i]), self._twist_var(schedule, s[i]),
                                    float(schedule.sigma(s[i])) > 0))
        rows.append(FinalRow(gaussian_posterior_var(schedule, t[-1], self.data_var)))
        start = ProposalRow(0.0, 0.0, 0.0, self._twist_var(schedule, t[0]), float(schedule.sigma(t[0])) > 0)
        return Plan(t, s, rows, len(t), end=start)

    def _twist_var(self, schedule, t: float) -> float:
        return self.noise_std ** 2 + gaussian_posterior_var(schedule, float(t), self.data_var)

    def _twist(self, field, x_t, t, var, with_grad):
        """``(log p~_t(y | x_t), its gradient, x_hat)`` per particle."""
        k = x_t.shape[0]
        y = self.y.to(dtype=x_t.dtype, device=x_t.device)
        with torch.enable_grad():
            xr = x_t.detach().requires_grad_(True)
            d = field(xr, t)
            r = (y.expand(k, *y.shape) - self.operator(d)).reshape(k, -1)
            var = max(var, 1e-300)
            logp = -0.5 * (r.pow(2).sum(1) / var + r.shape[1] * math.log(2 * math.pi * var))
            grad = torch.autograd.grad(logp.sum(), xr)[0] if with_grad else torch.zeros_like(xr)
        return logp.detach(), grad.detach(), d.detach()

    def step(self, field, x, i, plan, state, noise):
        if state is None:  # the first step: the twist at the start
            logp, grad, d = self._twist(field, x, plan.t[0], plan.end.var_s, plan.end.grad_s)
            state = SMCState(logp, grad, d, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device), [])
        logp_t, grad_t, d_t, log_w, ess = state
        row, dims, k = plan.coef[i], tuple(range(1, x.ndim)), x.shape[0]
        if isinstance(row, FinalRow):
            draws = iter(range(3))

            def randn(shape):
                return noise.shaped(torch.empty(shape, dtype=x.dtype, device=x.device), next(draws))
            x, log_inc = _final_step(self.operator, self.y.to(dtype=x.dtype, device=x.device), self.noise_std, d_t,
                                     row.r2, randn, dims)
            log_w = log_w + (log_inc - logp_t).double()
            ess = ess + [_ess(log_w)]
            run_local(self, dict).update(ess=ess, log_weights=log_w)
            return x[_systematic(log_w, noise.uniform(3))], None
        prior_mean = row.c_x * x + row.c_hat * d_t
        z = noise()
        x_new = prior_mean + row.v * grad_t + row.v ** 0.5 * z
        # log p(x_s | x_t) - log q(x_s | x_t) for equal-variance Gaussians
        log_ratio = (-(x_new - prior_mean).pow(2).sum(dims) + z.pow(2).sum(dims) * row.v) / (2 * row.v)
        logp_s, grad_s, d_s = self._twist(field, x_new, plan.s[i], row.var_s, row.grad_s)
        log_w = log_w + (log_ratio + logp_s - logp_t).double()
        ess = ess + [_ess(log_w)]
        if ess[-1] < self.ess_threshold * k:
            idx = _systematic(log_w, noise.uniform(1))
            x_new, logp_s, grad_s, d_s = x_new[idx], logp_s[idx], grad_s[idx], d_s[idx]
            log_w = torch.zeros_like(log_w)
        return x_new, SMCState(logp_s, grad_s, d_s, log_w, ess)


def twisted_smc(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor,
                num_particles: int, *, data_var: float = 1.0, ess_threshold: float = 0.5, min_ess: float = 0.02,
                noise: NoiseSource | None = None, dtype=torch.float64, device=None, progress: bool = False,
                callback=None) -> Solution:
    """Sample ``p(x | y)`` for ``y = A(x) + noise_std n`` with ``num_particles`` particles along the
    decreasing grid ``ts`` (which must end at 0): :class:`TwistedSMC` on the sampling loop, from the
    prior at ``ts[0]``. ``noise``: a :class:`~sdeflow.noise.NoiseSource` (default: the global RNG)."""
    sampler = TwistedSMC(operator, torch.as_tensor(y, dtype=dtype, device=device), noise_std, data_var, ess_threshold)
    plan = planned(sampler, denoiser.schedule, ts)
    k = int(num_particles)
    noise = as_noise(noise)
    x = prior_sample(denoiser.schedule, (k, *operator.shape), t=plan.t[0], data_std=data_var ** 0.5, noise=noise,
                     dtype=dtype, device=device)
    run = Run(denoiser, noise=noise, progress=progress, total=plan.nfe, desc="smc", callback=callback)
    x, _ = integrate(run, sampler, plan, x)
    run.finish(x, plan)
    info = run.local(sampler)
    if info["ess"][-1] < min_ess * k:
        warnings.warn(f"twisted SMC: the final effective sample size is {info['ess'][-1]:.1f} of {k} particles, so the "
                      "samples are drawn from few distinct particles; use more particles, more steps or a noise-spaced grid",
                      RuntimeWarning, stacklevel=2)
    return Solution(x, run.calls, "smc", {"ess": info["ess"], "log_weights": info["log_weights"]})


def _ess(log_w: torch.Tensor) -> float:
    w = torch.softmax(log_w, 0)
    return float(1.0 / (w * w).sum())


def _final_step(operator, y, noise_std, x_hat, r2, randn, dims):
    """``(x, log weight up to a constant)``: an exact draw from ``N(x; x_hat, r2 I) N(y; A x, noise_std^2 I)``
    and the log of its normaliser (see the module docstring)."""
    k = x_hat.shape[0]
    x_prior = x_hat + r2 ** 0.5 * randn(x_hat.shape)
    if operator.linear:
        resid = y.expand(k, *y.shape) - operator(x_hat)
        quad = (resid * operator.gram_solve(resid, noise_std ** 2 / r2)).reshape(k, -1).sum(1) / r2
        return operator.conditional_draw(x_prior, r2, y, noise_std, randn(resid.shape)), -0.5 * quad
    var = noise_std ** 2 + r2
    with torch.enable_grad():
        d = x_hat.detach().requires_grad_(True)
        logp = -0.5 * (y.expand(k, *y.shape) - operator(d)).reshape(k, -1).pow(2).sum(1) / var
        grad = torch.autograd.grad(logp.sum(), d)[0]
    mean = x_hat + r2 * grad
    z = randn(x_hat.shape)
    x = mean + r2 ** 0.5 * z
    log_prior = -(x - x_hat).pow(2).sum(dims) / (2 * r2)
    log_q = -z.pow(2).sum(dims) / 2
    log_lik = -(y.expand(k, *y.shape) - operator(x)).reshape(k, -1).pow(2).sum(1) / (2 * max(noise_std ** 2, 1e-300))
    return x.detach(), (log_prior - log_q + log_lik).detach()

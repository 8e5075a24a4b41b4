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

import warnings

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource
from ..run import Run
from ..sampling import prior_std
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


def twisted_smc(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor,
                num_particles: int, *, data_var: float = 1.0, ess_threshold: float = 0.5, min_ess: float = 0.02,
                noise: NoiseSource | None = None, dtype=torch.float64, device=None, progress: bool = False,
                callback=None) -> Solution:
    """Sample ``p(x | y)`` for ``y = A(x) + noise_std n`` with ``num_particles`` particles along the
    decreasing grid ``ts`` (which must end at 0); one denoiser evaluation (with a vector-Jacobian
    product) per step. ``noise``: a :class:`~sdeflow.noise.NoiseSource` (default: the global RNG)."""
    sched = denoiser.schedule
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if float(ts[-1]) != 0.0:
        raise ValueError("the twisted SMC sampler needs a grid ending at t = 0 (the twist becomes the likelihood there)")
    if len(ts) < 2:
        raise ValueError("the twisted SMC sampler needs at least one step")
    shape = operator.shape
    k = int(num_particles)
    y = torch.as_tensor(y, dtype=dtype, device=device)
    run = Run(denoiser, noise=noise, progress=progress, total=len(ts) - 1, desc="smc", callback=callback)

    def randn(shape):
        return run.fresh(shape, dtype, device)
    x = randn((k, *shape)) * prior_std(sched, float(ts[0]), data_var ** 0.5)
    dims = tuple(range(1, x.ndim))

    def twist(x_t, t):
        """``(log p~_t(y | x_t), grad of it, x_hat)`` per particle."""
        s = float(sched.sigma(t))
        var = noise_std ** 2 + gaussian_posterior_var(sched, float(t), data_var)
        with torch.enable_grad():
            xr = x_t.detach().requires_grad_(True)
            d = run(xr, float(t))
            r = (y.expand(k, *y.shape) - operator(d)).reshape(k, -1)
            m = r.shape[1]
            logp = -0.5 * (r.pow(2).sum(1) / max(var, 1e-300) + m * torch.log(torch.tensor(2 * torch.pi * max(var, 1e-300))))
            grad = torch.autograd.grad(logp.sum(), xr)[0] if s > 0 else torch.zeros_like(xr)
        return logp.detach(), grad.detach(), d.detach()

    log_w = torch.zeros(k, dtype=torch.float64, device=y.device)
    with run:
        logp_t, grad_t, d_t = twist(x, ts[0])
        ess = []
        n = len(ts) - 1
        for i in range(n - 1):  # every step but the last, to clean data
            t, s = ts[i], ts[i + 1]
            run.step = i
            ca, cb, v = ancestral_coefficients(sched, t, s)
            prior_mean = ca * x + cb * d_t
            z = randn(x.shape)
            x_new = prior_mean + v * grad_t + v ** 0.5 * z
            # log p(x_s | x_t) - log q(x_s | x_t) for equal-variance Gaussians
            log_ratio = (-(x_new - prior_mean).pow(2).sum(dims) + z.pow(2).sum(dims) * v) / (2 * v)
            logp_s, grad_s, d_s = twist(x_new, s)
            log_w = log_w + (log_ratio + logp_s - logp_t).double()
            ess.append(_ess(log_w))
            x, logp_t, grad_t, d_t = x_new, logp_s, grad_s, d_s
            if ess[-1] < ess_threshold * k:
                idx = _systematic(log_w, run.uniform(k, dtype, device))
                x, logp_t, grad_t, d_t = x[idx], logp_t[idx], grad_t[idx], d_t[idx]
                log_w = torch.zeros_like(log_w)
            run.stepped(i, t, s, x)
    r2 = gaussian_posterior_var(sched, float(ts[-2]), data_var)
    x, log_inc = _final_step(operator, y, noise_std, d_t, r2, randn, dims)
    log_w = log_w + (log_inc - logp_t).double()
    ess.append(_ess(log_w))
    if ess[-1] < min_ess * k:
        warnings.warn(f"twisted SMC: the final effective sample size is {ess[-1]:.1f} of {k} particles, so the samples "
                      "are drawn from few distinct particles; use more particles, more steps or a noise-spaced grid",
                      RuntimeWarning, stacklevel=2)
    final = _systematic(log_w, run.uniform(k, dtype, device))
    run.stepped(n - 1, ts[-2], ts[-1], x[final])
    run.finish(x)
    return Solution(x[final], run.calls, "smc", {"ess": ess, "log_weights": log_w})


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

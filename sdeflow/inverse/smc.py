"""Twisted sequential Monte Carlo for posterior sampling: asymptotically exact as particles grow.

K particles follow the prior's ancestral (DDPM) reverse kernel ``p(x_s | x_t) = N(a x_t + b x_hat(x_t), v I)``
proposed with the twisting gradient, ``q(x_s | x_t) = N(a x_t + b x_hat + v grad log p~_t(y | x_t), v I)``,
and carry the importance weights

    w <- w p(x_s | x_t) p~_s(y | x_s) / (q(x_s | x_t) p~_t(y | x_t)),

with the twisting function ``p~_t(y | x_t) = N(y; A x_hat(x_t), (noise_std^2 + c r_t^2) I)``, ``r_t^2 =
v_d sigma^2 / (alpha^2 v_d + sigma^2)``. At ``t = 0`` the twist is the true likelihood, so the
weighted particles target ``p(x | y)`` exactly whatever the twist; a better twist only needs fewer
particles. Particles are resampled (systematic) when the effective sample size drops below
``ess_threshold K``. Wu, Trippe, Naesseth, Blei, Cunningham, "Practical and Asymptotically Exact
Conditional Sampling in Diffusion Models", 2023, arXiv:2306.17775 (the twisted diffusion sampler).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..denoisers import Denoiser
from ..sampling import prior_sample
from .guidance import gaussian_posterior_var
from .operators import Operator


@dataclass
class SMCResult:
    """``x``: ``(K, *shape)`` particles after the final resampling (equally weighted); ``log_weights``
    of the particles before it; ``ess``: effective sample size per step; ``nfe``: denoiser calls
    (each with a vector-Jacobian product)."""

    x: torch.Tensor
    log_weights: torch.Tensor
    ess: list
    nfe: int


def ancestral_coefficients(schedule, t, s) -> tuple[float, float, float]:
    """``(a, b, v)`` of the ancestral reverse kernel ``p(x_s | x_t, x) = N(a x_t + b x, v I)`` for
    ``s < t`` (the posterior of the forward process; DDPM's kernel when ``x`` is ``x_hat``)."""
    a_t, s_t, a_s, s_s = (float(v) for v in (schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)))
    ratio = a_t / a_s
    var_ts = s_t ** 2 - ratio ** 2 * s_s ** 2  # variance of x_t given x_s
    return ratio * s_s ** 2 / s_t ** 2, a_s * var_ts / s_t ** 2, var_ts * s_s ** 2 / s_t ** 2


def _systematic(log_w: torch.Tensor, generator) -> torch.Tensor:
    w = torch.softmax(log_w.double(), 0)
    k = w.numel()
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(k, dtype=torch.float64)) / k
    return torch.searchsorted(torch.cumsum(w, 0), u).clamp(max=k - 1)


def twisted_smc(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor,
                num_particles: int, *, data_var: float = 1.0, ess_threshold: float = 0.5,
                generator: torch.Generator | None = None, dtype=torch.float64) -> SMCResult:
    """Sample ``p(x | y)`` for ``y = A(x) + noise_std n`` with ``num_particles`` particles along the
    decreasing grid ``ts`` (which must end at 0)."""
    sched = denoiser.schedule
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if float(ts[-1]) != 0.0:
        raise ValueError("the twisted SMC sampler needs a grid ending at t = 0 (the twist becomes the likelihood there)")
    shape = operator.shape
    k = int(num_particles)
    y = torch.as_tensor(y, dtype=dtype)
    x = prior_sample(sched, (k, *shape), t=float(ts[0]), data_std=data_var ** 0.5, generator=generator, dtype=dtype)
    dims = tuple(range(1, x.ndim))

    def twist(x_t, t):
        """``(log p~_t(y | x_t), grad of it, x_hat)`` per particle."""
        s = float(sched.sigma(t))
        var = noise_std ** 2 + gaussian_posterior_var(sched, float(t), data_var)
        with torch.enable_grad():
            xr = x_t.detach().requires_grad_(True)
            d = denoiser(xr, float(t))
            r = (y.expand(k, *y.shape) - operator(d)).reshape(k, -1)
            m = r.shape[1]
            logp = -0.5 * (r.pow(2).sum(1) / max(var, 1e-300) + m * torch.log(torch.tensor(2 * torch.pi * max(var, 1e-300))))
            grad = torch.autograd.grad(logp.sum(), xr)[0] if s > 0 else torch.zeros_like(xr)
        return logp.detach(), grad.detach(), d.detach()

    log_w = torch.zeros(k, dtype=torch.float64)
    logp_t, grad_t, d_t = twist(x, ts[0])
    nfe, ess = 1, []
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        ca, cb, v = ancestral_coefficients(sched, t, s)
        prior_mean = ca * x + cb * d_t
        if v > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(dtype)
            shift = v * grad_t
            x_new = prior_mean + shift + v ** 0.5 * noise
            # log p(x_s | x_t) - log q(x_s | x_t) for equal-variance Gaussians
            log_ratio = (-(x_new - prior_mean).pow(2).sum(dims) + noise.pow(2).sum(dims) * v) / (2 * v)
        else:
            x_new, log_ratio = prior_mean, torch.zeros(k, dtype=dtype)
        logp_s, grad_s, d_s = twist(x_new, s)
        nfe += 1
        log_w = log_w + (log_ratio + logp_s - logp_t).double()
        w = torch.softmax(log_w, 0)
        ess.append(float(1.0 / (w * w).sum()))
        x, logp_t, grad_t, d_t = x_new, logp_s, grad_s, d_s
        if ess[-1] < ess_threshold * k and i < len(ts) - 2:
            idx = _systematic(log_w, generator)
            x, logp_t, grad_t, d_t = x[idx], logp_t[idx], grad_t[idx], d_t[idx]
            log_w = torch.zeros(k, dtype=torch.float64)
    final = _systematic(log_w, generator)
    return SMCResult(x[final], log_w, ess, nfe)

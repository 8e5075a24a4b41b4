"""RED-diff: posterior mode by optimisation with the diffusion model as a regulariser.

A point estimate ``mu`` is optimised (Adam) along a decreasing grid of times; at time ``t`` the
objective is

    ||y - A(mu)||^2 / (2 noise^2)  +  lam w(t) <sg[eps_hat(x_t) - eps], mu>,   x_t = alpha mu + sigma eps,

whose second term is the score-matching regulariser of the paper with the SNR weighting
``w(t) = sigma_t / alpha_t`` (its gradient pulls ``mu`` towards where the denoiser agrees). ``num``
independent estimates differ only through the noise draws: RED-diff is a variational method with
a vanishing variance, not a posterior sampler, and its spread is not the posterior's. Mardani,
Song, Kautz, Vahdat, "A Variational Perspective on Solving Inverse Problems with Diffusion Models",
2023, arXiv:2305.04391.
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource
from ..run import Run
from .operators import Operator
from .result import Solution


def red_diff(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
             lam: float = 0.25, lr: float = 0.1, noise: NoiseSource | None = None, device=None, dtype=torch.float32,
             init: torch.Tensor | None = None, progress: bool = False, callback=None):
    """The estimates ``mu`` after one Adam step per grid time (times > 0 of ``ts``, in the given order)."""
    sched = denoiser.schedule
    ts = [float(t) for t in torch.as_tensor(ts, dtype=torch.float64) if float(t) > 0]
    y = torch.as_tensor(y, dtype=dtype, device=device)
    run = Run(denoiser, noise=noise, progress=progress, total=len(ts), desc="red-diff", callback=callback)
    shape = operator.shape
    if init is None:
        linear = getattr(operator, "linear", False)
        init = operator.adjoint(y.expand(num, *y.shape)) if linear else torch.zeros(num, *shape, dtype=dtype, device=device)
    mu = init.clone().to(dtype).requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99))
    scale = 1.0 / (2 * max(noise_std, 1e-3) ** 2)
    for i, t in enumerate(ts):
        a, s = float(sched.alpha(t)), float(sched.sigma(t))
        run.step = i
        eps = run.fresh(mu.shape, dtype, device)
        with torch.no_grad(), run:
            x_t = a * mu + s * eps
            eps_hat = (x_t - a * run(x_t, t)) / s
        residual = (y - operator(mu)).reshape(num, -1)
        fit = scale * residual.pow(2).sum(1)
        reg = lam * (s / a) * ((eps_hat - eps).detach() * mu).reshape(num, -1).sum(1)
        opt.zero_grad()
        (fit + reg).sum().backward()
        opt.step()
        run.stepped(i, t, ts[i + 1] if i + 1 < len(ts) else 0.0, mu.detach())
    run.finish(mu)
    return Solution(mu.detach(), run.calls, "red-diff")

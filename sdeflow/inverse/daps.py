"""DAPS: decoupled annealing posterior sampling.

Along a decreasing grid of noise levels, each step (1) estimates the clean signal from ``x_t`` with
a short probability-flow ODE solve of the prior (``ode_steps`` Euler steps in the logSNR-uniform
sense, or the plain denoiser with ``ode_steps = 0``), (2) runs ``langevin_steps`` of Langevin
dynamics on ``p(x | x_t, y) ~ N(x; x_hat, r_t^2 I) exp(-||y - A(x)||^2 / (2 noise^2))`` with
``r_t^2 = v sigma^2 / (alpha^2 v + sigma^2)`` (step ``step_size / (1 / r_t^2 + ||A||^2 / noise^2)``,
stable whichever term is stiffer), and (3) re-noises the result to the next level,
``x_s = alpha_s x + sigma_s eps``: the noise is decoupled from the previous state, so the sampler
can correct large errors. Zhang et al., "Improving Diffusion Inverse Problem Solving with
Decoupled Noise Annealing", 2024, arXiv:2407.01521.
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..samplers import DDIM
from ..noise import NoiseSource
from ..run import Run, Steps
from ..sampling import planned, prior_std
from .guidance import gaussian_posterior_var
from .result import Solution
from .operators import Operator


def daps(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
         langevin_steps: int = 20, step_size: float = 0.5, ode_steps: int = 3, data_var: float = 1.0,
         noise: NoiseSource | None = None, device=None, dtype=torch.float32, progress: bool = False, callback=None):
    """``num`` posterior samples for ``y = A(x) + noise_std n``."""
    sched = denoiser.schedule
    ts = torch.as_tensor(ts, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=dtype, device=device)
    shape = operator.shape
    run = Run(denoiser, noise=noise, progress=progress, total=(len(ts) - 1) * max(1, ode_steps), desc="daps",
              callback=callback)

    def randn():
        return run.fresh((num, *shape), dtype, device)
    x_t = randn() * prior_std(sched, float(ts[0]), data_var ** 0.5)
    noise_var = max(noise_std, 1e-3) ** 2
    lip = _lipschitz(operator, shape, dtype)  # largest eigenvalue of A^T A (1 for nonlinear operators)
    x0 = x_t
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        run.step = i
        # (1) the prior's estimate of the clean signal
        with torch.no_grad(), run:
            x_hat = _ode_estimate(run, x_t, t, ode_steps)
        r2 = gaussian_posterior_var(sched, t, data_var)
        # (2) Langevin on the decoupled posterior of x given x_hat and y
        x0 = x_hat.clone()
        eta = step_size / (1.0 / r2 + lip / noise_var)  # stable for the stiffer of the two terms
        for _ in range(langevin_steps):
            x0 = x0.detach().requires_grad_(True)
            log_p = -((x0 - x_hat).pow(2).reshape(num, -1).sum(1) / (2 * r2)
                      + (y - operator(x0)).reshape(num, -1).pow(2).sum(1) / (2 * noise_var))
            grad = torch.autograd.grad(log_p.sum(), x0)[0]
            x0 = x0.detach() + eta * grad + (2 * eta) ** 0.5 * randn()
        # (3) re-noise to the next level
        a_s, s_s = float(sched.alpha(s)), float(sched.sigma(s))
        x_t = a_s * x0 + s_s * randn() if s > 0 else x0
        run.stepped(i, t, s, x_t)
    run.finish(x0)
    return Solution(x0.detach(), run.calls, "daps")


def _lipschitz(operator, shape, dtype, iters: int = 20) -> float:
    """``||A||^2`` by power iteration on ``A^T A`` for a linear operator; 1 otherwise."""
    if not getattr(operator, "linear", False):
        return 1.0
    v = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    lam = 1.0
    for _ in range(iters):
        w = operator.adjoint(operator(v))
        lam = float(w.norm() / v.norm().clamp_min(1e-30))
        v = w / w.norm().clamp_min(1e-30)
    return max(lam, 1e-12)


def _ode_estimate(run: Run, x_t, t, steps):
    """``x_hat`` from ``steps - 1`` DDIM steps of the probability-flow ODE, uniform in
    ``log(sigma / alpha)`` from ``t`` down to a hundredth of its level, and the denoiser there
    (``steps`` evaluations in ``run``), or ``D(x_t)`` when ``steps == 0``."""
    sched = run.denoiser.schedule
    if steps == 0:
        return run(x_t, t)
    level = sched.noise_to_signal(torch.tensor(t, dtype=torch.float64))
    lo = max(float(level) * 1e-2, 1e-3)
    levels = torch.logspace(torch.log10(level), torch.log10(torch.tensor(lo, dtype=torch.float64)), steps,
                            dtype=torch.float64)
    grid = torch.cat([torch.tensor([t], dtype=torch.float64), sched.t_from_sigma_ratio(levels[1:])])
    if steps > 1:
        outer, ode = run.step, Steps(DDIM(), planned(DDIM(), sched, grid), run)
        x_t = ode.run_steps(ode.start(x_t), 0, steps - 1)[0]
        run.step = outer
    return run(x_t, float(grid[-1]))

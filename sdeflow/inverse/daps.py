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

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource, as_noise
from ..samplers import DDIM
from ..samplers.base import ByIdentity, Plan, Sampler
from ..sampling import planned, prior_sample, sample
from .guidance import gaussian_posterior_var
from .result import Solution
from .operators import Operator


class DAPSRow(NamedTuple):
    """One DAPS step to ``s``: the DDIM steps ``(t_j, Affine)`` of the prior's estimate and the time ``t_hat``
    of its last evaluation; the decoupled posterior's prior variance ``r2`` and Langevin step ``eta``;
    the re-noising ``x_s = a_s x + s_s z``."""

    ode: tuple
    t_hat: float
    r2: float
    eta: float
    a_s: float
    s_s: float
    STRUCTURE = ("t_hat",)


@dataclass(frozen=True, eq=False)
class DAPS(ByIdentity, Sampler):
    """DAPS's step as a sampler (see the module docstring): ``max(1, ode_steps)`` evaluations for the
    prior's estimate, Langevin on the decoupled posterior (the operator's gradient only), re-noising."""

    operator: Operator
    y: torch.Tensor
    noise_std: float
    langevin_steps: int = 20
    step_size: float = 0.5
    ode_steps: int = 3
    data_var: float = 1.0
    stochastic = True

    @property
    def nfe_per_step(self) -> int:
        return max(1, self.ode_steps)

    def prepare(self, schedule, ts):
        noise_var = max(self.noise_std, 1e-3) ** 2
        lip = _lipschitz(self.operator, self.operator.shape, torch.float64)  # largest eigenvalue of A^T A
        rows = []
        for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
            grid = _estimate_grid(schedule, t, self.ode_steps)
            ode = tuple(zip(grid[:-1].tolist(), planned(DDIM(), schedule, grid).coef)) if self.ode_steps > 1 else ()
            r2 = gaussian_posterior_var(schedule, t, self.data_var)
            eta = self.step_size / (1.0 / r2 + lip / noise_var)  # stable for the stiffer of the two terms
            a_s, s_s = (float(schedule.alpha(s)), float(schedule.sigma(s))) if s > 0 else (1.0, 0.0)
            rows.append(DAPSRow(ode, float(grid[-1]), r2, eta, a_s, s_s))
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), rows, len(rows) * self.nfe_per_step)

    def step(self, field, x, i, plan, state, noise):
        row, num = plan.coef[i], x.shape[0]
        with torch.no_grad():  # (1) the prior's estimate of the clean signal
            for t_j, (c_x, c_hat, _) in row.ode:
                x = c_x * x + c_hat * field(x, t_j)
            x_hat = field(x, row.t_hat)
        y = self.y.to(dtype=x.dtype, device=x.device)
        noise_var = max(self.noise_std, 1e-3) ** 2
        x0 = x_hat.clone()
        with torch.enable_grad():  # (2) Langevin on the decoupled posterior of x given x_hat and y
            for j in range(self.langevin_steps):
                x0 = x0.detach().requires_grad_(True)
                log_p = -((x0 - x_hat).pow(2).reshape(num, -1).sum(1) / (2 * row.r2)
                          + (y - self.operator(x0)).reshape(num, -1).pow(2).sum(1) / (2 * noise_var))
                grad = torch.autograd.grad(log_p.sum(), x0)[0]
                x0 = x0.detach() + row.eta * grad + (2 * row.eta) ** 0.5 * noise(j)
        # (3) re-noise to the next level
        return (row.a_s * x0 + row.s_s * noise(self.langevin_steps) if row.s_s > 0 else x0), state


def daps(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
         langevin_steps: int = 20, step_size: float = 0.5, ode_steps: int = 3, data_var: float = 1.0,
         noise: NoiseSource | None = None, device=None, dtype=torch.float32, progress: bool = False, callback=None):
    """``num`` posterior samples for ``y = A(x) + noise_std n``: the :class:`DAPS` sampler run by
    :func:`sdeflow.sample` from the prior at ``ts[0]``."""
    sampler = DAPS(operator, torch.as_tensor(y, dtype=dtype, device=device), noise_std, langevin_steps, step_size,
                   ode_steps, data_var)
    ts = torch.as_tensor(ts, dtype=torch.float64)
    noise = as_noise(noise)
    x = prior_sample(denoiser.schedule, (num, *operator.shape), t=float(ts[0]), data_std=data_var ** 0.5, noise=noise,
                     dtype=dtype, device=device)
    with torch.no_grad():
        out = sample(denoiser, sampler, ts, x, noise=noise, progress=progress, callback=callback)
    return Solution(out.x, out.nfe, "daps")


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


def _estimate_grid(schedule, t: float, steps: int) -> torch.Tensor:
    """The times of the prior's estimate from ``t``: ``steps`` levels uniform in ``log(sigma / alpha)`` from
    ``t``'s down to a hundredth of it (``steps - 1`` DDIM steps, then the denoiser at the last), or ``[t]``
    when ``steps <= 1``."""
    if steps <= 1:
        return torch.tensor([t], dtype=torch.float64)
    level = schedule.noise_to_signal(torch.tensor(t, dtype=torch.float64))
    lo = max(float(level) * 1e-2, 1e-3)
    levels = torch.logspace(torch.log10(level), torch.log10(torch.tensor(lo, dtype=torch.float64)), steps,
                            dtype=torch.float64)
    return torch.cat([torch.tensor([t], dtype=torch.float64), schedule.t_from_sigma_ratio(levels[1:])])

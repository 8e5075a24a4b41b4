"""DPnP: diffusion plug-and-play posterior sampling by alternating two exact conditional draws.

For ``y = A x + noise_std n`` and a noise level ``eta``, consider the pair ``(x, z)`` with law
``p(x) N(z; x, eta^2 I) exp(-|y - A z|^2 / (2 noise_std^2))``. DPnP alternates its two conditionals:

- **proximal consistency** (the likelihood's step): ``z ~ N(z; x, eta^2 I) N(y; A z, noise_std^2 I)``,
  a Gaussian drawn exactly for a linear operator (:meth:`~.operators.LinearOperator.conditional_draw`);
- **denoising** (the prior's step): ``x ~ p(x | z)``, the posterior of clean data given the noisy
  observation ``z = x + eta eps``. With ``sigma_t / alpha_t = eta``, ``alpha_t z`` is distributed as
  ``x_t``, so this is the reverse diffusion from time ``t`` to 0 started at ``alpha_t z``, run here
  with ``denoise_steps`` steps of a stochastic sampler (DDPM's ancestral steps by default).

The marginal of ``x`` is the prior times the likelihood smoothed by ``eta``: the posterior as
``eta -> 0``. DPnP anneals ``eta`` down the noise levels of the grid (one alternation per grid time
above 0, ``denoise_steps`` evaluations each), so the chain moves freely at high levels and ends at
the smallest. Exact in both steps for a linear operator and an exact model with fine denoising
grids; with few denoising steps the prior's step is the sampler's approximation.

Reference: Xu and Chi, "Provably Robust Score-Based Diffusion Posterior Sampling for Plug-and-Play
Image Reconstruction", NeurIPS 2024, arXiv:2403.17042.
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..grids import default_t_min, karras_grid
from ..noise import NoiseSource
from ..run import Run, Steps
from ..samplers import DDPM
from ..samplers.base import Sampler
from ..sampling import planned
from .operators import LinearOperator
from .result import Solution


def dpnp(denoiser: Denoiser, operator: LinearOperator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
         denoise_steps: int = 4, sampler: Sampler | None = None, noise: NoiseSource | None = None, device=None,
         dtype=torch.float32, cond: dict | None = None, progress: bool = False, callback=None) -> Solution:
    """``num`` posterior samples for ``y = A x + noise_std n`` with ``eta`` annealed along the noise levels
    of the decreasing grid ``ts`` (see the module docstring); ``sampler``: the stochastic sampler of the
    denoising step (default :class:`~sdeflow.samplers.DDPM`)."""
    if not getattr(operator, "linear", False):
        raise ValueError("DPnP draws its likelihood step exactly for linear operators; for a nonlinear one use daps, "
                         "dps or enkg")
    if isinstance(denoise_steps, bool) or not isinstance(denoise_steps, int) or denoise_steps < 1:
        raise ValueError(f"denoise_steps must be an integer >= 1, got {denoise_steps!r}")
    sampler = sampler or DDPM()
    if sampler.has_history or sampler.adaptive:
        raise ValueError(f"the denoising step restarts at every level: {type(sampler).__name__} carries history or "
                         "chooses its own steps (use DDPM, DDIM with eta, Euler-Maruyama)")
    sch = denoiser.schedule
    ts = torch.as_tensor(ts, dtype=torch.float64)
    levels = [float(t) for t in ts if float(sch.sigma(t)) > 0 and float(sch.alpha(t)) > 0]
    if not levels:
        raise ValueError("DPnP needs grid times with 0 < sigma and 0 < alpha (its noise levels eta = sigma / alpha)")
    y = torch.as_tensor(y, dtype=dtype, device=device)
    run = Run(denoiser, cond, noise=noise, progress=progress, total=len(levels) * denoise_steps, desc="dpnp",
              callback=callback)

    def randn(shape):
        return run.fresh(shape, dtype, device)
    eta0 = float(sch.noise_to_signal(levels[0]))
    x = eta0 * randn((num, *operator.shape))  # the prior at the top level, of mean 0 and unit scale per direction
    for k, t in enumerate(levels):
        run.step = k
        eta = float(sch.noise_to_signal(t))
        z = operator.conditional_draw(x + eta * randn(x.shape), eta * eta, y, noise_std,
                                      randn((num, *operator.out_shape)))
        # the denoising grid from t to clean data (one step from the smallest noise levels)
        grid = karras_grid(denoise_steps, sch, t_max=t) if t > 2 * default_t_min(sch) else \
            torch.tensor([t, 0.0], dtype=torch.float64)
        steps, source = Steps(sampler, planned(sampler, sch, grid), run), run.noise
        run.noise = _Level(source, k)  # the denoising steps' noise, distinct at every level
        try:
            with torch.no_grad():
                x, _ = steps.run_steps(steps.start(float(sch.alpha(t)) * z), 0, len(grid) - 1)
        finally:
            run.noise = source
        run.step = k
        run.stepped(k, t, levels[k + 1] if k + 1 < len(levels) else 0.0, x)
    run.finish(x)
    return Solution(x, run.calls, "dpnp")


class _Level(NoiseSource):
    """The source's noise for the denoising steps at level ``k``: steps numbered apart from every other
    level's and from the method's own successive draws."""

    def __init__(self, source: NoiseSource, k: int):
        self.source, self.base = source, 1_000_000 + 1000 * k

    def __call__(self, like, step, draw=0, span=None):
        return self.source(like, self.base + step, draw, span)

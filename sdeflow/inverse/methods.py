"""One entry point for every posterior sampler: ``solve(name, denoiser, operator, y, noise_std, nfe, num)``.

Denoiser-transform methods (``mmps``, ``pigdm``, ``dps``, ``ddnm``, ``diffpir``) run with any sampler
of the suite (``sampler=``, default DDIM with ``eta = 1``, the stochastic sampler these methods were
published with); the others bring their own loop. ``nfe`` is the number of network evaluations
(forward passes; the gradient methods also take one vector-Jacobian product per evaluation, MMPS
``cg_iters + 1`` of them). Each method takes its own options as keywords.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..denoisers import Denoiser
from ..grids import uniform_grid
from ..noise import GeneratorNoise
from ..sampling import prior_sample, sample
from .daps import daps
from .enkg import enkg
from .guidance import DPS, MMPS, PiGDM
from .operators import Operator
from .projection import DDNM, DiffPIR, ddrm
from .repaint import repaint
from .smc import twisted_smc
from .variational import red_diff

TRANSFORMS = {"mmps": MMPS, "pigdm": PiGDM, "dps": DPS, "ddnm": DDNM, "diffpir": DiffPIR}
LOOPS = ("ddrm", "repaint", "daps", "red-diff", "enkg", "smc")
METHODS = tuple(TRANSFORMS) + LOOPS


class Bound(Denoiser):
    """A denoiser with fixed conditioning keywords (e.g. ``label=`` of a class-conditional model)."""

    def __init__(self, denoiser: Denoiser, **cond):
        super().__init__(denoiser.schedule)
        self.inner, self.cond = denoiser, cond

    def forward(self, x_t, t, **cond):
        extra = {k: (v.expand(x_t.shape[0]) if torch.is_tensor(v) and v.ndim == 1 and v.numel() == 1 else v)
                 for k, v in self.cond.items()}
        return self.inner(x_t, t, **extra, **cond)


@dataclass
class Solution:
    x: torch.Tensor
    nfe: int
    method: str


def solve(name: str, denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, nfe: int, num: int, *,
          sampler=None, seed: int = 0, dtype=torch.float32, t_max: float | None = None, **options) -> Solution:
    """``num`` posterior samples (RED-diff: estimates) of ``x`` given ``y = A(x) + noise_std n``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    if nfe < 2:
        raise ValueError(f"nfe must be >= 2, got {nfe}")
    sched = denoiser.schedule
    t_max = t_max if t_max is not None else (1.0 if bool(sched.logsnr(1.0) > -30) else 0.999)
    g = torch.Generator().manual_seed(seed)
    if name in TRANSFORMS:
        from ..samplers import DDIM

        sampler = sampler or DDIM(eta=1.0)
        steps = max(1, nfe // sampler.nfe_per_step)
        ts = uniform_grid(steps, t_max=t_max)
        post = TRANSFORMS[name](denoiser, operator, y, noise_std, **options)
        x_init = prior_sample(sched, (num, *operator.shape), t=float(ts[0]), data_std=1.0, generator=g, dtype=dtype)
        result = sample(post, sampler, ts, x_init, noise=GeneratorNoise(g))
        return Solution(result.x, result.nfe, name)
    if name == "repaint":
        resample = options.pop("resample", 2)
        ts = uniform_grid(max(1, nfe // resample), t_max=t_max)
        x, used = repaint(denoiser, operator, y, ts, num, resample=resample, generator=g, dtype=dtype, **options)
    elif name == "ddrm":
        x, used = ddrm(denoiser, operator, y, noise_std, uniform_grid(nfe, t_max=t_max), num, generator=g, dtype=dtype,
                       **options)
    elif name == "daps":
        ode_steps = options.pop("ode_steps", 2)
        ts = uniform_grid(max(1, nfe // max(1, ode_steps)), t_max=t_max)
        x, used = daps(denoiser, operator, y, noise_std, ts, num, ode_steps=ode_steps, generator=g, dtype=dtype, **options)
    elif name == "red-diff":
        x, used = red_diff(denoiser, operator, y, noise_std, uniform_grid(nfe, t_max=t_max), num, generator=g, dtype=dtype,
                           **options)
    elif name == "enkg":
        x, used = enkg(denoiser, operator, y, noise_std, uniform_grid(nfe, t_max=t_max), num, generator=g, dtype=dtype,
                       **options)
    else:
        r = twisted_smc(denoiser, operator, y, noise_std, uniform_grid(nfe - 1, t_max=t_max), num, generator=g, dtype=dtype,
                        **options)
        x, used = r.x, r.nfe
    return Solution(x, used, name)

"""RePaint: inpainting by replacing the known entries with the noised measurement at every step.

Along a decreasing grid, each step draws the unknown entries from the ancestral (DDPM) kernel
``N(a x_t + b x_hat(x_t), v I)`` and the known entries from the forward process of the measurement,
``alpha_s y + sigma_s eps``; with ``resample = U > 1`` the merged state is pushed back to ``t`` by the
exact forward transition and the step repeated ``U`` times, which lets the generated part agree
with the known part. Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models", CVPR 2022, arXiv:2201.09865 (jump length 1).
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource
from ..run import Run
from ..sampling import prior_std
from .result import Solution
from .operators import Mask
from .smc import ancestral_coefficients


def repaint(denoiser: Denoiser, operator: Mask, y: torch.Tensor, ts: torch.Tensor, num: int, *, resample: int = 1,
            noise: NoiseSource | None = None, device=None, dtype=torch.float32, cond: dict | None = None,
            progress: bool = False, callback=None):
    """``num`` inpaintings of the entries ``operator`` does not keep, given the kept
    entries ``y`` (``(M,)`` or ``(num, M)``)."""
    if not isinstance(operator, Mask):
        raise ValueError("RePaint inpaints: it needs a Mask operator")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    sched, cond = denoiser.schedule, cond or {}
    ts = torch.as_tensor(ts, dtype=torch.float64)
    shape = operator.shape
    y = torch.as_tensor(y, dtype=dtype, device=device).expand(num, -1)
    keep = operator.adjoint(torch.ones_like(y)).bool()  # (num, *shape)
    y_full = operator.adjoint(y)
    run = Run(denoiser, cond, noise=noise, progress=progress, total=(len(ts) - 1) * resample, desc="repaint",
              callback=callback)

    def randn():
        return run.fresh((num, *shape), dtype, device)
    x = randn() * prior_std(sched, float(ts[0]), 1.0)
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        run.step = i
        ca, cb, v = ancestral_coefficients(sched, t, s)
        a_s, s_s = float(sched.alpha(s)), float(sched.sigma(s))
        for u in range(resample):
            with torch.no_grad(), run:
                x_hat = run(x, float(t))
            unknown = ca * x + cb * x_hat + (v ** 0.5) * randn()
            known = a_s * y_full + s_s * randn()
            x_s = torch.where(keep, known, unknown)
            if u < resample - 1:  # back to t by the exact forward transition
                ratio = float(sched.alpha(t)) / a_s
                x = ratio * x_s + max(float(sched.sigma(t)) ** 2 - ratio ** 2 * s_s ** 2, 0.0) ** 0.5 * randn()
            else:
                x = x_s
        run.stepped(i, t, s, x)
    run.finish(x)
    return Solution(x, run.calls, "repaint")

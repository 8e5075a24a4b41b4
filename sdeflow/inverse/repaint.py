"""RePaint: inpainting by replacing the known entries with the noised measurement at every step.

Along a decreasing grid, each DDPM step draws the state from the ancestral kernel
``N(a x_t + b x_hat(x_t), v I)`` and the known entries are then replaced by a draw of the forward process
of the measurement, ``alpha_s y + sigma_s eps``; with ``resample = U > 1`` the merged state is pushed back
to ``t`` by the exact forward transition and the step repeated ``U`` times, which lets the generated
part agree with the known part. This is :class:`~sdeflow.samplers.recurrent.Recurrent` around
:class:`~sdeflow.samplers.DDPM` with the known entries as its projection, run by :func:`sdeflow.sample`.
Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic Models", CVPR 2022,
arXiv:2201.09865 (jump length 1).
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource, as_noise
from ..samplers import DDPM
from ..samplers.recurrent import Recurrent
from ..sampling import prior_sample, sample
from .operators import Mask
from .result import Solution


class KnownEntries:
    """The projection of inpainting: the entries ``keep`` set to ``alpha_s y + sigma_s eps``."""

    def __init__(self, schedule, y_full: torch.Tensor, keep: torch.Tensor):
        self.schedule, self.y, self.keep = schedule, y_full, keep

    def __call__(self, x: torch.Tensor, s: float, noise) -> torch.Tensor:
        a_s, s_s = float(self.schedule.alpha(s)), float(self.schedule.sigma(s))
        return torch.where(self.keep, a_s * self.y + s_s * noise(), x)


def repaint(denoiser: Denoiser, operator: Mask, y: torch.Tensor, ts: torch.Tensor, num: int, *, resample: int = 1,
            noise: NoiseSource | None = None, device=None, dtype=torch.float32, cond: dict | None = None,
            progress: bool = False, callback=None):
    """``num`` inpaintings of the entries ``operator`` does not keep, given the kept
    entries ``y`` (``(M,)`` or ``(num, M)``)."""
    if not isinstance(operator, Mask):
        raise ValueError("RePaint inpaints: it needs a Mask operator")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    sched = denoiser.schedule
    ts = torch.as_tensor(ts, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=dtype, device=device).expand(num, -1)
    keep = operator.adjoint(torch.ones_like(y)).bool()  # (num, *shape)
    noise = as_noise(noise)
    x = prior_sample(sched, (num, *operator.shape), t=float(ts[0]), data_std=1.0, noise=noise, dtype=dtype, device=device)
    sampler = Recurrent(DDPM(), resample, project=KnownEntries(sched, operator.adjoint(y), keep))
    with torch.no_grad():
        out = sample(denoiser, sampler, ts, x, cond=cond, noise=noise, progress=progress, callback=callback)
    return Solution(out.x, out.nfe, "repaint")

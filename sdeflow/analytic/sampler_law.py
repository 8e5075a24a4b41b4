"""The exact law of a sampler's output on Gaussian data.

With one Gaussian component of diagonal covariance, ``x_hat`` is affine in ``x_t`` coordinate by
coordinate, so every sampler whose steps are affine in the state, ``x_hat`` and the noise (all of
sdeflow's fixed-grid samplers except those that couple the batch) maps its input and its noise
draws affinely to its output: ``out = m + a (x_init - E x_init) + sum_k b_k z_k`` per coordinate.
Running the sampler on a batch of probes (the mean input with no noise, a unit shift of the input,
and one unit noise draw at a time) recovers ``m``, ``a`` and every ``b_k`` exactly, and with them
the output's exact mean and variance. Weak errors are then measured without Monte Carlo noise.
"""

from __future__ import annotations

import math

import torch

from ..noise import NoiseSource
from .covariance import Diagonal
from .mixture import GaussianMixture


class _Recorder(NoiseSource):
    def __init__(self):
        self.keys: dict[tuple[int, int], int] = {}

    def __call__(self, like, step, draw=0, span=None):
        self.keys.setdefault((step, draw), len(self.keys))
        return torch.zeros_like(like)


class _Probe(NoiseSource):
    def __init__(self, keys):
        self.keys = keys

    def __call__(self, like, step, draw=0, span=None):
        out = torch.zeros_like(like)
        out[2 + self.keys[(step, draw)]] = 1.0
        return out


def gaussian_output_law(mixture: GaussianMixture, sampler, schedule, ts) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-coordinate mean and variance of ``sample(...)``'s output when the data is
    ``mixture`` (one component, diagonal covariance) and ``x_init`` is drawn exactly from ``p_t``
    at ``t = ts[0]``. Float64 throughout."""
    from ..sampling import sample

    if mixture.num_components != 1 or not isinstance(mixture.cov, Diagonal):
        raise ValueError("the exact output law needs one Gaussian component with a diagonal covariance")
    if sampler.couples_batch:
        raise ValueError(f"{type(sampler).__name__} couples the samples of a batch; its output law is not "
                         "the law of an affine map of independent inputs")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    t0 = float(ts[0])
    a0, s0 = float(schedule.alpha(t0)), float(schedule.sigma(t0))
    mu, var = mixture.means[0], mixture.cov.var[0]
    mean0, var0 = a0 * mu, a0 * a0 * var + s0 * s0
    den = mixture.denoiser(schedule)
    rec = _Recorder()
    sample(den, sampler, ts, mean0[None].clone(), noise=rec, check_finite=False)
    x = mean0.expand(2 + len(rec.keys), -1).clone()
    x[1] += 1.0
    out = sample(den, sampler, ts, x, noise=_Probe(rec.keys), check_finite=False).x
    m, gain, b = out[0], out[1] - out[0], out[2:] - out[0]
    return m, gain * gain * var0 + (b * b).sum(0)


def gaussian_w2(mean1, var1, mean2, var2) -> float:
    """Wasserstein-2 distance between two Gaussians with diagonal covariances."""
    return math.sqrt(float(((mean1 - mean2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum()))

"""Distances between sample sets and exact answers, used by the demo, tests and benchmarks."""

from __future__ import annotations

import math

import torch


def rms_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root mean over samples of the squared per-sample Euclidean error."""
    d = x.reshape(x.shape[0], -1).to(torch.float64) - ref.reshape(ref.shape[0], -1).to(torch.float64)
    return float(d.pow(2).sum(1).mean().sqrt())


def median_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Median over samples of the per-sample Euclidean error (robust to a few mode switches)."""
    d = x.reshape(x.shape[0], -1).to(torch.float64) - ref.reshape(ref.shape[0], -1).to(torch.float64)
    return float(d.norm(dim=1).median())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equally sized sample sets ``(N, D)``: the root
    mean over random unit directions of the squared 1-D W2 between the projected samples."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"sliced Wasserstein needs equal sample sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float((px - py).pow(2).mean().sqrt())


def frechet_distance(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Frechet distance (2-Wasserstein between Gaussians) from the samples' mean and covariance to
    an exact ``mean`` ``(D,)`` and covariance ``(D, D)``: ``sqrt(|m - mean|^2 + tr(C + cov - 2 (cov^1/2 C
    cov^1/2)^1/2))``. The sample moments carry a floor of order ``D / sqrt(N)``."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    mean, cov = mean.to(torch.float64), cov.to(torch.float64)
    if x.shape[0] < 2 or mean.shape != x.shape[1:] or cov.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"need samples (N >= 2, D), mean (D,) and cov (D, D); got {tuple(x.shape)}, "
                         f"{tuple(mean.shape)}, {tuple(cov.shape)}")
    m = x.mean(0)
    c = torch.cov(x.T).reshape(x.shape[1], x.shape[1])

    def sqrtm(a):
        w, v = torch.linalg.eigh((a + a.T) / 2)
        return (v * w.clamp_min(0).sqrt()) @ v.T

    root = sqrtm(cov)
    cross = torch.linalg.eigvalsh((root @ c @ root + (root @ c @ root).T) / 2).clamp_min(0).sqrt().sum()
    d2 = (m - mean).pow(2).sum() + torch.trace(c) + torch.trace(cov) - 2 * cross
    return float(d2.clamp_min(0).sqrt())


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB for data in a range of width ``data_range`` ([-1, 1]: 2)."""
    mse = float((x - ref).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-nearest-neighbour precision and recall of two feature sets ``(N, D)`` (Kynkaanniemi et al.,
    2019, arXiv:1904.06991): each set's manifold is the union of balls around its points reaching
    their ``k``-th nearest neighbour in the set; precision is the fraction of ``fake`` inside the real
    manifold (fidelity), recall the fraction of ``real`` inside the fake manifold (coverage)."""
    real = real.reshape(real.shape[0], -1).to(torch.float64)
    fake = fake.reshape(fake.shape[0], -1).to(torch.float64)
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must lie in [1, {min(real.shape[0], fake.shape[0]) - 1}], got {k}")

    def radii(x):
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # the 1st nearest is the point itself

    def covered(points, centres, r):
        return float((torch.cdist(points, centres) <= r[None, :]).any(dim=1).double().mean())

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def squared_frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared Frechet distance (the FID convention) between the Gaussians fitted to two feature sets."""
    b = b.double()
    return frechet_distance(a, b.mean(0), torch.cov(b.T)) ** 2


def real_split(labels: torch.Tensor, seed: int = 1):
    """Two class-balanced halves of a labelled set (indices)."""
    g = torch.Generator().manual_seed(seed)
    a, b = [], []
    for k in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2:])
    return torch.cat(a), torch.cat(b)

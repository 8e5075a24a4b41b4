"""Distances between sample sets and exact answers, used by the demo, tests and benchmarks."""

from __future__ import annotations

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

"""2-D toy distributions, generated from a seed (no files): two moons, a swiss roll, eight Gaussians
on a circle and a checkerboard. Each returns ``(n, 2)`` float32 at roughly unit scale."""

from __future__ import annotations

import math

import torch

from ..names import NameTable


def moons(n: int, seed: int = 0, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles (radius 1, the second shifted by (1, -0.5)) with Gaussian jitter
    ``noise``, centred and scaled to a standard deviation of about 1."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.rand(n, generator=g) < 0.5
    a = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], 1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (pts / 0.7).float()


def swiss_roll(n: int, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """The 2-D swiss roll ``r(a) (cos a, sin a)`` with ``a`` in [1.5 pi, 4.5 pi], ``r = a / (4.5 pi)``
    times 2, plus jitter."""
    g = torch.Generator().manual_seed(seed)
    a = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([a * torch.cos(a), a * torch.sin(a)], 1) / (2.25 * math.pi)
    return (pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def eight_gaussians(n: int, seed: int = 0, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    """Equal mixture of eight Gaussians with standard deviation ``std`` on a circle of ``radius``."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(8, (n,), generator=g).double()
    centres = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard over [-2, 2]^2."""
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    y = torch.rand(n, generator=g, dtype=torch.float64) + torch.randint(2, (n,), generator=g).double() * 2 - 2
    y = y + (torch.floor(x) % 2)  # shift every other column by one square
    return torch.stack([x, y], 1).float()


TOYS = NameTable("toy dataset", {
    "moons": (moons, "two interleaved half circles"),
    "swiss-roll": (swiss_roll, "a 2-D swiss roll"),
    "eight-gaussians": (eight_gaussians, "eight Gaussians on a circle"),
    "checkerboard": (checkerboard, "a checkerboard of uniform squares"),
})

"""Noise sources: randomness is injected into samplers, never drawn from a global RNG in a step.

A source is called as ``source(like, step, draw=0)`` and returns standard normal noise shaped and
typed like ``like``. ``step`` is the index of the sampling step (``-1`` for the prior draw) and
``draw`` distinguishes several draws within one step.
"""

from __future__ import annotations

from typing import Sequence

import torch

_MASK = (1 << 63) - 1


def _mix(seed: int, step: int, draw: int) -> int:
    """Decorrelate ``(seed, step, draw)`` into one 63-bit generator seed (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + (step + 2) * 0xBF58476D1CE4E5B9 + (draw + 1) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


class NoiseSource:
    """Base class."""

    def __call__(self, like: torch.Tensor, step: int, draw: int = 0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class SeededNoise(NoiseSource):
    """Per-sample seeds: sample ``b``'s noise depends only on ``seeds[b]``, the step and the draw,
    so results do not depend on the batch composition, and calling twice gives the same noise."""

    def __init__(self, seeds: Sequence[int] | torch.Tensor | int):
        if isinstance(seeds, int):
            seeds = [seeds]
        self.seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]

    def __call__(self, like, step, draw=0):
        if like.shape[0] != len(self.seeds):
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {like.shape[0]}")
        out = torch.empty(like.shape, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
        for b, seed in enumerate(self.seeds):
            g = torch.Generator().manual_seed(_mix(seed, step, draw))
            out[b] = torch.randn(like.shape[1:], generator=g, dtype=out.dtype)
        return out.to(device=like.device, dtype=like.dtype)


class GeneratorNoise(NoiseSource):
    """Sequential draws from a ``torch.Generator`` (the global RNG when ``None``)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, like, step, draw=0):
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)

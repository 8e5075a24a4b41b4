"""Measurement operators by name, for the command line and the benchmarks (``sdeflow restore --operator``)."""

from __future__ import annotations

import math

import torch

from ..names import NameTable
from .operators import Blur, Downsample, Identity, Mask, Operator, RandomProjection


def _inpaint_box(shape, seed=0) -> Mask:
    """A mask hiding a centred box that covers the middle half of each side."""
    mask = torch.ones(shape, dtype=torch.bool)
    h, w = shape[-2:]
    mask[..., h // 4:h - h // 4, w // 4:w - w // 4] = False
    return Mask(mask)


def _named():
    return NameTable("operator", {
        "inpaint": (_inpaint_box, "a centred box covering half of each side hidden"),
        "inpaint-random": (lambda shape, seed=0: Mask(torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3),
                           "30% of the entries kept, at random"),
        "superres": (lambda shape, seed=0: Downsample(shape, 2), "2x super-resolution (block averages)"),
        "blur": (lambda shape, seed=0: Blur.gaussian(shape, std=1.0), "Gaussian blur of std 1"),
        "denoise": (lambda shape, seed=0: Identity(shape), "the identity (denoising)"),
        "compressed-sensing": (lambda shape, seed=0: RandomProjection(shape, max(1, math.prod(shape) // 4), seed=seed),
                               "a random projection to a quarter of the dimensions"),
    })


#: Measurement operators by name: ``(sample shape, seed) -> Operator`` (a :class:`~sdeflow.names.NameTable`).
OPERATORS = _named()


def make_operator(name: str, shape: tuple[int, ...], seed: int = 0) -> Operator:
    """A measurement operator by name for samples of ``shape``."""
    return OPERATORS.lookup(name)(shape, seed)

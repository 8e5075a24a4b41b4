"""Exact categorical draws.

A categorical draw from probabilities ``p`` (or logits) decides which token a position takes. Drawn by the
Gumbel-max race in float32, ``argmax_v (log p_v + G_v)`` with ``G_v = -log(-log u_v)``, rare tokens come out
too rarely: float32 uniforms cannot get closer to 1 than ``2^-24``, so ``G`` is capped at about
``log(2^24) = 16.6`` and a token whose log-probability trails the largest by more than that can never win.
More generally a token of probability ``p`` against a largest probability ``p_max`` is drawn at
``x / (e^x - 1)`` of its rate, ``x = p_max / (p 2^24)`` (the share of the largest token's race it can still
win); masked-diffusion samplers that draw in float32 therefore lower the effective temperature.

:func:`draw` is exact by default: the inverse CDF of the float64 probabilities against one float64 uniform
per position (53 bits; relative bias below ``p_max / (p 2^53)``). ``method="gumbel"`` races in the dtype
asked for (``float32`` reproduces the biased draws, for comparison).

Reference: Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit
Inaccurate Categorical Sampling", 2024, arXiv:2409.02908.
"""

from __future__ import annotations

import torch

METHODS = ("inverse-cdf", "gumbel")


def uniforms(shape, generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Uniforms on (0, 1) of ``dtype`` (drawn on the CPU from ``generator``, then moved)."""
    u = torch.rand(shape, generator=generator, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    return u.clamp_min(tiny).to(device) if device is not None else u.clamp_min(tiny)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None, *, method: str = "inverse-cdf",
         dtype: torch.dtype = torch.float64, logits: bool = False) -> torch.Tensor:
    """One token per row of ``probs`` (``(..., V)``, rows summing to 1; or log-probabilities with ``logits=True``):
    a long tensor of shape ``probs.shape[:-1]``.

    ``method="inverse-cdf"`` (default): the first ``v`` with ``cumsum(p)_v > u`` for one uniform ``u``, all
    in ``dtype`` (float64 by default). ``method="gumbel"``: ``argmax(log p + G)`` with Gumbel noise drawn in
    ``dtype`` (``torch.float32``: the biased draws many samplers make)."""
    if method not in METHODS:
        raise ValueError(f"unknown categorical method {method!r}; allowed: {', '.join(METHODS)}")
    if dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    device = probs.device
    if method == "gumbel":
        logp = probs.to(dtype) if logits else torch.log(probs.to(dtype))
        u = uniforms(probs.shape, generator, dtype, device)
        return torch.argmax(logp - torch.log(-torch.log(u)), dim=-1)
    p = torch.softmax(probs.to(dtype), -1) if logits else probs.to(dtype)
    cdf = torch.cumsum(p, -1)
    u = uniforms(probs.shape[:-1], generator, dtype, device) * cdf[..., -1]  # rows that sum to 1 - eps stay exact
    idx = torch.searchsorted(cdf, u[..., None], right=True)[..., 0]
    return idx.clamp(max=probs.shape[-1] - 1)


def float32_race_bias(p: float, p_max: float) -> float:
    """The rate at which a float32 Gumbel race draws a token of probability ``p`` beside one of ``p_max``,
    relative to ``p``: ``x / (e^x - 1)`` with ``x = p_max / (p 2^24)`` (1: unbiased)."""
    import math

    x = p_max / (p * 2.0 ** 24)
    return 1.0 if x == 0 else x / math.expm1(x)


def exact_rates(p: torch.Tensor, method: str = "inverse-cdf", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The exact probability with which :func:`draw` returns each token, over every uniform the generator can
    return in ``dtype`` (multiples of ``2^-bits``, 53 bits for float64, 24 for float32; 0 clamped to the
    smallest positive number). ``method="gumbel"`` is computed for two tokens (the race of a rare token
    against the largest) and float32 only, by enumerating the ``2^24`` uniforms of the rare token."""
    bits = {torch.float64: 53, torch.float32: 24}.get(dtype)
    if bits is None:
        raise ValueError(f"exact rates are computed for float64 and float32, got {dtype}")
    p = torch.as_tensor(p, dtype=torch.float64)
    if method == "inverse-cdf":  # token v gets the grid points u with cdf_{v-1} <= u < cdf_v
        edges = torch.floor(torch.cumsum(p, 0) * 2.0 ** bits)
        return torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), edges])) / 2.0 ** bits
    if method != "gumbel" or p.numel() != 2 or dtype != torch.float32:
        raise ValueError("the race's exact rates are computed for two tokens in float32")
    u = (torch.arange(2 ** bits, dtype=torch.float64) / 2.0 ** bits).to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny)
    g1 = -torch.log(-torch.log(u))                                  # the rare token's noise, as the race computes it
    lp = torch.log(p.to(torch.float32))
    bound = (lp[1] + g1 - lp[0]).double()                           # the other token loses where G(u0) < bound
    lose = torch.clamp(torch.ceil(torch.exp(-torch.exp(-bound)) * 2.0 ** bits), 0, 2 ** bits) / 2.0 ** bits
    rare = float(lose.mean())
    return torch.tensor([1 - rare, rare], dtype=torch.float64)

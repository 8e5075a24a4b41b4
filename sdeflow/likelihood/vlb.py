"""The variational bound of a discrete-time (DDPM) model: an upper bound on ``-log p(x)`` (see
:func:`discrete_vlb`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..denoisers import Denoiser
from ..sampling import check_denoiser, prior_std
from ..shapes import check_batch


@dataclass
class VariationalBound:
    """``bound``: ``(B,)`` upper bound on ``-log p(x)`` in nats (the discrete-time model's variational
    bound, estimated with ``draws`` noise draws per term); ``stderr``: its standard error over the draws
    (NaN for one draw); ``prior``, ``diffusion``, ``decoder``: the three parts; ``nfe``: evaluations."""

    bound: torch.Tensor
    stderr: torch.Tensor
    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor
    nfe: int


def discrete_vlb(denoiser: Denoiser, x: torch.Tensor, *, times=None, draws: int = 1, cond: dict | None = None,
                 generator: torch.Generator | None = None, data_std: float = 0.0) -> VariationalBound:
    """The variational bound of the discrete-time (DDPM) model on ``times``, an upper bound on ``-log p(x)``.

    The model steps from ``tau_k`` to ``tau_{k-1}`` with the Gaussian posterior ``q(x_s | x_t, x_hat)``
    (DDPM's ``fixed_small`` variance), starts from ``N(0, (alpha^2 data_std^2 + sigma^2) I)`` at the largest
    time and decodes at the smallest with ``N(x_hat, (sigma / alpha)^2 I)``. With ``snr = (alpha / sigma)^2``
    the bound is

        KL(q(x_T | x) || prior) + sum_k (snr(tau_{k-1}) - snr(tau_k)) / 2 E||x - x_hat(x_{tau_k})||^2
        + D / 2 log(2 pi / snr(tau_1)) + snr(tau_1) / 2 E||x - x_hat(x_{tau_1})||^2,

    each expectation over ``x_{tau_k} ~ q(x_{tau_k} | x)`` (one draw per term and per ``draws``). For an
    exact ``x_hat`` the bound falls as the grid is refined (the denoising error grows with the noise).
    ``times`` default: every training step of a :class:`~sdeflow.schedules.DiscreteVP`.

    Reference: Ho et al., "Denoising Diffusion Probabilistic Models", 2020; Kingma et al.,
    "Variational Diffusion Models", 2021.
    """
    from ..schedules import DiscreteVP

    check_denoiser(denoiser)
    sch = denoiser.schedule
    check_batch(x, "x")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    if times is None:
        if not isinstance(sch, DiscreteVP):
            raise ValueError("give times= for a continuous schedule (the default is every training step of a DiscreteVP)")
        times = sch.t_from_index(torch.arange(sch.num_steps, dtype=torch.float64))
    tau = torch.as_tensor(times, dtype=torch.float64).flatten().sort().values
    if tau.numel() < 1 or bool((tau[1:] == tau[:-1]).any()) or float(tau[0]) < max(sch.t_min, 0.0) or float(tau[-1]) > 1:
        raise ValueError("times must be distinct, within the schedule's domain [t_min, 1]")
    a, s = sch.alpha(tau), sch.sigma(tau)
    if float(s[0]) <= 0 or float(a[-1]) < 0:
        raise ValueError("the smallest time needs sigma > 0 (the decoder's variance is (sigma / alpha)^2)")
    snr = (a / s) ** 2
    weights = torch.cat([snr[:1], snr[:-1] - snr[1:]])  # the decoder's snr(tau_1), then the steps' snr drops
    b, d = x.shape[0], x[0].numel()
    flat = x.reshape(b, -1).to(torch.float64)
    a_T, s_T, std = float(a[-1]), float(s[-1]), prior_std(sch, float(tau[-1]), data_std)
    prior = 0.5 * d * (s_T ** 2 / std ** 2 - 1 + 2 * math.log(std / s_T)) + (a_T * flat).pow(2).sum(1) / (2 * std ** 2)
    decoder_const = 0.5 * d * math.log(2 * math.pi / float(snr[0]))
    totals = torch.zeros(draws, b, dtype=torch.float64, device=x.device)
    nfe = 0
    with torch.no_grad():
        for k in range(tau.numel()):
            t = float(tau[k])
            for j in range(draws):
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                x_hat = denoiser(float(a[k]) * x + float(s[k]) * z, t, **(cond or {}))
                err = (x_hat - x).reshape(b, -1).to(torch.float64).pow(2).sum(1)
                totals[j] += 0.5 * float(weights[k]) * err
            nfe += draws
    diffusion = totals.mean(0)
    stderr = totals.std(0) / math.sqrt(draws) if draws > 1 else torch.full_like(diffusion, math.nan)
    decoder = torch.full_like(diffusion, decoder_const)
    return VariationalBound(prior + diffusion + decoder, stderr, prior, diffusion, decoder, nfe)

"""Reward fine-tuning: tilt a model's samples towards high reward, with a KL to the base model.

The target of KL-regularised reward maximisation, ``max_q E_q[r(x)] - lam KL(q || p_base)``, is the
tilted distribution ``p_base(x) exp(r(x) / lam) / Z``. sdeflow reaches it by gradients through a
stochastic sampler whose KL to the base model is known exactly: the ancestral chain on a grid
``t_0 > t_1 > ... > t_n > 0``, each step drawing ``x_s`` from the forward process's posterior given
``x_0 = x_hat(x_t, t)``,

    a = alpha_t / alpha_s,  c2 = sigma_t^2 - a^2 sigma_s^2,
    x_s ~ N( (a sigma_s^2 / sigma_t^2) x_t + (alpha_s c2 / sigma_t^2) x_hat,  (c2 sigma_s^2 / sigma_t^2) I ).

Two such chains that differ only in ``x_hat`` have Gaussian steps of equal variance, so the KL of the
whole chain of the model to the base is exactly ``E sum_i |k_i (x_hat - x_hat_base)|^2 / (2 v_i)``
(``k_i = alpha_s c2 / sigma_t^2``, ``v_i`` the step variance) along the model's own trajectories.
:func:`reward_finetune` maximises ``E[r(x_n)] - lam KL_chain`` by the pathwise gradient through the
sampled chain (reparameterised noise; DRaFT's gradient with the KL added).

Why the answer is the exact tilt: the optimum over chains is ``p_base(chain) exp(r(x_n)/lam) / Z``;
its ``x_n``-marginal is the tilted base marginal when the base chain is *memoryless*, its output
independent of its start. That holds when ``alpha(t_0) = 0`` (a flow started at ``t = 1``): the
first step forgets ``x_{t_0}`` (it draws ``alpha_s x_hat + noise`` with the base's ``x_hat`` at pure
noise, the data mean). With ``alpha(t_0) > 0`` (VP schedules stop at ``alpha(1) ~ 1e-2``) the tilt
is slightly biased by the start. A finite chain restricts each step to a Gaussian with the base's
variance, so the optimum is reached as the steps grow. Its ``x_n`` lives at the noise level of
``t_n``; :meth:`~sdeflow.analytic.GaussianMixture.noised` and
:meth:`~sdeflow.analytic.GaussianMixture.tilted` give the exact target there for mixtures.

References: Clark, Vicol, Swersky, Fleet, "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards" (DRaFT), 2023, arXiv:2309.17400; Domingo-Enrich, Drozdzal, Karrer, Chen, "Adjoint Matching:
Fine-tuning Flow and Diffusion Generative Models with Memoryless Stochastic Optimal Control", 2024,
arXiv:2409.08861 (the memoryless condition); Uehara et al., "Fine-Tuning of Continuous-Time
Diffusion Models as Entropy-Regularized Control", 2024, arXiv:2402.15194.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .denoisers import Denoiser
from .grids import check_grid
from .noise import GeneratorNoise
from .run import Run
from .samplers.engine import step_infos
from .samplers.sde import exact_sde_step
from .sampling import check_denoiser


@dataclass
class Chain:
    """``x``: the chain's output at ``ts[-1]``; ``kl``: per sample, the chain's KL to the base
    (zeros without a base); ``nfe``: model evaluations (the base's as many again)."""

    x: torch.Tensor
    kl: torch.Tensor
    nfe: int


def ancestral_chain(model: Denoiser, ts, x: torch.Tensor, *, base: Denoiser | None = None, cond: dict | None = None,
                    generator: torch.Generator | None = None) -> Chain:
    """Run the ancestral chain (module docstring) of ``model`` from ``x`` at ``ts[0]``, differentiably
    (the noise is drawn from ``generator`` and enters additively), accumulating the exact KL of the
    chain to ``base``'s chain when given. ``ts`` must end above 0 (the chain's steps need noise)."""
    check_denoiser(model)
    ts = check_grid(ts)
    if float(ts[-1]) <= 0:
        raise ValueError("the ancestral chain's grid must end above t = 0 (every step adds noise); end it at the "
                         "smallest noise level, e.g. grids.logsnr_grid(n, schedule, denoise_to_zero=False)")
    sch = model.schedule
    if base is not None and type(base.schedule) is not type(sch):
        raise ValueError("model and base must share a schedule")
    cond = cond or {}
    kl = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    times = ts.tolist()
    # DDPM's posterior step with its small variance is the exact SDE step at eta = 1
    steps = [exact_sde_step(v.a_t, v.s_t, v.a_s, v.s_s, 1.0) for v in step_infos(sch, ts)]
    run = Run(model, cond, noise=GeneratorNoise(generator))
    with run:
        for i, (c_x, k, std) in enumerate(steps):
            run.step = i
            x_hat = run(x, times[i])
            if base is not None:  # differentiated through x too: the KL is a function of the model's trajectory
                ref = base(x, times[i], **cond)
                kl = kl + (k / std) ** 2 / 2 * (x_hat - ref).flatten(1).pow(2).sum(1)
            x = c_x * x + k * x_hat + std * run.step_noise(x)()
            run.stepped(i, times[i], times[i + 1], x)
    run.finish(x)
    return Chain(x, kl, run.calls)


def reward_finetune(model: Denoiser, base: Denoiser, reward: Callable[[torch.Tensor], torch.Tensor], ts,
                    shape: tuple[int, ...], *, iterations: int = 1000, batch_size: int = 256, kl_weight: float = 1.0,
                    lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None, cond: dict | None = None,
                    generator: torch.Generator | None = None, callback=None) -> list[dict]:
    """Fine-tune ``model``'s parameters to maximise ``E[reward(x)] - kl_weight * KL_chain(model || base)``
    by the pathwise gradient through :func:`ancestral_chain` (the target: ``p_base exp(reward / kl_weight)``).

    Args:
        model: the trainable denoiser (its ``parameters()`` are optimised; start it at the base).
        base: the frozen base model (its parameters are frozen; gradients flow through its input).
        reward: ``(B, *shape) -> (B,)``, differentiable.
        ts: decreasing grid ending above 0; start it where ``alpha = 0`` (a flow at ``t = 1``) for an
            exact tilt (module docstring).
        shape: one sample's shape; the chains start from ``N(0, sigma(ts[0])^2 I)``, exact where
            ``alpha(ts[0]) = 0`` and the usual approximation of ``p_{t_0}`` elsewhere.
        iterations, batch_size, lr: Adam steps, chains per step and learning rate (or pass ``optimizer``).
        callback: ``callback(i, record)`` after each step.

    Returns one record per step: ``reward`` (mean), ``kl`` (mean chain KL) and ``objective``.
    """
    check_denoiser(base)
    if not callable(reward):
        raise TypeError(f"reward must be a function of the samples, got {type(reward).__name__}")
    if not (isinstance(kl_weight, (int, float)) and math.isfinite(kl_weight) and kl_weight > 0):
        raise ValueError(f"kl_weight must be a positive number, got {kl_weight!r}")
    for name, v in (("iterations", iterations), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params and optimizer is None:
        raise ValueError("the model has no trainable parameters")
    ts = check_grid(ts)
    opt = optimizer or torch.optim.Adam(params, lr=lr)
    sigma0 = float(model.schedule.sigma(float(ts[0])))
    base.requires_grad_(False)
    dtype = params[0].dtype if params else torch.float32
    history = []
    for i in range(iterations):
        x = sigma0 * torch.randn((batch_size, *shape), generator=generator, dtype=dtype)
        chain = ancestral_chain(model, ts, x, base=base, cond=cond, generator=generator)
        r = reward(chain.x)
        if r.shape != (batch_size,):
            raise ValueError(f"reward must return one value per sample, shape ({batch_size},), got {tuple(r.shape)}")
        objective = (r - kl_weight * chain.kl).mean()
        opt.zero_grad(set_to_none=True)
        (-objective).backward()
        opt.step()
        record = {"reward": float(r.detach().mean()), "kl": float(chain.kl.detach().mean()),
                  "objective": float(objective.detach())}
        history.append(record)
        if callback is not None:
            callback(i, record)
    return history

"""Samplers of token diffusion: from all-noise at ``t = 1`` to clean tokens at ``t = 0``.

A model is ``model(x_t, t) -> (B, L, V)`` clean-token probabilities (:class:`~sdeflow.discrete.exact.TokenOracle`
or a network's softmax). Every step of a grid draws independently per position given ``x_t``:

- :func:`ancestral` (D3PM / MDLM): ``x_s ~ sum_{x0} q(x_s | x_t, x0) p(x0 | x_t)`` per position, the exact
  reverse kernel of one step given the model. On the masked process a masked token stays masked with
  probability ``(1 - alpha_s) / (1 - alpha_t)`` and is otherwise drawn from the model; a step in which no
  token changed reuses the model's output (``cache=True``, MDLM's caching), so NFE counts distinct states.
- :func:`dfm_euler`: discrete flow matching's Euler step, the first-order version of the same move;
- :func:`tau_leaping`: the reverse chain's rates (from the concrete score) frozen over each step;
- :func:`first_hitting` (masked process): the time of the next unmasking is drawn exactly (with ``n``
  tokens masked at ``t``, the first of their independent clocks rings where
  ``((1 - alpha_s) / (1 - alpha_t))^n = u``), one masked position chosen uniformly is drawn from the
  model, and so on: ``L`` evaluations, and with the exact model its output law is the data's.

Draws are exact by default (:func:`~sdeflow.discrete.categorical.draw`, float64 inverse CDF);
``method="gumbel", dtype=torch.float32`` gives the biased draws of float32 samplers.

References: Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces", 2021,
arXiv:2107.03006; Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
arXiv:2406.07524; Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
Exploit Inaccurate Categorical Sampling", 2024, arXiv:2409.02908.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .categorical import draw, uniforms
from .processes import Masked, TokenProcess


@dataclass
class TokenResult:
    """Clean tokens ``(B, L)`` and the number of model evaluations the run took."""

    x: torch.Tensor
    nfe: int


def step_probs(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """``p(x_s | x_t)`` per position, ``(B, L, S)``: ``sum_{x0} q(x_s | x_t, x0) p(x0 | x_t)`` with
    ``q(x_s | x_t, x0) = Q_{t|s}[x_s, x_t] Q_s[x0, x_s] / Q_t[x0, x_t]`` (``probs``: ``p(x0 | x_t)``, ``(B, L, V)``)."""
    Qs, Qt, Qts = process.kernel(s), process.kernel(t), process.transition(s, t)
    ratio = probs / Qt[:, x_t].permute(1, 2, 0).clamp_min(1e-300)              # (B, L, V): p(x0) / Q_t[x0, x_t]
    back = Qts[:, x_t].permute(1, 2, 0)                                         # (B, L, S): Q_{t|s}[x_s, x_t]
    out = back * torch.einsum("blv,vs->bls", ratio, Qs)
    return out / out.sum(-1, keepdim=True)


def euler_probs(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """Discrete flow matching's Euler step from ``t`` to ``s`` per position, ``(B, L, S)``, as flow_matching's
    ``MixtureDiscreteEulerSolver`` takes it: a target ``y ~ p(x0 | x_t)``; where ``y != x_t`` the token jumps
    to it with probability ``1 - exp(-(t - s) r)``, ``r = -alpha'(t) / (1 - alpha(t))`` the mixture path's
    rate. The last step (to ``s = 0``) takes the target itself."""
    out = torch.zeros(*x_t.shape, process.states, dtype=torch.float64)
    out[..., :process.vocab] = probs
    if s == 0:
        return out
    rate = float(-process.schedule.d_alpha(t) / (1.0 - process.schedule.alpha(t)))
    jump = -math.expm1(-(t - s) * rate)
    out = jump * out
    stay = 1.0 - out.sum(-1, keepdim=True)  # x_t keeps 1 - jump, besides jump p(x_t) when it is its own target
    return out.scatter_add_(-1, x_t[..., None], stay)


def leap_probs(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """A tau-leaping step of the reverse chain from ``t`` to ``s`` per position, ``(B, L, S)``: the reverse rates
    ``R(x -> y) = beta(t) pi(x) ratio(y)`` (``beta = -alpha'/alpha`` the forward rate, ``ratio`` SEDD's concrete
    score, :func:`~sdeflow.discrete.conversions.concrete_score`) frozen over the step, the first jump taken
    with probability ``1 - exp(-(t - s) sum_y R)`` to ``y`` in proportion to ``R``. The last step (to
    ``s = 0``) draws from the model. On the masked process this is :func:`euler_probs`' rule. From
    ``alpha(t) = 0`` the masked process' rates are the limit ``-alpha' / (1 - alpha) p(y | x_t)``
    (:func:`euler_probs`), and the uniform process' are infinite and uniform, a step that leaves its law as it is."""
    from .conversions import concrete_score

    if s == 0 or (float(process.schedule.alpha(t)) == 0.0 and isinstance(process, Masked)):
        return euler_probs(process, x_t, probs, t, s)
    if float(process.schedule.alpha(t)) == 0.0:
        return torch.zeros(*x_t.shape, process.states, dtype=torch.float64).scatter_(-1, x_t[..., None], 1.0)
    beta = float(-process.schedule.d_alpha(t) / process.schedule.alpha(t))
    rates = beta * process.noise_law()[x_t][..., None] * concrete_score(process, x_t, probs, t)
    rates = rates.scatter(-1, x_t[..., None], 0.0)
    total = rates.sum(-1, keepdim=True)
    jump = -torch.expm1(-(t - s) * total)
    out = torch.where(total > 0, jump * rates / total.clamp_min(1e-300), torch.zeros_like(rates))
    return out.scatter_add_(-1, x_t[..., None], 1.0 - out.sum(-1, keepdim=True))


def tau_leaping(model, process: TokenProcess, ts, batch: int, length: int, **options) -> TokenResult:
    """Tau-leaping on the reverse chain (:func:`leap_probs`)."""
    return ancestral(model, process, ts, batch, length, step=leap_probs, **options)


def all_noise(process: TokenProcess, batch: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws of ``x_1``: every token masked, or uniform."""
    if isinstance(process, Masked):
        return torch.full((batch, length), process.mask, dtype=torch.long)
    return torch.randint(process.vocab, (batch, length), generator=generator)


def ancestral(model, process: TokenProcess, ts, batch: int, length: int, *, generator: torch.Generator | None = None,
              x_init: torch.Tensor | None = None, cache: bool = True, method: str = "inverse-cdf",
              dtype: torch.dtype = torch.float64, step=step_probs) -> TokenResult:
    """The exact one-step reverse kernel along the decreasing grid ``ts`` (from 1 to 0); ``step=euler_probs``
    takes discrete flow matching's Euler steps instead (:func:`dfm_euler`). ``x_init``: a partially noised
    start (infilling: the known tokens given, the rest masked)."""
    ts = [float(v) for v in torch.as_tensor(ts, dtype=torch.float64)]
    x = all_noise(process, batch, length, generator) if x_init is None else x_init.clone()
    nfe, probs, seen = 0, None, None
    for t, s in zip(ts[:-1], ts[1:]):
        if not cache or probs is None or not torch.equal(x, seen):
            probs, seen, nfe = model(x, t).to(torch.float64), x.clone(), nfe + 1
        x = draw(step(process, x, probs, t, s), generator, method=method, dtype=dtype)
    return TokenResult(x, nfe)


def dfm_euler(model, process: TokenProcess, ts, batch: int, length: int, **options) -> TokenResult:
    """Discrete flow matching's Euler sampler (flow_matching's ``MixtureDiscreteEulerSolver`` in sdeflow's time)."""
    return ancestral(model, process, ts, batch, length, step=euler_probs, **options)


def first_hitting(model, process: Masked, batch: int, length: int, *, generator: torch.Generator | None = None,
                  x_init: torch.Tensor | None = None, method: str = "inverse-cdf",
                  dtype: torch.dtype = torch.float64) -> TokenResult:
    """Unmask one token at a time at exactly drawn times (one evaluation per masked token)."""
    if not isinstance(process, Masked):
        raise ValueError(f"the first-hitting sampler unmasks: it needs the masked process, got {type(process).__name__}")
    x = all_noise(process, batch, length, generator) if x_init is None else x_init.clone()
    sched = process.schedule
    t = torch.ones(batch, dtype=torch.float64)
    nfe = 0
    rows = torch.arange(batch)
    while True:
        masked = x == process.mask
        n = masked.sum(1)
        if int(n.max()) == 0:
            return TokenResult(x, nfe)
        u = uniforms((batch,), generator)
        one_minus = (1.0 - sched.alpha(t)) * u ** (1.0 / n.clamp_min(1).to(torch.float64))
        t = torch.where(n > 0, sched.t_from_alpha(1.0 - one_minus), t)
        probs = model(x, t).to(torch.float64)                                 # time-agnostic for the masked process
        nfe += 1
        pick = draw(masked.to(torch.float64) / n.clamp_min(1)[:, None], generator)  # a masked position, uniformly
        token = draw(probs[rows, pick], generator, method=method, dtype=dtype)
        x[rows, pick] = torch.where(n > 0, token, x[rows, pick])


def output_law(process: TokenProcess, posterior, ts, length: int, step=step_probs) -> dict:
    """The exact law of :func:`ancestral` (``step=euler_probs``: of :func:`dfm_euler`; caching does not change
    the law) over the grid ``ts``: a dict from each reachable state (a tuple) to its probability, propagated
    step by step over every partial state. ``posterior(x_t, t) -> (B, L, V)`` is the model. Small ``L``, ``V``."""
    ts = [float(v) for v in torch.as_tensor(ts, dtype=torch.float64)]
    start = all_noise(process, 1, length)[0] if isinstance(process, Masked) else None
    if start is not None:
        law = {tuple(start.tolist()): 1.0}
    else:
        states = list(itertools.product(range(process.vocab), repeat=length))
        law = {s: process.vocab ** -length for s in states}
    for t, s in zip(ts[:-1], ts[1:]):
        keys = list(law)
        x = torch.tensor(keys, dtype=torch.long)
        p = step(process, x, posterior(x, t).to(torch.float64), t, s)            # (N, L, S)
        new: dict = {}
        for i, key in enumerate(keys):
            support = [torch.nonzero(p[i, pos] > 0).flatten().tolist() for pos in range(length)]
            for combo in itertools.product(*support):
                w = law[key]
                for pos, v in enumerate(combo):
                    w *= float(p[i, pos, v])
                new[combo] = new.get(combo, 0.0) + w
        law = new
    return law

"""The masked-diffusion NELBO (training loss and likelihood bound, in nats per sequence or bits per token) and
SEDD's score entropy (:func:`score_entropy`), the loss of a model of the concrete score, and discrete flow
matching's generalized KL (:func:`generalized_kl`), the loss of a model of the rates.

For the masked process with schedule ``alpha`` and a model of the clean-token posterior ``p(x0^l | x_t)``,

    NELBO(x0) = int_0^1 (-alpha'(t) / (1 - alpha(t))) E_{x_t ~ q_t(. | x0)} [ sum_{l masked} -log p(x0^l | x_t) ] dt
              >= -log p(x0),

MDLM's and MD4's weighted cross-entropy. :class:`MaskedNELBO` estimates it from one draw of ``t`` and
``x_t`` per sequence (the training loss; times stratified over the batch). For a model that does not
depend on ``t`` (the exact posterior of the masked process does not), the change of variables
``u = alpha(t)`` turns it into a finite sum over mask patterns with Beta-function weights,

    NELBO(x0) = sum_{M nonempty} B(L - |M| + 1, |M|) sum_{l in M} -log p(x0^l | x0 outside M),

which :func:`masked_nelbo_exact` evaluates by enumeration (small ``L``). With the exact posterior the bound is
tight, ``NELBO = -log p(x0)``: it averages the chain rule over unmasking orders, each exact; any other model's
expected NELBO is larger by its conditionals' KL (both tested).

References: Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
arXiv:2406.07524; Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", 2024,
arXiv:2406.04329.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..objectives.densities import stratified
from .processes import Masked


class MaskedNELBO:
    """``loss(model, x0, generator=...) -> (B,)`` per-sequence NELBO estimates in nats (one ``t`` per sequence,
    stratified over the batch); ``model(x_t, t) -> (B, L, V)`` logits (or log-probabilities)."""

    def __init__(self, process: Masked, t_min: float = 1e-4):
        if not isinstance(process, Masked):
            raise ValueError(f"the masked-diffusion NELBO needs the masked process, got {type(process).__name__}")
        self.process, self.t_min = process, float(t_min)

    def __call__(self, model, x0: torch.Tensor, *, generator: torch.Generator | None = None,
                 t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            t = self.t_min + (1.0 - self.t_min) * stratified(x0.shape[0], generator)
        x_t = self.process.noise(x0, t, generator)
        logp = torch.log_softmax(model(x_t, t.to(x0.device)).float(), -1)
        return masked_cross_entropy(self.process, logp, x0, x_t, t)


def masked_cross_entropy(process: Masked, logp: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
    """The NELBO's integrand at one ``(t, x_t)`` per sequence: ``-alpha'/(1 - alpha)`` times the cross-entropy of
    the masked positions, ``(B,)`` (``logp``: ``(B, L, V)`` log-posteriors)."""
    nll = -torch.gather(logp, -1, x0[..., None])[..., 0]                        # (B, L)
    masked = x_t == process.mask
    weight = process.rate(t, x0).reshape(-1)
    return weight.to(torch.float32) * torch.where(masked, nll, torch.zeros_like(nll)).sum(-1)


def masked_nelbo_exact(posterior, x0: torch.Tensor, process: Masked) -> torch.Tensor:
    """The NELBO of a time-agnostic model ``posterior(x_t, t) -> (B, L, V)`` probabilities, exactly, by
    enumerating the ``2^L - 1`` mask patterns (``L`` up to about 12); nats per sequence, ``(B,)`` float64."""
    if not isinstance(process, Masked):
        raise ValueError(f"the masked-diffusion NELBO needs the masked process, got {type(process).__name__}")
    b, length = x0.shape
    total = torch.zeros(b, dtype=torch.float64)
    for pattern in itertools.product((False, True), repeat=length):
        m = sum(pattern)
        if m == 0:
            continue
        mask = torch.tensor(pattern)
        x_t = torch.where(mask, torch.full_like(x0, process.mask), x0)
        probs = posterior(x_t, 0.5).to(torch.float64)
        nll = -torch.log(torch.gather(probs, -1, x0[..., None])[..., 0])           # (B, L)
        u = length - m
        beta = math.exp(math.lgamma(u + 1) + math.lgamma(m) - math.lgamma(u + 1 + m))
        total += beta * nll[:, mask].sum(-1)
    return total


def bits_per_token(nats: torch.Tensor, length: int) -> torch.Tensor:
    """Nats per sequence as bits per token."""
    return nats / (length * math.log(2.0))


def score_entropy(process, ratios: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    """SEDD's denoising score entropy of predicted ratios ``ratios`` (``(B, L, S)``, > 0 where used) at noised
    sequences ``x_t`` of clean ``x0``, summed over positions, ``(B,)``:

        sum_l sum_{y != x_t^l} w(y) [ s(y) - r(y) log s(y) + r(y) (log r(y) - 1) ],
        r(y) = Q_t[x0^l, y] / Q_t[x0^l, x_t^l],   w(y) = beta(t) pi(x_t^l),

    with ``w`` the reverse chain's weight (the forward rate into ``x_t^l``; ``beta = -alpha'/alpha``). Each term
    is a Bregman divergence, 0 where ``s = r``; its expectation over ``x0`` given ``x_t`` is least at the
    concrete score ``E[r | x_t]`` (:func:`~sdeflow.discrete.conversions.concrete_score`). Terms from an
    unmasked token of the masked process have ``w = 0``. ``t``: a scalar or one per row."""
    b, length = x0.shape
    Q = process.kernels(t, b, x0.device)
    q = torch.gather(Q, 1, x0[..., None].expand(-1, -1, process.states))            # (B, L, S): Q[x0^l, y]
    r = q / torch.gather(q, -1, x_t[..., None])
    w = process.rate(t, x0, towards_data=False) * process.noise_law().to(x0.device)[x_t][..., None].expand_as(r)
    w = w.scatter(-1, x_t[..., None], 0.0)
    s = ratios.to(torch.float64).clamp_min(1e-300)
    k = torch.where(r > 0, r * (torch.log(r.clamp_min(1e-300)) - 1.0), torch.zeros_like(r))
    terms = s - r * torch.log(s) + k
    return (torch.where(w > 0, w * terms, torch.zeros_like(terms))).sum((-1, -2))


def generalized_kl(process, rates: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    """Discrete flow matching's generalized KL of predicted rates ``rates`` (``(B, L, S)``, the off-diagonal
    entries used, > 0 where the target is) against the conditional velocity of the mixture path given ``x0``,
    ``u(y | x_t, x0) = r [y = x0^l]`` for ``y != x_t^l`` (``r = -alpha'/(1 - alpha)``), summed over positions:

        sum_l sum_{y != x_t^l} [ u(y) log(u(y) / v(y)) - u(y) + v(y) ],   v = rates,

    a Bregman divergence, 0 where ``v = u``; its expectation over ``x0`` given ``x_t`` is least at the marginal
    velocity ``r p(x0^l = y | x_t)`` (:func:`~sdeflow.discrete.conversions.dfm_rates`). ``t``: a scalar or one
    per row."""
    target = process.rate(t, x0) * torch.nn.functional.one_hot(x0, process.states).to(torch.float64)
    off = torch.ones_like(target).scatter_(-1, x_t[..., None], 0.0)
    v = rates.to(torch.float64).clamp_min(1e-300)
    terms = torch.where(target > 0, target * torch.log(target.clamp_min(1e-300) / v), torch.zeros_like(v)) - target + v
    return (off * terms).sum((-1, -2))


def nelbo_estimate(model, x0: torch.Tensor, process: Masked, draws: int = 32, *,
                   generator: torch.Generator | None = None, label=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The NELBO of each sequence ``x0`` (``(B, L)`` clean tokens) under a token model (a
    :class:`~sdeflow.discrete.model.TokenModel`), estimated from ``draws`` stratified draws of ``(t, x_t)`` per
    sequence: ``(mean, standard error)`` in nats per sequence, ``(B,)`` each. An upper bound on ``-log p(x0)``."""
    if not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2, got {draws!r}")
    loss = MaskedNELBO(process)
    b = x0.shape[0]
    rep = x0.repeat_interleave(draws, 0)
    u = (torch.arange(draws, dtype=torch.float64) + torch.rand(b, draws, generator=generator, dtype=torch.float64)) / draws
    t = loss.t_min + (1.0 - loss.t_min) * u.reshape(-1)
    labels = None if label is None else torch.as_tensor(label).reshape(-1).expand(b).repeat_interleave(draws, 0)
    with torch.no_grad():
        values = loss(lambda x, s: model.log_probs(x, s, labels), rep, generator=generator, t=t).double().reshape(b, draws)
    return values.mean(1), values.std(1) / math.sqrt(draws)

"""Samplers of token diffusion: from all-noise at ``t = 1`` to clean tokens at ``t = 0``.

A model is ``model(x_t, t) -> (B, L, V)`` clean-token probabilities (:class:`~sdeflow.discrete.exact.TokenOracle`
or a network's softmax). Every step of a grid draws independently per position given ``x_t``:

- :func:`ancestral` (D3PM / MDLM): ``x_s ~ sum_{x0} q(x_s | x_t, x0) p(x0 | x_t)`` per position, the exact
  reverse kernel of one step given the model. On the masked process a masked token stays masked with
  probability ``(1 - alpha_s) / (1 - alpha_t)`` and is otherwise drawn from the model; a step in which no
  token changed reuses the model's output (``cache=True``, MDLM's caching; the masked process only, whose
  exact posterior does not depend on ``t``), so NFE counts distinct states.
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

import functools
import itertools
from dataclasses import dataclass

import torch

from ..names import NameTable
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


def euler_probs(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t: float, s: float,
                corrector: float = 0.0) -> torch.Tensor:
    """Discrete flow matching's Euler step from ``t`` to ``s`` per position, ``(B, L, S)``, as flow_matching's
    ``MixtureDiscreteEulerSolver`` takes it: a target ``y ~ p(x0 | x_t)``; where ``y != x_t`` the token jumps
    to it with probability ``1 - exp(-(t - s) r)``, ``r = -alpha'(t) / (1 - alpha(t))`` the mixture path's
    rate. The last step (to ``s = 0``) takes the target itself.

    ``corrector = c > 0`` adds ``c`` times the forward process' rates to ``(1 + c)`` times the reverse ones
    (flow_matching's ``div_free``; Gat et al.'s corrector): the jump rates become ``(1 + c) r [y = target] +
    c beta pi(y)`` off the current state, ``beta = -alpha'/alpha``. The added motion leaves the marginals
    ``q_t`` as they are (forward and reverse generators cancel on them) and lets later steps revise earlier
    choices. It acts where ``alpha(t) > 0`` (at ``alpha = 0`` its rate is infinite and would only redraw noise)."""
    out = torch.nn.functional.pad(probs.to(torch.float64), (0, process.states - process.vocab))
    if s == 0:
        return out
    return _first_jump(euler_rates(process, x_t, out, t, corrector), x_t, t - s)


def euler_rates(process: TokenProcess, x_t: torch.Tensor, target: torch.Tensor, t: float,
                corrector: float = 0.0) -> torch.Tensor:
    """The jump rates of discrete flow matching's Euler step off ``x_t``, ``(B, L, S)``: ``(1 + c) r target(y) +
    c beta pi(y)`` (``target``: the law of the target over the states, or a drawn target's point mass;
    ``r = -alpha'/(1 - alpha)``, ``beta = -alpha'/alpha``; the corrector where ``alpha(t) > 0``), 0 at ``x_t``."""
    rates = (1.0 + corrector) * float(process.rate(t, x_t)) * target
    if corrector > 0 and float(process.schedule.alpha(t)) > 0:
        rates = rates + corrector * float(process.rate(t, x_t, towards_data=False)) * process.noise_law()
    return rates.scatter(-1, x_t[..., None], 0.0)


def _first_jump(rates: torch.Tensor, x_t: torch.Tensor, h: float) -> torch.Tensor:
    """The law after a step of length ``h`` with the off-diagonal ``rates`` frozen: the first jump, taken with
    probability ``1 - exp(-h sum rates)`` to a state in proportion to its rate; otherwise ``x_t`` stays."""
    total = rates.sum(-1, keepdim=True)
    jump = -torch.expm1(-h * total)
    out = torch.where(total > 0, jump * rates / total.clamp_min(1e-300), torch.zeros_like(rates))
    return out.scatter_add_(-1, x_t[..., None], 1.0 - out.sum(-1, keepdim=True))


def remask_probs(eta: float = 0.0):
    """ReMDM's remasking step of the masked process (``eta = 0``: the ancestral step), as a ``step`` of
    :func:`ancestral`: from ``t`` to ``s`` a token that is not masked is masked again with probability
    ``sigma = eta min(1, (1 - alpha_s) / alpha_t)`` and a masked one is unmasked, drawn from the model, with
    probability ``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)``. For every ``eta`` in ``[0, 1]`` the step
    carries the exact marginal ``q_t`` of a position to ``q_s`` (so with one position and the exact model it
    samples the data exactly at any number of steps), and later steps can replace tokens drawn early.

    Reference: Wang et al., "Remasking Discrete Diffusion Models with Inference-Time Scaling", 2025,
    arXiv:2503.00307."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"the remasking strength eta must be in [0, 1], got {eta}")

    def step(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t: float, s: float) -> torch.Tensor:
        if not isinstance(process, Masked):
            raise ValueError(f"remasking needs the masked process, got {type(process).__name__}")
        a_t, a_s = float(process.schedule.alpha(t)), float(process.schedule.alpha(s))
        sigma = float(eta) * min(1.0, (1.0 - a_s) / a_t) if a_t > 0 else 0.0
        masked = (x_t == process.mask)[..., None]
        unmask = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t) if a_t < 1 else 0.0
        from_mask = torch.nn.functional.pad(unmask * probs.to(torch.float64), (0, 1), value=1.0 - unmask)
        keep = torch.nn.functional.one_hot(x_t, process.states).to(torch.float64) * (1.0 - sigma)
        keep[..., process.mask] += sigma
        return torch.where(masked, from_mask, keep)

    return step


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
    beta = float(process.rate(t, x_t, towards_data=False))
    rates = beta * process.noise_law()[x_t][..., None] * concrete_score(process, x_t, probs, t)
    return _first_jump(rates.scatter(-1, x_t[..., None], 0.0), x_t, t - s)


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
    x = all_noise(process, batch, length, generator) if x_init is None else check_start(process, x_init, batch, length)
    nfe, probs, seen, reuse = 0, None, None, isinstance(process, Masked)
    for t, s in zip(ts[:-1], ts[1:]):
        if not (cache and reuse) or probs is None or not torch.equal(x, seen):
            probs, seen, nfe = model(x, t).to(torch.float64), x.clone(), nfe + 1
        x = draw(step(process, x, probs, t, s), generator, method=method, dtype=dtype)
    return TokenResult(x, nfe)


def dfm_euler(model, process: TokenProcess, ts, batch: int, length: int, *, corrector: float = 0.0,
              generator: torch.Generator | None = None, x_init: torch.Tensor | None = None, cache: bool = True,
              method: str = "inverse-cdf", dtype: torch.dtype = torch.float64) -> TokenResult:
    """Discrete flow matching's Euler sampler (flow_matching's ``MixtureDiscreteEulerSolver`` in sdeflow's time,
    ``corrector`` its ``div_free``), drawn as that solver draws, from one uniform stream: per step the targets
    ``y ~ p(x0 | x_t)`` at every position, then one uniform per position against ``1 - exp(-h lambda)``, then
    the destinations of the positions that jump. Given the same uniforms it returns flow_matching's tokens
    (``tests/test_discrete.py``); its law is :func:`euler_probs`'."""
    ts = [float(v) for v in torch.as_tensor(ts, dtype=torch.float64)]
    x = check_start(process, x_init, batch, length) if x_init is not None else all_noise(process, batch, length, generator)
    nfe, probs, seen, reuse = 0, None, None, isinstance(process, Masked)
    for t, s in zip(ts[:-1], ts[1:]):
        if not (cache and reuse) or probs is None or not torch.equal(x, seen):
            probs, seen, nfe = model(x, t).to(torch.float64), x.clone(), nfe + 1
        y = draw(probs, generator, method=method, dtype=dtype)
        if s == 0:
            x = y
            continue
        rates = euler_rates(process, x, torch.nn.functional.one_hot(y, process.states).to(torch.float64), t, corrector)
        total = rates.sum(-1)
        jump = uniforms(x.shape, generator) < -torch.expm1(-(t - s) * total)
        if bool(jump.any()):
            x = x.clone()
            x[jump] = draw(rates[jump] / total[jump][:, None], generator, method=method, dtype=dtype)
    return TokenResult(x, nfe)


def check_start(process: TokenProcess, x_init: torch.Tensor, batch: int | None = None,
                length: int | None = None) -> torch.Tensor:
    """A start of sampling (infilling: known tokens, the rest noise), refused unless ``(batch, length)`` long
    tokens in ``0..states-1``."""
    x = torch.as_tensor(x_init)
    if x.dtype not in (torch.int64, torch.int32) or x.ndim != 2:
        raise ValueError(f"x_init must be (batch, length) integer tokens, got {tuple(x.shape)} {x.dtype}")
    if (batch is not None and x.shape[0] != batch) or (length is not None and x.shape[1] != length):
        raise ValueError(f"x_init has shape {tuple(x.shape)}, the run ({batch}, {length})")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= process.states):
        raise ValueError(f"x_init's tokens must lie in 0..{process.states - 1} (the mask is {process.states - 1} on the "
                         f"masked process), got values in {int(x.min())}..{int(x.max())}")
    return x.long().clone()


def first_hitting(model, process: Masked, batch: int, length: int, *, nfe: int | None = None,
                  generator: torch.Generator | None = None, x_init: torch.Tensor | None = None,
                  method: str = "inverse-cdf", dtype: torch.dtype = torch.float64) -> TokenResult:
    """Unmask the masked tokens at exactly drawn times: one token per evaluation (``nfe=None`` or at least the
    number masked; exact), or with a budget of ``nfe`` evaluations, ``k = max(1, n // r)`` tokens at once when
    ``n`` are masked and ``r`` evaluations are left (blocks of equal size, the larger ones last, where each
    token sees the most context). A block's time is the ``k``-th of the ``n`` masked tokens' clocks,
    ``(1 - alpha_s) / (1 - alpha_t) = prod_{i<k} u_i^(1 / (n - i))``; its positions are chosen uniformly among
    the masked and drawn independently from the model."""
    if not isinstance(process, Masked):
        raise ValueError(f"the first-hitting sampler unmasks: it needs the masked process, got {type(process).__name__}")
    if nfe is not None and (not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1):
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    x = all_noise(process, batch, length, generator) if x_init is None else check_start(process, x_init, batch, length)
    sched = process.schedule
    t = torch.ones(batch, dtype=torch.float64)
    evaluations = 0
    while True:
        masked = x == process.mask
        n = masked.sum(1)
        if int(n.max()) == 0:
            return TokenResult(x, evaluations)
        left = None if nfe is None else max(1, nfe - evaluations)
        k = torch.ones_like(n) if left is None else (n // left).clamp_min(1)
        k = torch.minimum(k, n)
        ratio = torch.ones(batch, dtype=torch.float64)
        for i in range(int(k.max())):  # the k-th largest of n uniforms, one factor per token of the block
            u = uniforms((batch,), generator)
            factor = u ** (1.0 / (n - i).clamp_min(1).to(torch.float64))
            ratio = torch.where(i < k, ratio * factor, ratio)
        t = torch.where(n > 0, sched.t_from_alpha(1.0 - (1.0 - sched.alpha(t)) * ratio), t)
        probs = model(x, t).to(torch.float64)                                 # time-agnostic for the masked process
        evaluations += 1
        keys = torch.where(masked, uniforms(x.shape, generator), torch.full(x.shape, 2.0, dtype=torch.float64))
        chosen = keys.argsort(1).argsort(1) < k[:, None]                      # k masked positions, uniformly
        tokens = draw(probs, generator, method=method, dtype=dtype)
        x = torch.where(chosen & masked, tokens, x)


def hitting_law(process: Masked, posterior, length: int, nfe: int | None = None) -> dict:
    """The exact output law of :func:`first_hitting` with budget ``nfe`` from the all-masked start, by
    propagating over every partial state and every block of positions (small ``L``, ``V``; ``posterior`` is a
    time-agnostic model, ``posterior(x, t) -> (B, L, V)``)."""
    law = {tuple([process.mask] * length): 1.0}
    for j in range(length):
        new: dict = {}
        for state, w in law.items():
            masked = [i for i, v in enumerate(state) if v == process.mask]
            if not masked:
                new[state] = new.get(state, 0.0) + w
                continue
            n = len(masked)
            k = 1 if nfe is None else min(n, max(1, n // max(1, nfe - j)))
            probs = posterior(torch.tensor([state]), 0.5)[0].to(torch.float64)
            blocks = list(itertools.combinations(masked, k))
            for block in blocks:
                for values in itertools.product(range(process.vocab), repeat=k):
                    p = w / len(blocks)
                    out = list(state)
                    for pos, v in zip(block, values):
                        p *= float(probs[pos, v])
                        out[pos] = v
                    new[tuple(out)] = new.get(tuple(out), 0.0) + p
        law = new
    return law


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


def _uniform(nfe: int, ts) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64) if ts is None else ts


def _ancestral(model, process, nfe, batch, length, ts=None, **options):
    return ancestral(model, process, _uniform(nfe, ts), batch, length, **options)


def _tau(model, process, nfe, batch, length, ts=None, **options):
    return tau_leaping(model, process, _uniform(nfe, ts), batch, length, **options)


def _remask(model, process, nfe, batch, length, ts=None, eta: float = 0.1, **options):
    return ancestral(model, process, _uniform(nfe, ts), batch, length, step=remask_probs(eta), **options)


def _euler(model, process, nfe, batch, length, ts=None, corrector: float = 0.0, **options):
    return dfm_euler(model, process, _uniform(nfe, ts), batch, length, corrector=corrector, **options)


def _hitting(model, process, nfe, batch, length, ts=None, **options):
    return first_hitting(model, process, batch, length, nfe=nfe, **options)


#: Token samplers by name: ``TOKEN_SAMPLERS[name](model, process, nfe, batch, length, ts=None, **options)``, on
#: the grid uniform in ``t`` with ``nfe`` steps unless ``ts`` is given (the first-hitting sampler unmasks in
#: ``nfe`` blocks, one token per evaluation when ``nfe`` is at least the number masked).
TOKEN_SAMPLERS = NameTable("token sampler", {
    "ancestral": (_ancestral, "the exact one-step reverse kernel (MDLM; caches unchanged steps)"),
    "dfm-euler": (_euler, "discrete flow matching's Euler step (flow_matching's solver)"),
    "dfm-corrector": (functools.partial(_euler, corrector=1.0),
                      "discrete flow matching's Euler step with its corrector (corrector=1)"),
    "tau-leaping": (_tau, "the reverse chain's rates frozen over each step (SEDD)"),
    "remask": (_remask, "ReMDM's remasking predictor-corrector (masked process; eta=0.1)"),
    "first-hitting": (_hitting, "blocks of tokens at exactly drawn unmasking times (masked process; exact at NFE = L)"),
})


def sample_tokens(model, process: TokenProcess, sampler: str = "ancestral", nfe: int = 16, batch: int = 1,
                  length: int | None = None, **options) -> TokenResult:
    """Token sequences from the sampler named ``sampler`` (:data:`TOKEN_SAMPLERS`) with ``nfe`` steps; every
    argument is checked before the first evaluation."""
    run = TOKEN_SAMPLERS.lookup(sampler)
    if sampler in ("remask", "first-hitting") and not isinstance(process, Masked):
        raise ValueError(f"the {sampler} sampler needs the masked process, got {type(process).__name__}")
    for name, value in (("nfe", nfe), ("batch", batch), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if options.get("x_init") is not None:
        check_start(process, options["x_init"], batch, length)
    return run(model, process, nfe, batch, length, **options)

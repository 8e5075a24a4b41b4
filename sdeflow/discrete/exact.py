"""Exact answers for token diffusion: a mixture of product categoricals over ``L`` positions.

``p(x) = sum_k pi_k prod_l P_k[l, x_l]``. Under a per-position forward kernel ``Q_t`` the noised law is again
such a mixture, and the clean-token posterior of each position given a whole noised sequence is closed form:

    w_k(x_t) ∝ pi_k prod_l (P_k[l] Q_t)[x_t^l],
    p(x0^l = v | x_t) = sum_k w_k(x_t) P_k[l, v] Q_t[v, x_t^l] / (P_k[l] Q_t)[x_t^l].

That posterior is what a token network predicts (:meth:`ProductMixture.denoiser`). For small ``L`` and ``V``
:meth:`ProductMixture.law` enumerates the ``V^L`` sequences' probabilities, and :func:`output_law` follows a
sampler's Markov chain over every partial state exactly: the exact output law of a sampler at any NFE.
"""

from __future__ import annotations

import itertools

import torch

from .processes import TokenProcess


class ProductMixture:
    """``sum_k weights[k] prod_l Categorical(probs[k, l])``; ``probs`` is ``(K, L, V)``."""

    def __init__(self, weights, probs):
        probs = torch.as_tensor(probs, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if probs.ndim != 3 or weights.shape != probs.shape[:1] or bool((probs < 0).any()) or bool((weights <= 0).any()):
            raise ValueError("need weights (K,) > 0 and probs (K, L, V) >= 0")
        self.weights = weights / weights.sum()
        self.probs = probs / probs.sum(-1, keepdim=True)
        self.length, self.vocab = probs.shape[1], probs.shape[2]

    @classmethod
    def random(cls, length: int, vocab: int, components: int = 3, *, seed: int = 0, spread: float = 1.5):
        """A random mixture: per component and position, categoricals ``softmax(spread * N(0, I))``."""
        g = torch.Generator().manual_seed(seed)
        logits = spread * torch.randn(components, length, vocab, generator=g, dtype=torch.float64)
        return cls(0.5 + torch.rand(components, generator=g, dtype=torch.float64), torch.softmax(logits, -1))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        from .categorical import draw

        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return draw(self.probs[k], generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` of clean sequences ``(B, L)``."""
        lp = torch.log(self.probs)                                              # (K, L, V)
        per = lp[:, torch.arange(self.length)[None, :], x].sum(-1)              # (K, B)
        return torch.logsumexp(torch.log(self.weights)[:, None] + per, 0)

    def sequences(self) -> torch.Tensor:
        """Every clean sequence, ``(V^L, L)``, in lexicographic order."""
        return torch.tensor(list(itertools.product(range(self.vocab), repeat=self.length)), dtype=torch.long)

    def law(self) -> torch.Tensor:
        """The probabilities of :meth:`sequences` (small ``L`` and ``V`` only)."""
        return self.log_prob(self.sequences()).exp()

    def pair_marginals(self) -> torch.Tensor:
        """``p(x^i = a, x^j = b)``, ``(L, L, V, V)``."""
        return torch.einsum("k,kia,kjb->ijab", self.weights, self.probs, self.probs)

    def pair_chi_square(self, x: torch.Tensor) -> float:
        """An unbiased estimate, from draws ``x`` ``(N, L)`` of some law ``q``, of the chi-square divergence
        ``sum (q - p)^2 / p`` of ``q``'s two-position marginals from this law's, averaged over the pairs of
        positions: ``sum [(q_hat - p)^2 - q_hat (1 - q_hat) / (N - 1)] / p`` per pair (0 in expectation for
        draws of this law; it measures the dependence between positions a sampler gets wrong on laws too large
        to enumerate)."""
        n, length = x.shape
        v = self.vocab
        p = self.pair_marginals()
        total, pairs = 0.0, 0
        for i in range(length):
            for j in range(i + 1, length):
                q = torch.bincount(x[:, i] * v + x[:, j], minlength=v * v).to(torch.float64).reshape(v, v) / n
                total += float((((q - p[i, j]) ** 2 - q * (1 - q) / (n - 1)) / p[i, j]).sum())
                pairs += 1
        return total / pairs

    def posterior(self, x_t: torch.Tensor, process: TokenProcess, t) -> torch.Tensor:
        """``p(x0^l = v | x_t)``, ``(B, L, V)`` float64, for noised sequences ``x_t`` ``(B, L)`` at a scalar time
        or one per sequence."""
        q_obs = process.observed(x_t, t)                                        # (B, L, V)
        num = self.probs[:, None] * q_obs[None]                                 # (K, B, L, V)
        obs = num.sum(-1)                                                       # (K, B, L): (P_k[l] Q)[x_t^l]
        w = torch.softmax(torch.log(self.weights)[:, None] + torch.log(obs).sum(-1), 0)
        return torch.einsum("kb,kblv->blv", w, num / obs[..., None])

    def denoiser(self, process: TokenProcess) -> "TokenOracle":
        return TokenOracle(self, process)


class TokenOracle:
    """The exact clean-token posterior as a model: ``oracle(x_t, t) -> (B, L, V)`` probabilities."""

    def __init__(self, mixture: ProductMixture, process: TokenProcess):
        if mixture.vocab != process.vocab:
            raise ValueError(f"the mixture has {mixture.vocab} tokens, the process {process.vocab}")
        self.mixture, self.process = mixture, process

    def __call__(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        return self.mixture.posterior(x_t, self.process, t)

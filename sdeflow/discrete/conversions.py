"""What a token model predicts, in the forms other methods use, converted from the clean-token posterior
``p(x0^l | x_t)`` (``(B, L, V)``, what sdeflow's samplers take).

- :func:`concrete_score`: SEDD's ratios ``p_t(x_t with position l set to y) / p_t(x_t)``, ``(B, L, S)``. With
  a per-position kernel the other positions cancel, so the ratio is
  ``sum_v p(x0^l = v | x_t) Q_t[v, y] / Q_t[v, x_t^l]`` (masked process, at a masked position:
  ``alpha / (1 - alpha) p(x0^l = y | x_t)`` for a token ``y``). The identity needs ``Q_t[v, x_t^l] > 0``
  for every token ``v``: everywhere on the uniform process, at masked positions on the masked one. An
  unmasked token of the masked process is never left by the reverse process (SEDD's absorbing score
  is defined at masked positions only): its row is 1 at ``x_t^l`` and 0 elsewhere.
- :func:`dfm_rates`: discrete flow matching's velocity ``u(y) = (-alpha'/(1 - alpha)) (p(x0^l = y | x_t) - [y = x_t^l])``.
- :func:`guided`: classifier-free guidance of token posteriors, ``p_c^w p^(1 - w)`` renormalised per
  position (in log space), the tokens' version of CFG (``w = 1``: the conditional model).

References: Lou et al., "Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution",
2024, arXiv:2310.16834; Gat et al., "Discrete Flow Matching", 2024, arXiv:2407.15595; Nisonoff et al.,
"Unlocking Guidance for Discrete State-Space Diffusion and Flow Models", 2024, arXiv:2406.01572.
"""

from __future__ import annotations

import torch

from .processes import TokenProcess


def concrete_score(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t) -> torch.Tensor:
    """SEDD's concrete score ``p_t(x^{l <- y}) / p_t(x)`` for every position and state, ``(B, L, S)`` float64
    (``t`` scalar or one per row)."""
    q_obs = process.observed(x_t, t)                                           # (B, L, V): Q[v, x_t^l]
    out = torch.einsum("blv,bvs->bls", probs.to(torch.float64) / q_obs.clamp_min(1e-300),
                       process.kernels(t, x_t.shape[0], x_t.device))
    mask = getattr(process, "mask", None)
    if mask is not None:  # unmasked tokens of the absorbing process stay: 1 at themselves, 0 elsewhere
        stays = torch.zeros_like(out).scatter_(-1, x_t[..., None], 1.0)
        out = torch.where((x_t == mask)[..., None], out, stays)
    return out


def dfm_rates(process: TokenProcess, x_t: torch.Tensor, probs: torch.Tensor, t) -> torch.Tensor:
    """Discrete flow matching's probability velocity at ``x_t``, ``(B, L, S)`` (sdeflow's time: towards ``t = 0``;
    ``t`` scalar or one per row)."""
    out = torch.nn.functional.pad(probs.to(torch.float64), (0, process.states - process.vocab))
    out = out - torch.nn.functional.one_hot(x_t, process.states).to(out.dtype)
    return process.rate(t, x_t) * out


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``cond^w uncond^(1 - w)`` per position, renormalised (probabilities in, probabilities out); ``w = scale`` as in
    sdeflow's CFG (1: the conditional model)."""
    return torch.softmax(guided_log(torch.log(cond), torch.log(uncond), scale), -1)


def guided_log(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + w (cond - uncond)`` of log-posteriors, renormalised per position; a token impossible under the
    conditional model stays impossible."""
    out = torch.where(torch.isinf(cond), cond, uncond + scale * (cond - uncond.clamp_min(-1e30)))
    return torch.log_softmax(out, -1)

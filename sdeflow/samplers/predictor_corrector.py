"""Predictor-corrector sampling: any sampler as the predictor, Langevin MCMC steps as the corrector.

The default predictor is the exact frozen-``x_hat`` reverse-SDE step (:class:`~sdeflow.samplers.DDPM`,
Song et al.'s "reverse diffusion" predictor for any schedule); any other sampler can take its place.

After each predictor step to a time ``s`` with ``sigma_s > 0``, ``n_steps`` Langevin updates target
``p_s``:

    x <- x + e score(x, s) + sqrt(2 e) z,       score = (alpha_s x_hat - x) / sigma_s^2,

with the step ``e = 2 (snr ||z|| / ||score||)^2`` of the signal-to-noise rule, both norms averaged
over the batch as in the original: one step for the batch, so results depend on the batch's
composition (``couples_batch``). Per-sample norms would decouple the samples but make the step
explode where a sample's score is small and grow with its own noise, which biases Langevin badly
in low dimension. ``snr`` around 0.16 suits images; small problems want smaller values. The
corrector costs ``n_steps`` evaluations per corrected time; the final step to clean data is not
corrected. Its bias is that of Langevin at step ``e``: it does not vanish as the grid is refined
at fixed ``snr``, so the corrector trades a fixed small bias for the contraction of errors that
earlier steps made.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations", 2021, arXiv:2011.13456, Algorithms 4-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .base import Plan, Sampler, Wrapper
from .ddpm import DDPM

CORRECTOR_DRAW = 16  # the corrector's noise draws start here, above any predictor's own draws


class Langevin(NamedTuple):
    """The corrector's target ``p_s``: ``score = (alpha_s x_hat - x) / sigma_s^2``."""

    a_s: float
    s_s: float


@dataclass(frozen=True)
class PredictorCorrector(Wrapper):
    predictor: Sampler = field(default_factory=DDPM)
    snr: float = 0.16
    n_steps: int = 1
    stochastic = True
    couples_batch = True

    @property
    def wrapped(self) -> Sampler:
        return self.predictor

    def __post_init__(self):
        self.check_wrapped("predictor")
        if not (isinstance(self.snr, (int, float)) and math.isfinite(self.snr) and self.snr > 0):
            raise ValueError(f"snr must be a finite number > 0, got {self.snr!r}")
        if not (isinstance(self.n_steps, int) and self.n_steps >= 0):
            raise ValueError(f"n_steps must be an integer >= 0, got {self.n_steps!r}")

    @property
    def nfe_per_step(self) -> int:
        return self.predictor.nfe_per_step + self.n_steps

    def count_nfe(self, schedule, ts):
        return self.prepare(schedule, ts).nfe

    @property
    def convergence_order(self) -> int:
        """0 with a corrector: its Langevin bias at fixed ``snr`` does not shrink with the step count."""
        return self.predictor.convergence_order if self.n_steps == 0 else 0

    def prepare(self, schedule, ts):
        inner = self.predictor.prepare(schedule, ts)
        s = ts[1:]
        a_s, s_s = schedule.alpha(s).tolist(), schedule.sigma(s).tolist()
        corr = [Langevin(a, sg) if sg > 0 and self.n_steps > 0 else None for a, sg in zip(a_s, s_s)]
        nfe = None if inner.nfe is None else inner.nfe + self.n_steps * sum(c is not None for c in corr)
        return Plan(inner.t, inner.s, corr, nfe, inner=(inner,))

    def step(self, field, x, i, plan, state, noise):
        x, state = self.predictor.step(field, x, i, plan.inner[0], state, noise)
        corr = plan.coef[i]
        if corr is None:
            return x, state
        a_s, s_s = corr
        dtype = x.dtype
        for j in range(self.n_steps):
            x_hat = field(x, plan.s[i])
            # the Langevin arithmetic runs in at least float32 (a bf16 score at small sigma is all round-off)
            x = x if dtype in (torch.float32, torch.float64) else x.float()
            score = torch.add(x, x_hat.to(x.dtype), alpha=-a_s).mul_(-1.0 / (s_s * s_s))
            z = noise(draw=CORRECTOR_DRAW + j).to(x.dtype)
            dims = tuple(range(1, x.ndim))
            norm = torch.linalg.vector_norm(score, dim=dims).mean()
            # a zero score (x = alpha x_hat to round-off) carries no information: no step, not an infinite one
            e = torch.where(norm > 0, 2.0 * (self.snr * torch.linalg.vector_norm(z, dim=dims).mean()
                                             / norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2, 0.0)
            x = (x + e * score + torch.sqrt(2.0 * e) * z).to(dtype)
        return x, self.predictor.after_external_update(state)

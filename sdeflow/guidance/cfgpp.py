"""CFG++: classifier-free guidance whose steps re-noise with the unconditional noise estimate.

Plain CFG moves along ``x_hat_w = x_hat_u + w (x_hat_c - x_hat_u)`` and re-noises with the guided
noise estimate. CFG++ (Chung et al., 2024, arXiv:2406.08070) keeps the guided ``x_hat_w`` as the
clean estimate but re-noises with the *unconditional* ``eps_u = (x_t - alpha_t x_hat_u) / sigma_t``;
for DDIM, ``x_s = alpha_s x_hat_w + sigma_s eps_u``, with ``w = lambda`` in ``[0, 1]``.

Written on ``x_hat`` and the explicit noise term this holds for every schedule, diffusion or flow:
the state ``x'_t = x_t + alpha_t (x_hat_w - x_hat_u)`` is the one whose noise estimate under
``x_hat_w`` is ``eps_u``, since ``(x'_t - alpha_t x_hat_w) / sigma_t = eps_u``. So each step of any
sampler starts from ``x'_t`` with ``x_hat_w`` as the model output there, and DDIM from ``x'_t`` is
exactly the CFG++ step above. At ``alpha_t = 0`` (pure noise of a flow model) nothing moves and no
division is needed (ports that rewrite CFG++ on the velocity divide by ``alpha_t``).

``lambda = 0`` is the unconditional sampler. ``lambda = 1`` is *not* the conditional one: it is
DDIM with the conditional clean estimate and the unconditional noise. For DDIM a CFG++ step equals a
plain CFG step of scale ``lambda / (1 - exp(-h))`` (``h``: the step in ``log(alpha / sigma)``), so
the guidance CFG++ applies per step grows as steps shrink: ``lambda`` is tuned for a step budget.

Stages after a step's first evaluation (Heun's second stage, the corrector's evaluations) see the
guided field at their own states. Samplers whose steps do not start by evaluating at the current
state (:attr:`~sdeflow.samplers.Sampler.evaluates_first` is false: adaptive solvers, EDM's churn,
restart, EDICT and reversible Heun, which evaluate at their second state) or that carry an evaluation
over to the next step (UniPC, DPM-Solver++ with UniC) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..samplers.base import Plan, Sampler, Wrapper
from ..samplers.ddim import DDIM
from .guided import Guided


class _Primed:
    """The field for one step: its first call, at the re-noised state and the step's time, returns
    the already computed ``x_hat_w``; every other call evaluates."""

    def __init__(self, field, x, t, x_hat):
        self.field, self.x, self.t, self.x_hat = field, x, t, x_hat

    def __call__(self, x, t):
        if self.x_hat is not None:
            if x is not self.x or float(t) != self.t:
                raise ValueError("CFG++ needs a sampler whose step starts by evaluating the model at the current "
                                 "state; this one evaluates elsewhere first")
            out, self.x_hat = self.x_hat, None
            return out
        return self.field(x, t)

    def ode_velocity(self, x, t):
        return self.field.ode_velocity(x, t)


@dataclass(frozen=True)
class CFGPlusPlus(Wrapper):
    """CFG++ around any sampler (default DDIM). Sample a :class:`~sdeflow.guidance.Guided`
    denoiser with it; the guided denoiser's rule and scale give ``x_hat_w`` (``CFG(lambda)``)."""

    inner: Sampler = field(default_factory=DDIM)

    @property
    def wrapped(self) -> Sampler:
        return self.inner

    def __post_init__(self):
        self.check_wrapped()
        inner = self.inner
        if isinstance(inner, CFGPlusPlus) or inner.adaptive or not inner.evaluates_first or inner.carries_evaluation:
            why = ("it carries an evaluation over to the next step" if inner.carries_evaluation
                   else "CFG++ is already applied" if isinstance(inner, CFGPlusPlus) else
                   "its steps do not start by evaluating the model at the current state")
            raise ValueError(f"CFG++ cannot wrap {type(inner).__name__}: {why}; it needs a fixed-grid sampler whose "
                             "steps start by evaluating the model at the current state (DDIM, DPM-Solver(++), DEIS, "
                             "iPNDM, UniP without corrector, Heun, DDPM, Euler, ...)")

    @property
    def convergence_order(self) -> int:
        return 0  # the per-step shift does not vanish with the step: no limit ODE to converge to

    def prepare(self, schedule, ts):
        inner = self.inner.prepare(schedule, ts)
        alphas = schedule.alpha(torch.as_tensor(inner.t, dtype=torch.float64)).tolist()
        return Plan(inner.t, inner.s, alphas, inner.nfe, inner=(inner,))

    def step(self, field, x, i, plan, state, noise):
        guided = getattr(field, "denoiser", None)
        if not isinstance(guided, Guided):
            raise TypeError("CFG++ samples a guidance.Guided denoiser (it needs the unconditional prediction)")
        mine = guided.run_state()  # this run's: nothing outlives the run
        mine.keep_negative = True  # at lambda = 1 the rule alone would skip the unconditional pass
        t, a = plan.t[i], plan.coef[i]
        x_hat = field(x, t)
        neg = mine.last_unconditional
        if neg is not None and a != 0.0:  # outside a guidance interval there is nothing to re-noise
            x = torch.add(x, x_hat - neg, alpha=a)
            state = self.inner.after_external_update(state)
        return self.inner.step(_Primed(field, x, t, x_hat), x, i, plan.inner[0], state, noise)

"""The denoising loss for any parameterization, weighting and time density.

With ``x_t = alpha x + sigma eps`` and a network output ``F`` that the parameterization maps to
``x_hat = skip x_t + out F``, every denoising / flow-matching objective is

    L = E_{t, x, eps} [ w(t) ||x_hat - x||^2 ] / D = E [ w(t) out(t)^2 ||F - F*||^2 ] / D,

a weighting ``w(t)`` of the data-space error. The loss is evaluated in the network's own output
space against the exact target ``F* = ((1 - skip alpha) x - skip sigma eps) / out`` (coefficients in
float64, so no cancellation at small noise). Weightings (``w`` in data space):

================ ======================================== ==============================================
name             w(t)                                     what it is
================ ======================================== ==============================================
``output``       1 / out^2                                plain MSE on the network output (default)
``x0``           1                                        MSE on x_hat
``eps``/``snr``  alpha^2 / sigma^2                        MSE on eps_hat (DDPM's simple loss)
``v``            (alpha^2 + sigma^2)^2 / sigma^2          MSE on v_hat
``min-snr``      min(SNR, gamma)                          Hang et al. 2023, arXiv:2303.09556
``edm``          (s^2 + s_d^2) / (s s_d)^2, s = sigma/alpha   Karras et al. 2022, arXiv:2206.00364
``velocity``     (alpha' - sigma' alpha / sigma)^2        MSE on the velocity (flow matching, Lipman et
                                                          al. 2022, arXiv:2210.02747)
================ ======================================== ==============================================

The optimum of every weighting is the same ``x_hat = E[x | x_t]``; the minimum value at time ``t``
is ``w(t) tr Cov[x | x_t] / D``, which the tests check with the exact oracle.
"""

from __future__ import annotations

import math

from typing import Callable

import torch

from ..denoisers import Denoiser, ModelDenoiser
from ..parameterizations import Parameterization, as_parameterization
from ..schedules import Schedule
from ..shapes import expand_as_batch
from .coupling import ot_pairing
from ..names import NameTable
from .densities import TimeDensity, as_density


def _snr(schedule, t):
    return (schedule.alpha(t) / schedule.sigma(t)) ** 2


#: Loss weightings by name: ``w(schedule, t, parameterization, min_snr_gamma, sigma_data) -> (B,)`` on the x0 error.
WEIGHTINGS = NameTable("weighting", {
    "x0": (lambda sched, t, p, g, sd: torch.ones_like(t), "the x0 error itself"),
    "eps": (lambda sched, t, p, g, sd: _snr(sched, t), "the eps error (SNR times the x0 error)"),
    "snr": (lambda sched, t, p, g, sd: _snr(sched, t), "SNR weighting (= eps)"),
    "v": (lambda sched, t, p, g, sd: (sched.alpha(t) ** 2 + sched.sigma(t) ** 2) ** 2 / sched.sigma(t) ** 2, "the v error"),
    "min-snr": (lambda sched, t, p, g, sd: torch.clamp(_snr(sched, t), max=g), "min-SNR-gamma (Hang et al. 2023)"),
    "edm": (lambda sched, t, p, g, sd: (sched.noise_to_signal(t) ** 2 + sd ** 2) / (sched.noise_to_signal(t) * sd) ** 2,
            "EDM's lambda(sigma)"),
    "velocity": (lambda sched, t, p, g, sd: (sched.d_alpha(t) - sched.d_sigma(t) * sched.alpha(t) / sched.sigma(t)) ** 2,
                 "the probability-flow velocity's error (flow matching)"),
    "output": (lambda sched, t, p, g, sd: 1.0 / p.coefficients(sched, t)[1] ** 2,
               "the network output's own error, whatever it predicts"),
})


class DenoisingLoss:
    """``loss(denoiser, x, cond=..., generator=...) -> (B,)`` per-sample losses (mean over dimensions).

    The schedule and the parameterization are the denoiser's (a
    :class:`~sdeflow.denoisers.ModelDenoiser`); any other denoiser (the exact oracle) is scored as if
    its ``x_hat`` came from a network with the loss's ``parameterization`` (default ``x0``).

    Args:
        weighting: a name from the table above, or ``w(schedule, t) -> (B,)`` float64.
        time_density: ``"uniform"``, ``"stratified"``, ``"logit-normal"``, ``"log-normal"`` or a
            :class:`~sdeflow.objectives.densities.TimeDensity`.
        min_snr_gamma: gamma of ``min-snr`` (5 in the paper).
        sigma_data: data standard deviation of the ``edm`` weighting.
        ot_coupling: pair data and noise by an exact minibatch optimal-transport assignment (flow
            matching with OT coupling, Tong et al. 2023, arXiv:2302.00482; Pooladian et al. 2023,
            arXiv:2304.14772). Noise passed as ``eps`` is used as given: the trainer couples the global
            batch across processes itself (:func:`~sdeflow.objectives.coupling.global_ot_pairing`).
        fokker_planck: weight of the Fokker-Planck penalty (0: none). At one time per batch, drawn
            uniformly from the middle 90% of the schedule's span, the score Fokker-Planck residual ``r``
            of the model (:func:`~sdeflow.diagnostics.fokker_planck_terms`) at the batch's noised
            points, ``|r|^2 / mean |ds/dt|^2`` per sample, is added with this weight: it pulls the
            model's ODE and SDE towards the same marginals ("closing the ODE-SDE gap"). Costs about four
            forward and three backward passes more per step.
        fokker_planck_probes: Hutchinson probes of the penalty's divergence (None: the exact divergence
            up to 16 dimensions, 4 probes above).
    """

    def __init__(self, weighting: str | Callable = "output", time_density: TimeDensity | str = "uniform", *,
                 min_snr_gamma: float = 5.0, sigma_data: float = 0.5, ot_coupling: bool = False,
                 parameterization: Parameterization | str = "x0", fokker_planck: float = 0.0,
                 fokker_planck_probes: int | None = None):
        self.parameterization = as_parameterization(parameterization)
        if isinstance(weighting, str) and weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)} or a callable")
        self.weighting = weighting
        self.time_density = as_density(time_density)
        self.min_snr_gamma, self.sigma_data, self.ot_coupling = float(min_snr_gamma), float(sigma_data), ot_coupling
        if not (math.isfinite(fokker_planck) and fokker_planck >= 0) or (fokker_planck_probes or 1) < 1:
            raise ValueError(f"fokker_planck must be a weight >= 0 and fokker_planck_probes >= 1 or None, got "
                             f"{fokker_planck} and {fokker_planck_probes}")
        self.fokker_planck, self.fokker_planck_probes = float(fokker_planck), fokker_planck_probes

    def data_weight(self, schedule: Schedule, parameterization: Parameterization, t: torch.Tensor) -> torch.Tensor:
        """``w(t)`` of the data-space error, float64."""
        if callable(self.weighting):
            return torch.as_tensor(self.weighting(schedule, t), dtype=torch.float64)
        return WEIGHTINGS[self.weighting](schedule, t, parameterization, self.min_snr_gamma, self.sigma_data)

    def draw(self, x: torch.Tensor, schedule: Schedule, generator: torch.Generator | None = None):
        """Times ``(B,)`` float64 and noise like ``x`` (drawn on the CPU for reproducibility)."""
        t = self.time_density.sample(x.shape[0], schedule, generator)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return t, eps.to(device=x.device, dtype=x.dtype)

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, *, cond: dict | None = None,
                 generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                 eps: torch.Tensor | None = None) -> torch.Tensor:
        cond = cond or {}
        sched = denoiser.schedule
        p = denoiser.parameterization if isinstance(denoiser, ModelDenoiser) else self.parameterization
        if t is None or eps is None:
            t_draw, eps_draw = self.draw(x, sched, generator)
            t = t_draw if t is None else t
            if eps is None:  # noise given by the caller is used as it is (already coupled)
                eps = eps_draw[ot_pairing(x, eps_draw)] if self.ot_coupling else eps_draw
        t = torch.as_tensor(t, dtype=torch.float64)
        alpha, sigma = sched.alpha(t), sched.sigma(t)
        skip, out = p.coefficients(sched, t)
        c_x, c_e = (1.0 - skip * alpha) / out, -skip * sigma / out
        weight = self.data_weight(sched, p, t) * out ** 2
        if not bool(torch.isfinite(weight).all() & torch.isfinite(c_x).all() & torch.isfinite(c_e).all()):
            raise ValueError(f"the {self.weighting} weighting or the {p.name} target is not finite at some training "
                             f"time in [{float(t.min()):.3g}, {float(t.max()):.3g}]; narrow the time density")
        def cast(c):
            return expand_as_batch(c.to(device=x.device, dtype=x.dtype), x)
        x_t = cast(alpha) * x + cast(sigma) * eps
        target = cast(c_x) * x + cast(c_e) * eps
        if isinstance(denoiser, ModelDenoiser):
            f = denoiser.network_output(x_t, t.to(x.device), **cond)
        else:
            f = p.from_x_hat(denoiser(x_t, t.to(x.device), **cond), x_t, sched, t)
        err = (f.float() - target.float()).pow(2).reshape(x.shape[0], -1).mean(1)
        loss = weight.to(device=x.device, dtype=torch.float32) * err
        if self.fokker_planck > 0:
            loss = loss + self.fokker_planck * self.fokker_planck_penalty(denoiser, x, cond, generator)
        return loss

    def fokker_planck_penalty(self, denoiser: Denoiser, x: torch.Tensor, cond: dict | None = None,
                              generator: torch.Generator | None = None) -> torch.Tensor:
        """``|r|^2 / mean |ds/dt|^2`` per sample (float32, differentiable in the model's parameters) at one
        time drawn uniformly from the middle 90% of the schedule's span, on ``alpha x + sigma z``."""
        from ..diagnostics import fokker_planck_terms

        sched = denoiser.schedule
        lo, hi = sched.t_min, 1.0
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        t = lo + (hi - lo) * (0.05 + 0.9 * u)
        z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        x_t = float(sched.alpha(torch.tensor(t))) * x + float(sched.sigma(torch.tensor(t))) * z
        probes = torch.Generator().manual_seed(int(u * 2 ** 31))
        count = self.fokker_planck_probes or (None if x[0].numel() <= 16 else 4)
        r, ds_dt, _ = fokker_planck_terms(denoiser, x_t, t, cond=cond or None, probes=count, generator=probes,
                                          create_graph=True)
        b = x.shape[0]
        scale = ds_dt.detach().reshape(b, -1).pow(2).sum(1).mean().clamp_min(1e-30)
        return (r.reshape(b, -1).pow(2).sum(1) / scale).float()


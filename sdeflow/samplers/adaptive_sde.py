"""Adaptive step-size SDE solver with error control ("Gotta Go Fast"), two evaluations per step.

On the reverse SDE family of :mod:`.sde` (``eta = 1``: the reverse SDE) with drift ``b(x, t)`` and
diffusion ``g(t)``, a step of size ``h`` from ``t`` draws ``z`` (the Brownian increment over
``[t - h, t]``, standardised) and forms

    x'  = x + h b(x, t) + sqrt(eta h) g(t) z                                   (Euler-Maruyama)
    x'' = x + h (b(x, t) + b(x', t - h)) / 2 + sqrt(eta h) (g(t) + g(t - h)) / 2 z   (stochastic Heun)

and accepts ``x''`` when ``E = max_b sqrt(mean_b(((x' - x'') / delta)^2)) <= 1`` with
``delta = max(atol, rtol max(|x'|, |x'_prev|))``, ``x'_prev`` the previous accepted ``x'``; the next
step is ``h min(5, 0.9 E^(-0.9))`` (shrinking after a rejection). One step size is shared by the
batch (the worst sample decides, so ``couples_batch``), which keeps one time per network call. Each
attempt costs two evaluations; the NFE is counted, not planned.

A rejected step retries with fresh noise: with a :class:`~sdeflow.noise.BrownianTreeNoise` the
retry sees the increment of the same path over the shorter interval instead, which removes the
bias that resampling on rejection introduces. An interval that starts at pure noise first takes
the exact frozen-``x_hat`` step to logSNR -20 (the SDE's coefficients are infinite at pure noise);
one that ends at ``sigma = 0`` is integrated to ``sigma/alpha = sigma_stop`` (0.002 by default; ``None``:
the schedule's smallest time) and finished with the denoising step.

Reference: Jolicoeur-Martineau et al., "Gotta Go Fast When Generating Data with Score-Based
Models", 2021, arXiv:2105.14080, Algorithm 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .adaptive import LAM_FLOOR, Adaptive, end_time
from .sde import check_eta, exact_sde_step


@dataclass(frozen=True)
class GottaGoFast(Adaptive):
    h_init: float = 0.01
    max_steps: int = 100_000
    eta: float = 1.0
    sigma_stop: float | None = 0.002
    order = 1
    stochastic = True

    def __post_init__(self):
        super().__post_init__()
        check_eta(self.eta)
        if self.rtol < 0 or self.atol < 0:
            raise ValueError(f"need rtol >= 0 and atol >= 0, got rtol={self.rtol}, atol={self.atol}")
        if not 0 < self.h_init <= 1:
            raise ValueError(f"h_init must be in (0, 1], got {self.h_init}")

    def _drift(self, sch, t: float):
        """``(c_x, c_hat, g)``: ``b(x, t) = c_x x + c_hat x_hat`` and the diffusion ``g(t)``."""
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(sch.alpha(tt)), float(sch.sigma(tt))
        f, dlam = float(sch.d_alpha(tt)) / a, float(sch.d_logsnr(tt))
        k = 1.0 + self.eta
        return f - k * dlam, k * dlam * a, math.sqrt(max(0.0, -2.0 * s * s * dlam))

    def step(self, field, x, i, plan, state, noise):
        sch = plan.schedule
        t, s = plan.t[i], plan.s[i]
        draw = 0
        if not math.isfinite(float(sch.logsnr(t))) or float(sch.logsnr(t)) < LAM_FLOOR:
            t_new = float(sch.t_from_logsnr(torch.tensor(LAM_FLOOR, dtype=torch.float64)))
            if t_new > s:
                c = exact_sde_step(float(sch.alpha(t)), float(sch.sigma(t)), float(sch.alpha(t_new)),
                                   float(sch.sigma(t_new)), self.eta)
                x = x.mul(c[0]).add_(field(x, t), alpha=c[1])
                if c[2]:
                    x.add_(noise(draw=draw, span=(t, t_new)), alpha=c[2])
                draw, t = draw + 1, t_new
        s_end, denoise = end_time(sch, t, s, self.sigma_stop)
        h, x_prev, steps = self.h_init, None, 0
        b0 = None
        while t > s_end + 1e-12:
            h = min(h, t - s_end)
            cx0, ch0, g0 = self._drift(sch, t)
            if b0 is None:
                b0 = torch.add(x.mul(cx0), field(x, t), alpha=ch0)
            z = noise(draw=draw, span=(t, t - h))
            draw += 1
            x1 = torch.add(x, b0, alpha=-h)
            if self.eta > 0:
                x1.add_(z, alpha=math.sqrt(self.eta * h) * g0)
            cx1, ch1, g1 = self._drift(sch, t - h)
            b1 = torch.add(x1.mul(cx1), field(x1, t - h), alpha=ch1)
            x2 = torch.add(x, b0 + b1, alpha=-h / 2)
            if self.eta > 0:
                x2.add_(z, alpha=math.sqrt(self.eta * h) * (g0 + g1) / 2)
            ref = x1.abs() if x_prev is None else torch.maximum(x1.abs(), x_prev.abs())
            delta = torch.clamp(ref * self.rtol, min=self.atol) if self.atol > 0 else ref * self.rtol
            err = float(((x1 - x2) / delta).pow(2).flatten(1).mean(1).sqrt().max())
            steps += 1
            if not math.isfinite(err):
                err = 1e10
            if err <= 1.0 or steps >= self.max_steps:
                x, x_prev, t, b0 = x2, x1, t - h, None
            h = h * min(5.0, 0.9 * max(err, 1e-10) ** -0.9)
        if denoise:
            x = field(x, t).mul(float(sch.alpha(s)))
        return x, state

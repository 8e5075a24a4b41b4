"""Ensemble Kalman guidance: derivative-free posterior sampling (only forward evaluations of ``A``).

An ensemble of ``num`` particles follows the probability-flow ODE of the posterior (DDIM steps).
The posterior's denoiser needs ``Cov[x | x_t] A^T = (sigma^2 / alpha) J^T A^T`` (``J = dx_hat/dx_t``),
which gradient methods get by differentiating. Here it comes from the ensemble: the
cross-covariance ``C^{xG}`` of the particles ``x_t^j`` and their predicted measurements
``G_j = A(x_hat(x_t^j))`` is ``C^{xx} J^T A^T`` to first order (statistical linearisation), and
preconditioning by ``C^{xx}`` (approximated by its mean variance ``v_t``) gives

    x_hat_j' = x_hat_j + gamma (sigma^2 / alpha) / v_t  C^{xG} Gamma_t^-1 (y - G_j),
    Gamma_t = (noise^2 + r_t^2 tr(A A^T) / M) I,   r_t^2 = v sigma^2 / (alpha^2 v + sigma^2),

so no derivative of ``A`` or of the network is taken; the particles interact through ``C^{xG}``.
From few particles the estimate, multiplied by ``sigma^2 / alpha``, can overshoot near pure noise;
each particle's correction is then scaled back to the least-squares point along its direction (see
``_no_overshoot``; an exact Kalman step is never scaled). The corrections live in the span of the
ensemble: use more particles than the signal has dimensions.
``tr(A A^T)`` is estimated from forward evaluations on random inputs. Zheng, Chu, Wang, Kovachki,
Baptista, Yue, "Ensemble Kalman Diffusion Guidance: A Derivative-free Method for Inverse Problems",
2024, arXiv:2409.20175.
"""

from __future__ import annotations

import warnings

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource, as_noise
from ..samplers import DDIM
from ..sampling import prior_sample, sample
from .guidance import gaussian_posterior_var
from .operators import Operator
from .result import Solution


def _trace_aat(operator: Operator, shape, dtype, probes: int = 16) -> float:
    """``tr(A A^T) = E ||A z||^2`` (Hutchinson, forward evaluations only; exact in expectation for
    linear ``A``, a local slope estimate otherwise)."""
    z = torch.randn((probes, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    base = operator(torch.zeros_like(z))
    return float((operator(z) - base).reshape(probes, -1).pow(2).sum(1).mean())


def _no_overshoot(operator: Operator, x_hat, delta, residual, pred):
    """Scale each particle's correction ``delta`` by ``c = min(1, <r, A delta> / ||A delta||^2)``.

    An exact Kalman correction never passes the least-squares point along its own direction (its
    measurement-space gain has eigenvalues in ``[0, 1)``, so ``<r, A delta> >= ||A delta||^2`` and
    ``c = 1``); an ensemble estimate from few particles can, by a factor ``~ sigma^2 / alpha`` near
    pure noise. ``A delta`` is a forward difference (exact for linear ``A``), so no derivative is taken.
    """
    n = delta.shape[0]
    a_delta = (operator(x_hat + delta).reshape(n, -1) - pred)
    num = (residual * a_delta).sum(1)
    den = a_delta.pow(2).sum(1)
    c = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den)).clamp(0.0, 1.0)
    return c.reshape(n, *([1] * (delta.ndim - 1))) * delta


class EnsembleKalman(Denoiser):
    """The ensemble-Kalman posterior denoiser (see the module docstring): the batch is the ensemble, so
    its output for one sample depends on the others. Sampled with DDIM (the posterior's ODE) by :func:`enkg`."""

    def __init__(self, denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, *, gamma: float = 1.0,
                 data_var: float = 1.0, trace_aat: float | None = None):
        super().__init__(denoiser.schedule)
        self.inner, self.operator, self.y, self.noise_std = denoiser, operator, y.reshape(-1), float(noise_std)
        self.gamma, self.data_var = float(gamma), float(data_var)
        self.trace_aat = _trace_aat(operator, operator.shape, y.dtype) if trace_aat is None else float(trace_aat)

    def forward(self, x, t, **cond):
        sch, y, num = self.schedule, self.y, x.shape[0]
        a_t, s_t = float(sch.alpha(float(t))), float(sch.sigma(float(t)))
        with torch.no_grad():
            x_hat = self.inner(x, t, **cond)
            if a_t == 0:  # pure noise: the measurement says nothing about x_t
                return x_hat
            pred = self.operator(x_hat).reshape(num, -1)
            dx = (x - x.mean(0)).reshape(num, -1)
            dg = pred - pred.mean(0)
            c_xg = dx.T @ dg / (num - 1)                                   # (D, M)
            v_t = float(dx.pow(2).sum(1).mean()) / dx.shape[1] + 1e-12
            r2 = gaussian_posterior_var(sch, float(t), self.data_var)
            gam = self.noise_std ** 2 + r2 * self.trace_aat / y.numel() + 1e-12
            step = self.gamma * (s_t ** 2 / a_t) / v_t / gam
            delta = step * ((y - pred) @ c_xg.T).reshape(x.shape)
            return x_hat + _no_overshoot(self.operator, x_hat, delta, y - pred, pred)


def enkg(denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
         gamma: float = 1.0, data_var: float = 1.0, noise: NoiseSource | None = None, device=None, dtype=torch.float32,
         progress: bool = False, callback=None):
    """An ensemble of ``num`` posterior samples for ``y = A(x) + noise_std n``: DDIM steps (the posterior's
    probability-flow ODE) of :class:`EnsembleKalman` along the grid ``ts``, which decreases to 0."""
    sched = denoiser.schedule
    ts = torch.as_tensor(ts, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=dtype, device=device).reshape(-1)
    m = y.numel()
    if num < 2:
        raise ValueError(f"ensemble Kalman guidance estimates covariances from its particles: num must be >= 2, got {num}")
    if num <= m:
        warnings.warn(f"ensemble Kalman guidance with {num} particles corrects along at most {num - 1} directions of the "
                      f"{m} measured values: use more particles than measured values (num >= {m + 1})",
                      RuntimeWarning, stacklevel=3)
    noise = as_noise(noise)
    x = prior_sample(sched, (num, *operator.shape), t=float(ts[0]), data_std=data_var ** 0.5, noise=noise, dtype=dtype,
                     device=device)
    post = EnsembleKalman(denoiser, operator, y, noise_std, gamma=gamma, data_var=data_var)
    out = sample(post, DDIM(), ts, x, noise=noise, progress=progress, callback=callback)
    return Solution(out.x, out.nfe, "enkg")

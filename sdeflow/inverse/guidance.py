"""Posterior denoisers: ``E[x | x_t, y]`` approximated from the prior denoiser ``D(x_t) = E[x | x_t]``,
so every sampler of the suite samples the posterior ``p(x | y)`` of ``y = A x + noise_std n``.

All of them are corrections of ``D`` by the measurement residual ``r = y - A D(x_t)``, through the
Tweedie covariance ``Cov[x | x_t] = (sigma^2 / alpha) dD/dx_t`` (symmetric), which is applied with
vector-Jacobian products of the denoiser:

- :class:`MMPS` (moment matching): ``x_hat = D + C A^T (A C A^T + s^2 I)^-1 r`` with the full
  ``C = Cov[x | x_t]``, solved by conjugate gradients. Exact when ``p(x | x_t)`` is Gaussian (a
  Gaussian prior). Rozet et al., "Learning Diffusion Priors from Observations by Expectation
  Maximization", 2024, arXiv:2405.13712; Boys et al., "Tweedie Moment Projected Diffusions for
  Inverse Problems", 2023, arXiv:2310.06721.
- :class:`PiGDM`: the same with ``C`` replaced by ``r_t^2 I`` inside the solve,
  ``r_t^2 = v sigma^2 / (alpha^2 v + sigma^2)`` for data variance ``v``: ``x_hat = D + (sigma^2/alpha)
  J^T A^T (r_t^2 A A^T + s^2 I)^-1 r``. Song et al., "Pseudoinverse-Guided Diffusion Models for
  Inverse Problems", ICLR 2023.
- :class:`DPS`: ``x_hat = D - zeta (sigma^2 / alpha) grad_{x_t} ||y - A(D)||`` (the residual norm's
  gradient, the step-size normalisation of the paper, finite at zero noise; works with nonlinear
  ``A`` through autograd). Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse
  Problems", 2022, arXiv:2209.14687.
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..shapes import as_time, expand_as_batch
from .operators import LinearOperator, Operator, conjugate_gradient


class PosteriorDenoiser(Denoiser):
    """Base class: the prior ``denoiser``, the ``operator``, the measurement ``y`` (one measurement
    ``out_shape`` shared by the batch, or one per sample ``(B, *out_shape)``) and ``noise_std``."""

    needs_linear = True

    def __init__(self, denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float):
        super().__init__(denoiser.schedule)
        if self.needs_linear and not isinstance(operator, LinearOperator):
            raise ValueError(f"{type(self).__name__} needs a linear operator with an adjoint; use DPS or the "
                             "ensemble-Kalman method for nonlinear operators")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.prior, self.operator, self.noise_std = denoiser, operator, float(noise_std)
        self.y = torch.as_tensor(y)

    def _y(self, like: torch.Tensor) -> torch.Tensor:
        y = self.y.to(device=like.device, dtype=like.dtype)
        return y.expand(like.shape[0], *y.shape) if y.shape == like.shape[1:] else y

    def _tweedie(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``sigma^2 / alpha`` at ``t`` broadcast against ``x_t``."""
        t = as_time(t, device=x_t.device)
        c = self.schedule.sigma(t) ** 2 / self.schedule.alpha(t)
        return expand_as_batch(c.to(x_t.dtype), x_t)

    def forward(self, x_t, t, **cond):
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            d = self.prior(x, t, **cond)
            out = self.correct(x, d, t)
        return out.detach()

    def correct(self, x: torch.Tensor, d: torch.Tensor, t) -> torch.Tensor:
        """The posterior denoiser from ``x_t`` (``x``, requiring grad) and the prior's ``d``; each method
        defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define correct()")


def gaussian_posterior_var(schedule, t, data_var: float = 1.0):
    """``r_t^2 = Var[x | x_t] = v sigma^2 / (alpha^2 v + sigma^2)`` for data ``N(m, v I)``: the
    isotropic stand-in for the Tweedie covariance used by PiGDM, DAPS, twisted SMC and EnKG (a float
    for a float ``t``, a tensor otherwise; 0 at ``sigma = 0``)."""
    a, s = schedule.alpha(as_time(t)), schedule.sigma(as_time(t))
    r2 = data_var * s * s / (a * a * data_var + s * s)
    return float(r2) if isinstance(t, float) else r2


def _vjp(d: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(d, x, v, retain_graph=True)[0]


class MMPS(PosteriorDenoiser):
    """Moment-matching posterior denoiser (see the module docstring); ``cg_iters`` CG iterations.

    A trained network's Jacobian is only approximately symmetric and positive, so CG is run for a
    few iterations (3, as in the paper): on the digits model, 20 iterations diverge for some inputs
    while 1-5 are stable. With the exact oracle CG converges and more iterations are exact."""

    def __init__(self, denoiser, operator, y, noise_std, cg_iters: int = 3):
        super().__init__(denoiser, operator, y, noise_std)
        self.cg_iters = int(cg_iters)

    def correct(self, x, d, t):
        A, c = self.operator, self._tweedie(x, t)
        def cov(v):
            return c * _vjp(d, x, v)  # Cov[x | x_t] v, the Jacobian being symmetric
        r = self._y(d) - A(d)
        u = conjugate_gradient(lambda w: A(cov(A.adjoint(w))) + self.noise_std ** 2 * w, r.detach(), self.cg_iters)
        return d + cov(A.adjoint(u))


class PiGDM(PosteriorDenoiser):
    """Pseudo-inverse guidance (see the module docstring); ``data_var`` is the data variance ``v``."""

    def __init__(self, denoiser, operator, y, noise_std, data_var: float = 1.0, cg_iters: int = 50):
        super().__init__(denoiser, operator, y, noise_std)
        self.data_var, self.cg_iters = float(data_var), int(cg_iters)

    def correct(self, x, d, t):
        A = self.operator
        r2 = torch.as_tensor(gaussian_posterior_var(self.schedule, as_time(t), self.data_var), dtype=torch.float64)
        r = (self._y(d) - A(d)).detach()
        lam = (self.noise_std ** 2 / r2.clamp_min(1e-30)).to(d.dtype)
        u = A.gram_solve(r, lam, self.cg_iters) / expand_as_batch(r2.clamp_min(1e-30).to(d.dtype), r)
        return d + self._tweedie(x, t) * _vjp(d, x, A.adjoint(u))


class DPS(PosteriorDenoiser):
    """Diffusion posterior sampling (see the module docstring); any differentiable operator."""

    needs_linear = False

    def __init__(self, denoiser, operator, y, noise_std, zeta: float = 1.0):
        super().__init__(denoiser, operator, y, noise_std)
        self.zeta = float(zeta)

    def correct(self, x, d, t):
        r = self._y(d) - self.operator(d)
        norm = torch.sqrt(r.reshape(r.shape[0], -1).pow(2).sum(1) + 1e-20)
        grad = torch.autograd.grad(norm.sum(), x)[0]
        return d - self.zeta * self._tweedie(x, t) * grad

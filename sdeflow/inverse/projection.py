"""Data-consistency denoisers for linear operators: the denoiser's ``x_hat`` is moved towards the
measurement with the operator's pseudo-inverse, so any sampler continues from a consistent estimate.

- :class:`DDNM` (range-null space decomposition): ``x_hat' = x_hat + lam_t A^+ (y - A x_hat)``; with
  ``lam_t = 1`` the range of ``A^T`` is taken from the measurement and the null space from the prior
  (noiseless measurements). With measurement noise, ``lam_t = min(1, (sigma_t / alpha_t) /
  noise_std)`` (DDNM+'s rule) stops the projection from copying the noise once the diffusion's own
  noise level falls below it. Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
  Null-Space Model", 2022, arXiv:2212.00490.
- :class:`DiffPIR` (plug-and-play proximal step): ``x_hat' = argmin_x ||y - A x||^2 + rho_t ||x -
  x_hat||^2 = x_hat + A^T (A A^T + rho_t I)^-1 (y - A x_hat)`` with ``rho_t = lam noise_std^2 /
  (sigma_t / alpha_t)^2``; use it with a DDIM-type sampler whose ``eta`` plays DiffPIR's ``zeta``.
  Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image Restoration", 2023,
  arXiv:2305.08995.

``A^+ r = A^T (A A^T)^-1 r`` is computed by the operator's Gram solve (closed form for masks,
downsampling and the identity, conjugate gradients otherwise, regularised by ``1e-6`` relative).
"""

from __future__ import annotations

import torch

from ..shapes import as_time, expand_as_batch
from .guidance import PosteriorDenoiser


class _Proximal(PosteriorDenoiser):
    def __init__(self, denoiser, operator, y, noise_std, cg_iters: int = 50):
        super().__init__(denoiser, operator, y, noise_std)
        self.cg_iters = int(cg_iters)

    def forward(self, x_t, t, **cond):
        with torch.no_grad():
            d = self.prior(x_t, t, **cond)
            return self.correct(x_t, d, t)

    def _noise_level(self, t, like) -> torch.Tensor:
        tt = as_time(t, device=like.device)
        return self.schedule.noise_to_signal(tt).to(torch.float64)


class DDNM(_Proximal):
    def correct(self, x, d, t):
        A = self.operator
        r = self._y(d) - A(d)
        level = self._noise_level(t, d)
        lam = torch.ones_like(level) if self.noise_std == 0 else torch.clamp(level / self.noise_std, max=1.0)
        step = A.adjoint(A.gram_solve(r, 1e-6, self.cg_iters))
        return d + expand_as_batch(lam.to(d.dtype), d) * step


class DiffPIR(_Proximal):
    def __init__(self, denoiser, operator, y, noise_std, lam: float = 1.0, cg_iters: int = 50):
        super().__init__(denoiser, operator, y, noise_std, cg_iters)
        self.lam = float(lam)

    def correct(self, x, d, t):
        A = self.operator
        r = self._y(d) - A(d)
        rho = self.lam * self.noise_std ** 2 / self._noise_level(t, d).clamp_min(1e-12) ** 2
        return d + A.adjoint(A.gram_solve(r, (rho + 1e-6).to(d.dtype), self.cg_iters))

"""Data-consistency denoisers for linear operators: the denoiser's ``x_hat`` is moved towards the
measurement with the operator's pseudo-inverse, so any sampler continues from a consistent estimate.

- :class:`DDNM` (range-null space decomposition) as a denoiser transform for any sampler:
  ``x_hat' = x_hat + A^T g(A A^T) (y - A x_hat)``. Noiseless, ``g(e) = 1/e`` (the pseudo-inverse: the
  range of ``A^T`` is taken from the measurement, the null space from the prior). With measurement
  noise, singular direction ``i`` (value ``s_i``) is projected by the fraction ``lam_i = min(1, s_i
  (sigma_t / alpha_t) / noise_std)`` (DDNM+'s rule, here with the marginal noise level: the
  measurement's noise in that direction, ``noise_std / s_i``, is not copied once it exceeds the
  diffusion's own). Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
  Null-Space Model", 2022, arXiv:2212.00490.
- :func:`ddrm` (denoising diffusion restoration): in the SVD ``A = U S V^T``, with ``u_t = x_t /
  alpha_t = x + l_t eps`` (``l_t = sigma_t / alpha_t``) and the measurement seen as ``y_bar_i = (U^T
  y)_i / s_i = x_i + n_i eps`` (``n_i = noise_std / s_i``), each step to level ``l_s`` updates
  coordinate ``i`` of ``V^T u`` by one of three kernels: null directions by DDIM with ``eta``
  (``x_hat_i + l_s (sqrt(1 - eta^2) (u_i - x_hat_i) / l_t + eta z)``); directions whose measurement is
  noisier than the state (``l_s < n_i``) by the same kernel with ``y_bar_i`` in place of ``u_i``;
  the others are set to ``(1 - eta_b) x_hat_i + eta_b y_bar_i`` plus noise of variance ``l_s^2 -
  eta_b^2 n_i^2``, i.e. to the measurement noised up to the state's level. Every measurement enters
  once at its own noise level. The two DDIM kernels are DDIM's own (``eta = 1``: the ancestral
  kernel, the default), whose fresh noise shrinks with the step; DDRM's published kernel keeps a
  fixed fraction ``eta`` of fresh noise whatever the step, which loses variance and, with ``eta < 1``,
  pulls the weakly measured directions towards the noisy ``y_bar`` a little more at every step, so
  its error grows with the number of steps. Kawar, Elad,
  Ermon, Song, "Denoising Diffusion Restoration Models", NeurIPS 2022, arXiv:2201.11793.
- :class:`DiffPIR` (plug-and-play proximal step): ``x_hat' = argmin_x ||y - A x||^2 + rho_t ||x -
  x_hat||^2 = x_hat + A^T (A A^T + rho_t I)^-1 (y - A x_hat)`` with ``rho_t = lam noise_std^2 /
  (sigma_t / alpha_t)^2``; use it with a DDIM-type sampler whose ``eta`` plays DiffPIR's ``zeta``.
  Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image Restoration", 2023,
  arXiv:2305.08995.

DiffPIR's ``(A A^T + rho I)^-1`` is a Gram solve (closed form for masks, downsampling and the
identity, conjugate gradients otherwise).
"""

from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..samplers import DDIM
from ..noise import NoiseSource
from ..run import Run
from ..sampling import prior_std
from ..shapes import as_time
from .guidance import PosteriorDenoiser
from .result import Solution
from .operators import LinearOperator


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


def _pseudo_inverse(e: torch.Tensor) -> torch.Tensor:
    """``1 / e`` on the directions kept (``e > 1e-10 max e``), 0 elsewhere."""
    keep = e > 1e-10 * e.max()
    return torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))


class DDNM(_Proximal):
    """Range-null space data consistency as a denoiser transform: ``x_hat`` takes its range of ``A^T``
    from the measurement (fractionally, by DDNM+'s rule, under measurement noise) and keeps the
    prior's null space (see the module docstring)."""

    def correct(self, x, d, t):
        A = self.operator
        r = self._y(d) - A(d)
        level = self._noise_level(t, d)
        noise = self.noise_std

        def g(e):
            if noise == 0:
                return _pseudo_inverse(e)
            lam = torch.clamp(level.reshape(-1, *([1] * e.ndim)) * e.sqrt() / noise, max=1.0)
            return lam * _pseudo_inverse(e)

        return d + A.adjoint(A.gram_apply(r, g))


def ddrm(denoiser: Denoiser, operator: LinearOperator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
         eta: float = 1.0, eta_b: float = 1.0, noise: NoiseSource | None = None, device=None, dtype=torch.float32,
         cond: dict | None = None, progress: bool = False, callback=None):
    """``num`` DDRM restorations for ``y = A x + noise_std n`` along the decreasing grid
    ``ts`` (ending at 0). ``V^T v`` on the range is ``S^-1 U^T A v`` and ``V`` applied to range
    coordinates is ``A^T U S^-1``, so the operator's eigendecomposition of ``A A^T`` suffices."""
    if not isinstance(operator, LinearOperator):
        raise ValueError("DDRM needs a linear operator; use DPS or the ensemble-Kalman method for nonlinear ones")
    if not (0.0 <= eta <= 1.0 and 0.0 <= eta_b <= 1.0):
        raise ValueError(f"eta and eta_b must lie in [0, 1], got {eta} and {eta_b}")
    sched, cond, A = denoiser.schedule, cond or {}, operator
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if float(sched.alpha(ts[0])) == 0.0:
        raise ValueError("DDRM needs alpha > 0 on the whole grid; start it below t = 1 for this schedule")
    e, qt, q = A.gram_eig()
    inv_s = _pseudo_inverse(e).sqrt().to(dtype)          # 1 / s_i on the kept directions, 0 elsewhere
    def to_c(v):
        return qt(A(v)) * inv_s                     # V^T v on the range
    def from_c(c):
        return A.adjoint(q(c * inv_s))            # V c
    y = torch.as_tensor(y, dtype=dtype, device=device)
    y_bar = qt(y.reshape(-1, *A.out_shape)) * inv_s     # S^-1 U^T y
    n = noise_std * inv_s
    run = Run(denoiser, cond, noise=noise, progress=progress, total=len(ts) - 1, desc="ddrm", callback=callback)

    def randn():
        return run.fresh((num, *A.shape), dtype, device)
    x = randn() * prior_std(sched, float(ts[0]), 1.0)
    keep = (inv_s > 0).to(x.device)
    ddim = DDIM(eta=eta)
    for i in range(len(ts) - 1):
        a_t, s_t, a_s, s_s = (float(v) for v in (sched.alpha(ts[i]), sched.sigma(ts[i]), sched.alpha(ts[i + 1]),
                                                  sched.sigma(ts[i + 1])))
        l_s = s_s / a_s
        run.step = i
        with torch.no_grad(), run:
            x_hat = run(x, float(ts[i]))
        z = randn()
        c_x, c_hat, c_z = ddim.step_coefficients(a_t, s_t, a_s, s_s, ts[i], ts[i + 1], sched)
        u = (c_x * x + c_hat * x_hat + c_z * z) / a_s                          # DDIM, every direction
        c_hat, c_z = to_c(x_hat), to_c(z)
        c = (1 - eta_b) * c_hat + eta_b * y_bar + (l_s ** 2 - (eta_b * n) ** 2).clamp_min(0.0).sqrt() * c_z
        if noise_std > 0:
            below = l_s < n
            n_b = torch.where(below, n, torch.ones_like(n))
            r2 = (l_s / n_b) ** 2
            fresh_b = eta * l_s * (1 - r2).clamp_min(0.0).sqrt()
            # sqrt(l_s^2 - fresh_b^2) = l_s sqrt(1 - eta^2 (1 - r^2)), written without the cancellation
            # that made it the root of a negative number (NaN) in float32
            toward_y = l_s * ((1 - eta ** 2) + eta ** 2 * r2).clamp_min(0.0).sqrt()
            c_below = c_hat + toward_y * (y_bar - c_hat) / n_b + fresh_b * c_z
            c = torch.where(below, c_below, c)
        u = u + from_c(torch.where(keep, c - to_c(u), torch.zeros_like(c)))
        x = a_s * u
        run.stepped(i, ts[i], ts[i + 1], x)
    run.finish(x)
    return Solution(x, run.calls, "ddrm")


class DiffPIR(_Proximal):
    """DiffPIR's proximal step as a denoiser transform: ``x_hat`` moved to ``argmin ||y - A x||^2 +
    rho_t ||x - x_hat||^2`` with ``rho_t = lam noise_std^2 / (sigma_t / alpha_t)^2`` (see the module
    docstring); pair it with a DDIM-type sampler."""

    def __init__(self, denoiser, operator, y, noise_std, lam: float = 1.0, cg_iters: int = 50):
        super().__init__(denoiser, operator, y, noise_std, cg_iters)
        self.lam = float(lam)

    def correct(self, x, d, t):
        A = self.operator
        r = self._y(d) - A(d)
        rho = self.lam * self.noise_std ** 2 / self._noise_level(t, d).clamp_min(1e-12) ** 2
        return d + A.adjoint(A.gram_solve(r, (rho + 1e-6).to(d.dtype), self.cg_iters))

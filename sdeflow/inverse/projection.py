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

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..denoisers import Denoiser
from ..noise import NoiseSource, as_noise
from ..samplers import DDIM
from ..samplers.base import ByIdentity, Plan, Sampler
from ..sampling import prior_sample, sample
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


class DDRMRow(NamedTuple):
    """A DDRM step to ``s``: DDIM's coefficients ``x_s = c_x x_t + c_hat x_hat + c_z z``, ``alpha_s`` and the
    noise level ``l_s = sigma_s / alpha_s``."""

    c_x: float
    c_hat: float
    c_z: float
    a_s: float
    l_s: float


@dataclass(frozen=True, eq=False)
class DDRM(ByIdentity, Sampler):
    """DDRM's step as a sampler (see the module docstring): DDIM with ``eta`` on every direction of
    ``V^T u``, then the measured directions replaced by their kernel. ``V^T v`` on the range is
    ``S^-1 U^T A v`` and ``V`` applied to range coordinates is ``A^T U S^-1``, so the eigendecomposition
    of ``A A^T`` suffices (computed once, at the first step)."""

    operator: LinearOperator
    y: torch.Tensor
    noise_std: float
    eta: float = 1.0
    eta_b: float = 1.0
    _spectral: dict = field(default_factory=dict, repr=False)
    stochastic = True

    def __post_init__(self):
        if not isinstance(self.operator, LinearOperator):
            raise ValueError("DDRM needs a linear operator; use DPS or the ensemble-Kalman method for nonlinear ones")
        if not (0.0 <= self.eta <= 1.0 and 0.0 <= self.eta_b <= 1.0):
            raise ValueError(f"eta and eta_b must lie in [0, 1], got {self.eta} and {self.eta_b}")

    def prepare(self, schedule, ts):
        if float(schedule.alpha(ts[0])) == 0.0:
            raise ValueError("DDRM needs alpha > 0 on the whole grid; start it below t = 1 for this schedule")
        ddim, rows = DDIM(eta=self.eta), []
        for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
            a_t, s_t, a_s, s_s = (float(v) for v in (schedule.alpha(t), schedule.sigma(t), schedule.alpha(s),
                                                      schedule.sigma(s)))
            rows.append(DDRMRow(*ddim.step_coefficients(a_t, s_t, a_s, s_s, t, s, schedule), a_s, s_s / a_s))
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), rows, len(rows))

    def _spectrum(self, like: torch.Tensor):
        """``(to_c, from_c, y_bar, n, keep)`` in ``like``'s dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._spectral:
            A = self.operator
            e, qt, q = A.gram_eig()
            inv_s = _pseudo_inverse(e).sqrt().to(dtype=like.dtype, device=like.device)  # 1 / s_i kept, 0 elsewhere

            def to_c(v):
                return qt(A(v)) * inv_s                 # V^T v on the range

            def from_c(c):
                return A.adjoint(q(c * inv_s))          # V c

            y = torch.as_tensor(self.y, dtype=like.dtype, device=like.device)
            y_bar = qt(y.reshape(-1, *A.out_shape)) * inv_s  # S^-1 U^T y
            self._spectral[key] = (to_c, from_c, y_bar, self.noise_std * inv_s, inv_s > 0)
        return self._spectral[key]

    def step(self, field, x, i, plan, state, noise):
        c_x, c_hat, c_z, a_s, l_s = plan.coef[i]
        to_c, from_c, y_bar, n, keep = self._spectrum(x)
        eta, eta_b = self.eta, self.eta_b
        x_hat = field(x, plan.t[i])
        z = noise()
        u = (c_x * x + c_hat * x_hat + c_z * z) / a_s                          # DDIM, every direction
        c_hat, c_z = to_c(x_hat), to_c(z)
        c = (1 - eta_b) * c_hat + eta_b * y_bar + (l_s ** 2 - (eta_b * n) ** 2).clamp_min(0.0).sqrt() * c_z
        if self.noise_std > 0:
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
        return a_s * u, state


def ddrm(denoiser: Denoiser, operator: LinearOperator, y: torch.Tensor, noise_std: float, ts: torch.Tensor, num: int, *,
         eta: float = 1.0, eta_b: float = 1.0, noise: NoiseSource | None = None, device=None, dtype=torch.float32,
         cond: dict | None = None, progress: bool = False, callback=None):
    """``num`` DDRM restorations for ``y = A x + noise_std n`` along the decreasing grid ``ts`` (ending at
    0): the :class:`DDRM` sampler run by :func:`sdeflow.sample` from the prior at ``ts[0]``."""
    sampler = DDRM(operator, torch.as_tensor(y, dtype=dtype, device=device), noise_std, eta, eta_b)
    ts = torch.as_tensor(ts, dtype=torch.float64)
    noise = as_noise(noise)
    x = prior_sample(denoiser.schedule, (num, *operator.shape), t=float(ts[0]), data_std=1.0, noise=noise, dtype=dtype,
                     device=device)
    with torch.no_grad():
        out = sample(denoiser, sampler, ts, x, cond=cond, noise=noise, progress=progress, callback=callback)
    return Solution(out.x, out.nfe, "ddrm")


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

"""Euler-ancestral: k-diffusion's ancestral sampler, in sdeflow's terms.

On ``y = x / alpha`` with noise level ``rho = sigma / alpha`` it splits the step from ``rho_t`` to
``rho_s`` into ``rho_up = min(rho_s, eta sqrt(rho_s^2 (rho_t^2 - rho_s^2) / rho_t^2))`` and
``rho_down = sqrt(rho_s^2 - rho_up^2)``, takes an Euler step to ``rho_down`` and adds ``rho_up z``. An
Euler step in ``rho`` is DDIM's frozen-``x_hat`` step, and ``alpha_s rho_up`` is DDIM's noise
``eta sigma_s sqrt(1 - exp(-2h))``, so this sampler *is* DDIM with the same ``eta`` (tested); it
exists under its familiar name with k-diffusion's default ``eta = 1``.

Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
2022 (k-diffusion's ``sample_euler_ancestral``); Song et al., DDIM, 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ddim import DDIM


@dataclass(frozen=True)
class EulerAncestral(DDIM):
    eta: float = 1.0

"""Dynamic thresholding of ``x_hat`` for pixel-space models (a denoiser transform).

Per sample, ``s = max(quantile(|x_hat|, p), max_value)`` and ``x_hat <- clip(x_hat, -s, s) * max_value / s``:
values inside the data range ``[-max_value, max_value]`` are kept unless a large fraction of the
sample saturates, in which case the whole sample is pulled back into range. Works with every sampler.

Reference: Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding" (Imagen), 2022, arXiv:2205.11487; Lu et al., "DPM-Solver++", 2022, arXiv:2211.01095.
"""

from __future__ import annotations

import torch

from .base import Denoiser


class DynamicThresholding(Denoiser):
    """``denoiser`` with its ``x_hat`` dynamically thresholded per sample (see the module docstring):
    ``percentile`` of ``|x_hat|`` sets the threshold, never below ``max_value``, the data's range."""

    def __init__(self, denoiser: Denoiser, percentile: float = 0.995, max_value: float = 1.0):
        super().__init__(denoiser.schedule)
        if not 0.0 < percentile <= 1.0 or max_value <= 0:
            raise ValueError("need 0 < percentile <= 1 and max_value > 0")
        self.inner, self.percentile, self.max_value = denoiser, percentile, max_value

    def forward(self, x_t, t, **cond):
        x_hat = self.inner(x_t, t, **cond)
        flat = x_hat.reshape(x_hat.shape[0], -1).abs().float()
        s = torch.quantile(flat, self.percentile, dim=1).clamp_min(self.max_value).to(x_hat.dtype)
        s = s.reshape(-1, *([1] * (x_hat.ndim - 1)))
        return torch.minimum(torch.maximum(x_hat, -s), s) * (self.max_value / s)

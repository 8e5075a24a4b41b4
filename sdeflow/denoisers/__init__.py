"""Denoisers: the learned (or exact) field ``x_hat(x_t, t) = E[x | x_t]``."""

from .base import Denoiser
from .model import TIME_INPUTS, ModelDenoiser
from .thresholding import DynamicThresholding

__all__ = ["Denoiser", "ModelDenoiser", "TIME_INPUTS", "DynamicThresholding"]

"""Denoisers: the learned (or exact) field ``x_hat(x_t, t) = E[x | x_t]``."""

from .base import Denoiser
from .flow_map import FlowMap, FlowMapDenoiser, jump_coefficients
from .model import TIME_INPUTS, ModelDenoiser, checked_output, unwrap_output
from .thresholding import DynamicThresholding

__all__ = ["Denoiser", "FlowMap", "FlowMapDenoiser", "jump_coefficients", "ModelDenoiser", "TIME_INPUTS", "DynamicThresholding",
           "checked_output", "unwrap_output"]

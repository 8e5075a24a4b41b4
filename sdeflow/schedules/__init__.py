"""Forward processes ``x_t = alpha(t) x + sigma(t) eps`` on ``t`` in [0, 1] (0 = data)."""

from .base import Schedule
from .discrete import DiscreteVP, ddpm_linear, scaled_linear
from .interpolants import RectifiedFlow, Trigonometric
from .sigma import EDM, VE
from .vp import VPCosine, VPLinear, VPSchedule

from ..names import NameTable

#: Schedules by name, with their defaults (a :class:`~sdeflow.names.NameTable`).
SCHEDULES = NameTable("schedule", {
    "vp-linear": (VPLinear, "variance preserving, linear beta (score SDE, continuous DDPM)"),
    "vp-cosine": (VPCosine, "variance preserving, cosine (improved DDPM), zero terminal SNR"),
    "ddpm-linear": (ddpm_linear, "DDPM's 1000 discrete linear betas"),
    "scaled-linear": (scaled_linear, "Stable Diffusion's 1000 discrete scaled-linear betas"),
    "ve": (VE, "variance exploding (score SDE)"),
    "edm": (EDM, "EDM's sigma space, sigma = 80 t"),
    "rectified-flow": (RectifiedFlow, "rectified flow / flow matching: alpha = 1 - t, sigma = t"),
    "trigonometric": (Trigonometric, "trigonometric interpolant: alpha = cos(pi t / 2), sigma = sin(pi t / 2)"),
})

__all__ = ["SCHEDULES", "Schedule", "VPSchedule", "VPLinear", "VPCosine", "DiscreteVP", "ddpm_linear", "scaled_linear",
           "VE", "EDM", "RectifiedFlow", "Trigonometric"]

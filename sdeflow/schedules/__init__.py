"""Forward processes ``x_t = alpha(t) x + sigma(t) eps`` on ``t`` in [0, 1] (0 = data)."""

from .base import Schedule
from .discrete import DiscreteVP, ddpm_linear, scaled_linear
from .interpolants import RectifiedFlow, Trigonometric
from .sigma import EDM, VE
from .vp import VPCosine, VPLinear, VPSchedule

__all__ = ["Schedule", "VPSchedule", "VPLinear", "VPCosine", "DiscreteVP", "ddpm_linear", "scaled_linear",
           "VE", "EDM", "RectifiedFlow", "Trigonometric"]

"""Samplers: immutable step rules driven by :func:`sdeflow.sample`, one per file."""

from .base import Plan, Sampler, ode_coefficients
from .ddim import DDIM
from .euler import Euler
from .heun import Heun

__all__ = ["Sampler", "Plan", "ode_coefficients", "Euler", "DDIM", "Heun"]

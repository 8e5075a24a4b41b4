"""Inverse problems with diffusion and flow priors: measurement operators with adjoints."""

from .operators import (Blur, Downsample, Identity, LinearOperator, Mask, Matrix, Nonlinear, Operator, RandomProjection,
                        conjugate_gradient)

__all__ = ["Blur", "Downsample", "Identity", "LinearOperator", "Mask", "Matrix", "Nonlinear", "Operator",
           "RandomProjection", "conjugate_gradient"]

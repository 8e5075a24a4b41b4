"""The one place where per-sample coefficients meet state tensors.

A time ``t`` is a Python number, a 0-d tensor or a ``(B,)`` tensor; a state ``x`` is ``(B, *)``.
"""

from __future__ import annotations

import torch

Time = float | torch.Tensor


def as_time(t: Time, *, device=None) -> torch.Tensor:
    """``t`` as a float64 tensor (0-d or ``(B,)``), the dtype all schedule arithmetic uses."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if t.ndim > 1:
        raise ValueError(f"time must be a scalar or a (B,) tensor, got shape {tuple(t.shape)}")
    return t


def expand_as_batch(c: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Reshape a scalar or ``(B,)`` coefficient so it broadcasts against ``x`` of shape ``(B, *)``."""
    if not isinstance(c, torch.Tensor) or c.ndim == 0:
        return c
    if c.ndim != 1 or c.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"coefficient of shape {tuple(c.shape)} does not match a batch of {x.shape[0]}")
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


def check_batch(x, name: str = "x") -> None:
    """Refuse anything but a floating-point ``(B, *)`` tensor, naming the argument."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor of shape (B, ...)")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no samples (shape {tuple(x.shape)}): give at least one")

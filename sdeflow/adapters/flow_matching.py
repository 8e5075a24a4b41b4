"""Velocity fields in the flow_matching / torchcfm convention as sdeflow denoisers.

Those libraries run time from noise (``t = 0``) to data (``t = 1``): ``x_t = t x1 + (1 - t) x0`` with
``x0`` noise, and the network predicts ``u = dx_t/dt = x1 - x0``. sdeflow runs time the other way
(``t = 0`` data, ``t = 1`` noise, :class:`~sdeflow.schedules.RectifiedFlow`), so its time is
``1 - t`` and its velocity ``dx/dt = -u``. :func:`from_flow_matching` does both in one call;
``sigma_min`` covers torchcfm's and flow_matching's ``x_t = t x1 + (1 - (1 - sigma_min) t) x0`` path.

:func:`from_flow_matching_tokens` does the same for flow_matching's discrete models (``MixtureDiscreteProbPath``):
a posterior over tokens at time ``1 - t``, on sdeflow's masked or uniform process with the matching schedule.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..denoisers import ModelDenoiser
from ..discrete.model import carry_over
from ..schedules import RectifiedFlow


class _Reversed(torch.nn.Module):
    """``u(x, 1 - t)`` negated: a noise-to-data velocity as sdeflow's data-to-noise one."""

    def __init__(self, velocity, time_kw: str | None):
        super().__init__()
        self.velocity, self.time_kw = velocity, time_kw

    def forward(self, x, t, **cond):
        s = 1.0 - t
        out = self.velocity(x, **{self.time_kw: s}, **cond) if self.time_kw else self.velocity(x, s, **cond)
        return -out


def from_flow_matching(velocity: Callable, *, sigma_min: float = 0.0, time_kw: str | None = None,
                       dtype: torch.dtype | None = None) -> ModelDenoiser:
    """A velocity ``velocity(x, t, **cond)`` with ``t`` from noise (0) to data (1) as a sdeflow
    denoiser on rectified flow. ``time_kw``: pass time by keyword (flow_matching's ``ModelWrapper``
    takes ``velocity(x=..., t=...)``: use ``time_kw="t"``). ``sigma_min > 0`` is not the rectified-flow
    path; it is refused with the change of variables to use instead."""
    if sigma_min != 0.0:
        raise ValueError("sigma_min > 0 gives x_t = t x1 + (1 - (1 - sigma_min) t) x0, not rectified flow; "
                         "rescale the state by 1 / (1 - (1 - sigma_min) t) or train with sigma_min = 0")
    if not callable(velocity):
        raise TypeError("velocity must be callable: velocity(x, t, **cond) -> dx/dt")
    return ModelDenoiser(_Reversed(velocity, time_kw), RectifiedFlow(), "velocity", time_input="t", dtype=dtype)




class FlowMatchingTokens:
    """A flow_matching discrete model (``model(x=..., t=...) -> (B, L, vocab_size)`` posterior probabilities of
    the clean tokens, its time from the source at 0 to the data at 1) as sdeflow's token model: ``(x_t, t) ->
    (B, L, V)`` float64 at sdeflow's time ``1 - t``. On the masked path the mask's column is dropped and a token
    that is not masked is its own clean value (true of the exact posterior; flow_matching's solver then leaves
    it as it is too). The model's time has ``time_dtype`` (float32, as flow_matching's default grid gives)."""

    def __init__(self, model: Callable, process, time_dtype: torch.dtype = torch.float32, **extras):
        self.model, self.process, self.time_dtype, self.extras = model, process, time_dtype, extras

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        s = (1.0 - torch.as_tensor(t, dtype=torch.float64)).to(self.time_dtype).reshape(-1).expand(x_t.shape[0])
        probs = self.model(x=x_t, t=s.to(x_t.device), **self.extras, **cond).to(torch.float64)[..., :self.process.vocab]
        return carry_over(self.process, x_t, probs / probs.sum(-1, keepdim=True)).cpu()


def from_flow_matching_tokens(model: Callable, scheduler, vocab_size: int, *, source: str = "mask",
                              mask_token: int | None = None, time_dtype: torch.dtype = torch.float32, **extras):
    """A model trained on flow_matching's ``MixtureDiscreteProbPath(scheduler)`` as ``(model, process)`` for
    :mod:`sdeflow.discrete`'s samplers. ``vocab_size`` counts every id the model outputs; ``source="mask"``: the
    source is the mask token ``mask_token`` (default and only supported: the last id, ``vocab_size - 1``, which
    is sdeflow's mask); ``source="uniform"``: uniform over the ``vocab_size`` tokens. ``scheduler``: a
    ``CondOTScheduler`` (sdeflow's ``linear``) or ``PolynomialConvexScheduler(n)`` (``power`` n)."""
    from ..discrete import Masked, TokenSchedule, Uniform

    name = type(scheduler).__name__
    if name == "CondOTScheduler":
        schedule = TokenSchedule("linear")
    elif name == "PolynomialConvexScheduler":
        schedule = TokenSchedule("power", float(scheduler.n))
    else:
        raise ValueError(f"flow_matching scheduler {name} has no sdeflow token schedule; supported: CondOTScheduler, "
                         "PolynomialConvexScheduler")
    if source == "mask":
        mask_token = vocab_size - 1 if mask_token is None else mask_token
        if mask_token != vocab_size - 1:
            raise ValueError(f"the mask token must be the last id ({vocab_size - 1}), sdeflow's mask; got {mask_token}")
        process = Masked(vocab_size - 1, schedule)
    elif source == "uniform":
        process = Uniform(vocab_size, schedule)
    else:
        raise ValueError(f"source must be mask or uniform, got {source!r}")
    return FlowMatchingTokens(model, process, time_dtype, **extras), process


__all__ = ["FlowMatchingTokens", "from_flow_matching", "from_flow_matching_tokens"]

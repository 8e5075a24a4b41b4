"""The result every posterior sampler returns, whichever loop ran it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Solution:
    """``x``: ``(num, *shape)`` posterior samples (RED-diff: point estimates); ``nfe``: network
    evaluations; ``method``: the method's name; ``info``: its diagnostics (twisted SMC: ``ess``, the
    effective sample size after every step, and ``log_weights``, the final ones)."""

    x: torch.Tensor
    nfe: int
    method: str = ""
    info: dict = field(default_factory=dict)

"""UniPC: the unified predictor (UniP) and corrector (UniC), B(h) variants ``bh1`` and ``bh2``.

With ``h = lam_s - lam_t``, ``hh = -h`` (data form) or ``hh = h`` (noise form), ``S = alpha_s``
(data) or ``sigma_s`` (noise), earlier points at ``r_j = (lam_j - lam_t)/h`` and
``D1_j = (D_j - D_0)/r_j``, the base step is ``x~ = L x - S expm1(hh) D_0`` (DDIM) and

    UniP-k:  x_s = x~ - S B(h) sum_{j<k} rho^p_j D1_j
    UniC-k:  x_s^c = x~ - S B(h) (sum_{j<k} rho^c_j D1_j + rho^c_k (D_new - D_0))

where ``D_new`` is the model output at the predicted ``x_s`` (reused by the next step, so the
corrector costs no NFE) and the ``rho`` solve ``R rho = b`` with ``R_ij = r_j^(i)`` and
``b_i = i! h phi_{i+1}(hh) / B(h)``; ``B(h) = hh`` (bh1) or ``expm1(hh)`` (bh2). UniP-2 uses
``rho = 1/2``. Without the corrector and at order 1, UniPC is DDIM.

Reference: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", 2023, arXiv:2302.04867.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engine import Multistep
from .expint import unic_weights, unip_weights


@dataclass(frozen=True)
class UniPC(Multistep):
    """UniPC multistep sampler; ``corrector=False`` gives UniP alone."""

    corrector: bool = True
    variant: str = "bh2"
    form: str = "data"

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in ("bh1", "bh2") or self.form not in ("data", "noise"):
            raise ValueError("UniPC variant must be 'bh1' or 'bh2' and form 'data' or 'noise'")

    def weights(self, schedule, info, history, k):
        return unip_weights(self.form, info, history, k, self.variant)

    def corrector_weights(self, info, history, k):
        # bh1's B(h) = h grows without bound on a step from pure noise; bh2's stays bounded
        return unic_weights(self.form, info, history, k, "bh2" if info.pure_noise else self.variant)

"""Minibatch optimal-transport coupling of data and noise for flow matching.

Within a batch, the noise draws are re-assigned to the data points by the exact solution of the
assignment problem ``min_pi sum_i ||x_i - eps_pi(i)||^2`` (scipy's ``linear_sum_assignment``),
which straightens the learned flow (Tong et al., "Improving and Generalizing Flow-Based Generative
Models with Minibatch Optimal Transport", 2023, arXiv:2302.00482; Pooladian et al., "Multisample
Flow Matching", 2023, arXiv:2304.14772). Across processes the coupling is computed on the global
batch: every rank gathers the data, solves the same assignment and keeps its own rows.
"""

from __future__ import annotations

import torch


def assignment(cost: torch.Tensor) -> torch.Tensor:
    """The permutation ``pi`` minimising ``sum_i cost[i, pi(i)]`` (exact, Jonker-Volgenant)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.detach().double().cpu().numpy())
    perm = torch.empty(cost.shape[0], dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


def ot_pairing(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Indices ``pi`` such that ``eps[pi]`` is the noise paired with ``x`` by exact minibatch OT."""
    flat_x, flat_e = x.reshape(x.shape[0], -1).double(), eps.reshape(eps.shape[0], -1).double()
    return assignment(torch.cdist(flat_x, flat_e) ** 2).to(eps.device)


def global_ot_pairing(x_local: torch.Tensor, eps_global: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Noise for this rank's data under the OT coupling of the global batch: gathers every rank's
    data (equal batch sizes), pairs it with ``eps_global`` (the global batch's noise, identical on
    every rank) and returns the rows paired with this rank's slice."""
    if world == 1:
        return eps_global[ot_pairing(x_local, eps_global)]
    import torch.distributed as dist

    parts = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(parts, x_local.contiguous())
    perm = ot_pairing(torch.cat(parts), eps_global)
    b = x_local.shape[0]
    return eps_global[perm[rank * b:(rank + 1) * b]]

"""Reflow: retrain a flow on the noise-data pairs of a teacher's ODE solve.

Rectified flow's rectification: draw noise ``eps_i``, solve the teacher's probability-flow ODE from
it to ``x_i``, and train a new model by flow matching on the coupled pairs ``(x_i, eps_i)``
(``x_t = alpha_t x_i + sigma_t eps_i``) instead of independent ones. The coupling is deterministic,
so the new flow's paths are straighter and a few Euler steps go further; rounds repeat it with the
previous round's model as teacher.

:func:`straightness` measures what rectification lowers: how far a flow's paths are from the straight
lines between their ends.

:func:`reflow_pairs` makes the pairs once and keeps them in a safetensors file with the teacher,
sampler, NFE, grid and seed recorded: a run resumed (or restarted with the same settings) reuses
them, a run with other settings refuses the file, and an interrupted generation continues from the
last finished chunk. Pair ``i`` starts from the prior draw seeded by
:func:`~sdeflow.generation.sample_seed` ``(seed, i)``, so the pairs do not depend on the chunking.

Reference: Liu, Gong, Liu, "Flow Straight and Fast: Learning to Generate and Transfer Data with
Rectified Flow", 2022, arXiv:2209.03003; Lee et al., "Improving the Training of Rectified Flows",
2024, arXiv:2405.20320.
"""

from __future__ import annotations

import os

import torch

from ..denoisers import Denoiser
from ..generation import generate, sample_seed
from ..sampling import prior_sample, prior_std
from .. import checkpoint as ckpt

CHUNK = 1024


def reflow_pairs(teacher: Denoiser, sampler_name: str, nfe: int, num: int, shape: tuple[int, ...], *, seed: int,
                 num_classes: int = 0, path: str | None = None, teacher_name: str = "", device=None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(noise, data, labels)`` of ``num`` teacher ODE solves with ``sampler_name`` at ``nfe``
    evaluations on the ``auto`` grid (labels ``i mod num_classes`` for a class-conditional teacher,
    else None), kept in ``path`` when given (see the module docstring)."""
    from ..grids import GRIDS
    from ..samplers import SAMPLERS, steps_for_nfe

    sampler = SAMPLERS.lookup(sampler_name)()
    if sampler.stochastic:
        raise ValueError(f"reflow pairs need a deterministic teacher solve; {sampler_name} is stochastic")
    ts = GRIDS["auto"](steps_for_nfe(sampler, teacher.schedule, "auto", nfe), teacher.schedule)
    meta = {"teacher": teacher_name, "sampler": sampler_name, "nfe": nfe, "grid": "auto", "seed": seed, "num": num,
            "shape": list(shape), "num_classes": num_classes}
    labels = torch.arange(num) % num_classes if num_classes else None
    data = torch.empty(0, *shape)
    if path is not None and os.path.exists(path):
        tensors, stored = ckpt.load(path)
        recorded = {k: stored.get(k) for k in meta}
        if recorded != meta:
            changed = ", ".join(k for k in meta if recorded[k] != meta[k])
            raise ValueError(f"{path} holds reflow pairs made with other settings ({changed}); remove it or choose "
                             "another --out")
        data = tensors["data"]
    while data.shape[0] < num:
        lo = data.shape[0]
        hi = min(num, lo + CHUNK)
        chunk = generate(teacher, sampler, ts, shape, hi - lo, seed=seed, labels=None if labels is None else labels[lo:hi],
                         batch_size=hi - lo, device=device, progress=progress, first=lo)
        data = torch.cat([data, chunk[0]])
        if path is not None:
            ckpt.save(path, {"data": data}, meta)
    seeds = [sample_seed(seed, i) for i in range(num)]
    start = float(ts[0])   # the standard normal draws the solves started from (scaled by the prior's std)
    noise = prior_sample(teacher.schedule, (num, *shape), t=start, seeds=seeds) / prior_std(teacher.schedule, start)
    return noise, data[:num], labels


def straightness(denoiser: Denoiser, n: int = 1000, *, shape: tuple[int, ...], steps: int = 100, seed: int = 0,
                 labels: torch.Tensor | None = None, batch_size: int = 1000) -> float:
    """``S = int_0^1 E |dX_t/dt - (X_1 - X_0)|^2 dt / d`` along the probability-flow paths of
    ``denoiser`` from ``n`` prior draws (``d``: numbers per sample): zero exactly when every path is
    the straight line between its ends, the quantity reflow lowers (Liu et al. 2022, eq. 3.6).

    The paths are Euler solves on ``steps`` uniform steps from ``t = 1``, whose step velocities
    give the integral as a left Riemann sum (both converge at first order in ``1 / steps``)."""
    from ..grids import uniform_grid
    from ..samplers import Euler
    from ..sampling import sample

    ts = uniform_grid(steps)
    dt = (ts[:-1] - ts[1:]).tolist()
    total = 0.0
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        x = prior_sample(denoiser.schedule, (hi - lo, *shape), t=1.0, seeds=[sample_seed(seed, i) for i in range(lo, hi)])
        with torch.no_grad():
            path = sample(denoiser, Euler(), ts, x, cond=None if labels is None else {"label": labels[lo:hi]},
                          return_trajectory=True).trajectory
        chord = path[0] - path[-1]  # X_1 - X_0
        for k, h in enumerate(dt):   # the velocity of Euler step k is (X_{t_k} - X_{t_k+1}) / h
            v = (path[k] - path[k + 1]) / h
            total += h * float(((v - chord) ** 2).flatten(1).mean(1).sum())
    return total / n

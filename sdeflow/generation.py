"""Generate many samples in fixed batches with per-sample seeds, on one or several processes.

Sample ``i`` starts from the prior draw seeded by ``sample_seed(seed, i)`` and (for stochastic
samplers) takes its noise from the same per-sample seed, and the samples are cut into fixed chunks
``[0, B), [B, 2B), ...``; chunk ``k`` runs on process ``k mod world``. Every chunk is therefore
computed with the same inputs and the same batch shape whatever the number of processes, so the
output is bit-identical on 1 or N processes (on the same device type and thread settings).
"""

from __future__ import annotations

import torch

from .denoisers import Denoiser
from .noise import BrownianTreeNoise, SeededNoise, mix_seed
from .sampling import prior_sample, sample


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample ``i`` of a run seeded ``seed``."""
    return mix_seed(seed, i, 0x5D)


def generate(denoiser: Denoiser, sampler, ts: torch.Tensor, shape: tuple[int, ...], num: int, *, seed: int = 0,
             labels: torch.Tensor | None = None, batch_size: int = 256, noise: str = "seeded", rank: int = 0,
             world: int = 1, progress: bool = False, device=None, dtype=torch.float32,
             first: int = 0, teleport=None, prior_time: float | None = None) -> dict[int, torch.Tensor]:
    """``{chunk index: samples}`` for the chunks of this process (all of them when ``world == 1``).

    Args:
        denoiser, sampler, ts: what :func:`~sdeflow.sampling.sample` takes.
        shape: one sample's shape; num: total number of samples.
        labels: ``(num,)`` class labels passed as ``cond={"label": ...}`` (None: unconditional).
        noise: ``"seeded"`` (per-sample seeds) or ``"brownian"`` (per-sample Brownian trees).
        first: the index of the first sample (the samples ``first .. first + num - 1`` of the run
            seeded ``seed``: a run made in parts gives the samples of one run made at once).
        teleport: a :class:`~sdeflow.teleport.Teleport`: each sample's noise starts at ``ts[0]`` where the
            data's Gaussian carries it (``teleport.start``; a :class:`~sdeflow.teleport.ClassTeleport`
            uses each sample's class) instead of as a draw from the prior there.
        prior_time: the time whose prior the noise is drawn from (default ``ts[0]``); a tuned grid with
            the ``leading`` start draws at the top of the schedule and begins below it.
    """
    if noise not in ("seeded", "brownian"):
        raise ValueError(f"noise must be 'seeded' or 'brownian' for sharded generation, got {noise!r}")
    t_start = float(ts[0])
    chunks = [(k, k * batch_size, min(num, (k + 1) * batch_size)) for k in range(-(-num // batch_size))]
    mine = [c for c in chunks if c[0] % world == rank]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(hi - lo for _, lo, hi in mine), unit="sample", desc="sampling")
    out = {}
    for k, lo, hi in mine:
        seeds = [sample_seed(seed, first + i) for i in range(lo, hi)]
        if teleport is None:
            x_init = prior_sample(denoiser.schedule, (hi - lo, *shape), t=t_start if prior_time is None else prior_time,
                                  seeds=seeds, dtype=dtype, device=device)
        else:
            z = SeededNoise(seeds)(torch.empty((hi - lo, *shape), dtype=dtype, device=device), -1)  # prior_sample's draw
            x_init = teleport.start(z, denoiser.schedule, t_start, label=None if labels is None else labels[lo:hi])
        cond = {} if labels is None else {"label": labels[lo:hi].to(x_init.device)}
        source = SeededNoise(seeds) if noise == "seeded" else BrownianTreeNoise(seeds)
        with torch.no_grad():
            out[k] = sample(denoiser, sampler, ts, x_init, cond=cond, noise=source).x.cpu()
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return out


def gather(chunks: dict[int, torch.Tensor], world: int) -> torch.Tensor:
    """Concatenate every process's chunks in order (an all-gather under ``torch.distributed``)."""
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, chunks)
        chunks = {k: v for part in parts for k, v in part.items()}
    return torch.cat([chunks[k] for k in sorted(chunks)])

"""Bridge runs of the trainer (``sdeflow train --process NAME``): pairs of a clean sample and its degraded
source, the source made by measuring the sample with the operator ``degrade`` and noise ``degrade_noise`` and
back-projecting (:mod:`sdeflow.bridges`). Everything else is the trainer's."""

from __future__ import annotations

import os

import torch


def bridge_setup(cfg, data_shape: tuple):
    """``(process, schedule, operator)`` of a bridge run: the process, its residual's schedule and the operator
    that makes sources."""
    from ..bridges import PROCESSES
    from ..inverse.operator_names import make_operator

    process = PROCESSES.lookup(cfg.process)()
    return process, process.residual, make_operator(cfg.degrade, tuple(data_shape), cfg.seed)


def degrade(operator, noise: float, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sources of clean samples ``x``: measured with the operator and noise, back-projected."""
    return operator.back_project(operator.measure(x, noise, generator)).to(x.dtype)


def bridge_preview(trainer, denoiser) -> None:
    """Groups of three rows of ten: 50 sources, their restorations by the EMA model, the truth."""
    from ..bridges import bridge_grid, sample_bridge
    from ..data.pictures import save_samples

    cfg, device = trainer.cfg, trainer.dist.device
    clean = trainer.data.x[:50].to(device)
    source = trainer.degrade(clean, torch.Generator().manual_seed(cfg.seed))
    out = sample_bridge(denoiser, cfg.sample_sampler, bridge_grid(trainer.process, cfg.sample_nfe), source,
                        generator=torch.Generator(device=device).manual_seed(cfg.seed)).x
    rows = torch.cat([torch.cat([v[k:k + 10] for v in (source, out, clean)]) for k in range(0, len(clean), 10)])
    save_samples(rows.cpu(), os.path.join(cfg.out, "samples", f"step_{trainer.step:07d}.png"), "image", nrow=10)

"""What the trainer needs for the few-step objectives: the teacher, the reflow pairs, the loss of each
objective and how its model is meant to be sampled.

A student shares its teacher's forward process, network output and data; it starts from the
teacher's weights (a flow map adds the zero-initialised gap input, so it starts as the teacher).
"""

from __future__ import annotations

import os

import torch

from .config import TrainConfig
from ..objectives.losses import DenoisingLoss


def load_teacher(cfg: TrainConfig, data, device) -> tuple:
    """``(denoiser, metadata)`` of the teacher checkpoint (EMA weights, frozen), after checking that
    it shares the run's schedule, parameterization, time input, sample shape and classes."""
    from ..pretrained import load_model

    loaded = load_model(cfg.teacher, device=device)
    theirs = TrainConfig.stored(loaded.meta)
    for name in ("schedule", "parameterization", "time_input"):
        if getattr(theirs, name) != getattr(cfg, name):
            raise ValueError(f"the teacher {cfg.teacher!r} has {name} {getattr(theirs, name)!r} and this run "
                             f"{getattr(cfg, name)!r}: a student shares its teacher's forward process and network "
                             "output (set the run's recipe or flags to match)")
    if list(loaded.shape) != list(data.x.shape[1:]):
        raise ValueError(f"the teacher {cfg.teacher!r} makes samples of shape {loaded.shape}; the data {data.name} "
                         f"has {tuple(data.x.shape[1:])}")
    classes = data.num_classes if cfg.conditional else 0
    if loaded.num_classes != classes:
        raise ValueError(f"the teacher {cfg.teacher!r} is conditioned on {loaded.num_classes or 'no'} classes and this "
                         f"run on {classes or 'no'} classes")
    if loaded.meta["network"].get("jump"):
        raise ValueError(f"the teacher {cfg.teacher!r} is a flow map; a teacher is a denoiser")
    return loaded.denoiser.eval().requires_grad_(False), loaded.meta


def reflow_data(cfg: TrainConfig, data, teacher, dist, progress: bool = False) -> tuple:
    """``(dataset, noise)``: the teacher's noise-data pairs (made once, kept in ``out/pairs.safetensors``)."""
    from ..data import Dataset
    from .reflow import reflow_pairs

    classes = data.num_classes if cfg.conditional else 0
    args = (teacher, cfg.teacher_sampler, cfg.teacher_nfe, cfg.pairs, tuple(data.x.shape[1:]))
    kw = dict(seed=cfg.seed, num_classes=classes, teacher_name=cfg.teacher, device=dist.device,
              path=os.path.join(cfg.out, "pairs.safetensors"))
    if dist.main:
        os.makedirs(cfg.out, exist_ok=True)
        noise, x, labels = reflow_pairs(*args, progress=progress, **kw)
    if dist.world > 1:  # the others read what the main process made
        torch.distributed.barrier()
        if not dist.main:
            noise, x, labels = reflow_pairs(*args, **kw)
    pairs = Dataset(x.float(), labels, scale=data.scale, shift=data.shift, kind=data.kind,
                    name=f"{data.name} (reflow pairs)", info=data.info)
    return pairs, noise


def make_loss(cfg: TrainConfig, teacher=None):
    """The objective's loss (:class:`DenoisingLoss` for denoisers and reflow; its time draws for classifiers)."""
    from ..objectives import fewstep

    if cfg.objective == "meanflow":
        return fewstep.MeanFlowLoss(cfg.time_density, teacher, jump_fraction=cfg.jump_fraction)
    if cfg.objective == "shortcut":
        return fewstep.ShortcutLoss(cfg.time_density, teacher, jump_fraction=cfg.jump_fraction)
    if cfg.objective == "consistency":
        return fewstep.ConsistencyLoss(teacher, total_steps=cfg.steps)
    if cfg.objective == "progressive":
        return fewstep.ProgressiveDistillationLoss(teacher, cfg.distill_steps)
    return DenoisingLoss(cfg.weighting, cfg.time_density, min_snr_gamma=cfg.min_snr_gamma, sigma_data=cfg.sigma_data,
                         fokker_planck=cfg.fokker_planck)


def student_sampling(cfg: TrainConfig) -> tuple[str, str, int] | None:
    """``(sampler, grid, NFE)`` names a few-step model is meant to be sampled with (None for a plain
    denoiser): two flow-map jumps on a uniform grid (consistency sampling for a consistency model,
    which learnt jumps to the data only), the student's DDIM steps after progressive distillation,
    two Euler steps after reflow."""
    return {"consistency": ("consistency", "uniform", 2), "shortcut": ("flow-map", "uniform", 2),
            "meanflow": ("flow-map", "uniform", 2), "progressive": ("ddim", "uniform", cfg.distill_steps),
            "reflow": ("euler", "uniform", 2)}.get(cfg.objective)


def sampling(cfg: TrainConfig, schedule, nfe: int | None = None) -> tuple:
    """``(sampler, grid)`` of a run's model at ``nfe`` evaluations: :func:`student_sampling` for a
    few-step model, else the run's sampler (default: its ``sample_nfe``) on the ``auto`` grid."""
    from ..grids import GRIDS
    from ..samplers import ALL_SAMPLERS, steps_for_nfe

    own = student_sampling(cfg)
    if own is not None:
        return ALL_SAMPLERS[own[0]](), GRIDS[own[1]](nfe or own[2], schedule)
    sampler = ALL_SAMPLERS.lookup(cfg.sample_sampler)()
    return sampler, GRIDS["auto"](steps_for_nfe(sampler, schedule, "auto", nfe or cfg.sample_nfe), schedule)

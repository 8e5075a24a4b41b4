"""Token runs of the trainer (``sdeflow train --tokens masked|uniform``): discrete-state diffusion of images
read as token sequences.

An image dataset in ``[-1, 1]`` becomes sequences of ``C H W`` tokens with ``levels`` values each,
``round((x + 1) / 2 (levels - 1))``; the digits (pixel values 0..16) with 17 levels are their own pixel
values. The network (:mod:`sdeflow.models.tokens`) predicts the clean-token posterior, the loss is one of
:data:`~sdeflow.discrete.model.TOKEN_LOSSES`, and everything else (resume, EMA, DDP, checkpoints, the
per-step randomness) is the trainer's.
"""

from __future__ import annotations

import math

import torch

from ..data.tokens import to_images


def token_process(cfg):
    from ..discrete import process_of

    return process_of(cfg.tokens, cfg.levels, cfg.token_schedule)


def token_network_config(cfg, data_info: dict) -> tuple[str, dict]:
    """The architecture and settings of a token run's network (``cfg.model`` overrides them)."""
    arch = cfg.architecture or "token-transformer"
    classes = data_info["num_classes"] if cfg.conditional else 0
    base = dict(vocab=cfg.levels, length=math.prod(data_info["shape"]), mask=cfg.tokens == "masked", num_classes=classes,
                time_scale=1000.0)
    return arch, {**base, **cfg.model}


def token_preview(trainer) -> None:
    """A picture of EMA samples in ``out/samples/step_<n>.png`` (the run's sampler and ``sample_nfe``)."""
    import os

    from ..data.pictures import class_columns, save_samples
    from ..discrete import TokenModel, sample_tokens

    cfg, info = trainer.cfg, trainer.data_info
    classes = trainer.net_classes
    labels = torch.arange(100) % classes if classes else None
    model = TokenModel(trainer.ema.model, trainer.tokens, label=labels)
    out = sample_tokens(model, trainer.tokens, cfg.sample_sampler, cfg.sample_nfe, 100, info["shape"][0],
                        generator=torch.Generator().manual_seed(cfg.seed))
    save_samples(to_images(out.x, info), os.path.join(cfg.out, "samples", f"step_{trainer.step:07d}.png"), "image",
                 nrow=class_columns(classes))

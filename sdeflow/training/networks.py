"""The network of a training run, chosen from its configuration and sized from its data."""

from __future__ import annotations

import math

import torch

from .. import models
from .config import FLOW_MAP_OBJECTIVES, TIME_SCALES, TrainConfig


def build_network(cfg: TrainConfig, data: dict, teacher_meta: dict | None = None) -> torch.nn.Module:
    """The network of a run: ``cfg.architecture`` with ``cfg.model`` overrides, sized from the data;
    a student's is its teacher's (``teacher_meta``); a flow map's takes the gap of a jump too."""
    if cfg.objective == "classifier":
        if data["kind"] != "image" or not data.get("num_classes"):
            raise ValueError(f"the classifier objective needs labelled images; {data['name']} has "
                             f"{data.get('num_classes') or 'no'} classes and samples of shape {data['shape']}")
        base = dict(channels=data["shape"][0], num_classes=data["num_classes"], time_scale=TIME_SCALES[cfg.time_input])
        return models.build("noisy-classifier", {**base, **cfg.model})
    if cfg.tokens is not None:
        from .tokens import token_network_config

        return models.build(*token_network_config(cfg, data))
    arch = cfg.architecture or ("unet" if data["kind"] == "image" else "mlp")
    classes = data["num_classes"] if cfg.conditional and cfg.process is None else 0
    base = {"time_scale": TIME_SCALES[cfg.time_input], "num_classes": classes}
    if cfg.process is not None:  # a bridge's network also takes the source
        base["source"] = True
    if teacher_meta is not None:
        arch, base = teacher_meta["architecture"], teacher_meta["network"]
    elif arch == "unet":
        if data["kind"] != "image":
            raise ValueError(f"the UNet needs image data (N, C, H, W); {data['name']} has samples of shape {data['shape']}")
        c, h, w = data["shape"]
        if h != w:
            raise ValueError(f"the UNet needs square images, got {h}x{w}")
        small = h <= 16
        base.update(channels=c, size=h, base=32 if small else 64, mults=[1, 2] if small else [1, 2, 2],
                    attention=[1] if small else [2], dropout=0.1)
    elif arch == "mlp":
        base.update(dim=math.prod(data["shape"]))
    config = {**base, **cfg.model}
    if cfg.objective in FLOW_MAP_OBJECTIVES:
        config["jump"] = True
    return models.build(arch, config)

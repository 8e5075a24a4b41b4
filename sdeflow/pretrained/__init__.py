"""Shipped models and loading any sdeflow checkpoint as a ready-to-sample denoiser.

The package ships small models trained with ``sdeflow train`` (commands in ``docs/training.md``):
``digits`` (class-conditional 8x8 digits, rectified flow), ``digits-small`` (a deliberately weaker
digits model: a quarter of the width, a quarter of the training; the default guide of
autoguidance), the 2-D toys ``moons``, ``swiss-roll``, ``eight-gaussians`` and ``checkerboard``,
``digits-classifier`` (the classifier of the quality benchmark) and ``digits-noisy-classifier`` (a
noise-aware classifier of noised digits, for classifier guidance). :func:`load_model` takes one of
the models' names or the path of any checkpoint; :func:`load_classifier` loads a noise-aware classifier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import models
from ..denoisers import FlowMapDenoiser, ModelDenoiser
from ..training import checkpoint as ckpt
from ..training.config import TrainConfig

FOLDER = os.path.dirname(os.path.abspath(__file__))
PRETRAINED = ("digits", "digits-small", "digits-reflow", "moons", "swiss-roll", "eight-gaussians", "checkerboard")
CLASSIFIERS = ("digits-classifier", "digits-noisy-classifier")


def path_of(spec: str) -> str:
    """The file of a shipped model name, or ``spec`` itself (a path; a run folder means its checkpoint)."""
    if spec in PRETRAINED or spec in CLASSIFIERS:
        return os.path.join(FOLDER, f"{spec}.safetensors")
    if os.path.isdir(spec):
        return os.path.join(spec, "checkpoint.safetensors")
    if not os.path.exists(spec):
        raise ValueError(f"no checkpoint {spec!r}: give a .safetensors file, a training run folder, or one of the "
                         f"shipped models: {', '.join(PRETRAINED)}")
    return spec


@dataclass
class LoadedModel:
    """A checkpoint ready to sample: the denoiser (EMA weights; a :class:`~sdeflow.denoisers.FlowMapDenoiser`
    for a flow-map model), one sample's shape, the data kind
    (``image``/``vector``), the number of classes (0: unconditional) and the stored metadata."""

    denoiser: ModelDenoiser
    shape: tuple[int, ...]
    kind: str
    num_classes: int
    meta: dict
    path: str

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["config"]).resolved()


def load_network(spec: str, prefix: str = "ema") -> tuple[torch.nn.Module, dict, str]:
    """The network stored in a checkpoint (its ``prefix`` weights, falling back to ``model``)."""
    path = path_of(spec)
    tensors, meta = ckpt.load(path)
    if "architecture" not in meta or "network" not in meta:
        raise ValueError(f"checkpoint {path!r} holds no network description")
    net = models.build(meta["architecture"], meta["network"])
    weights = ckpt.state(prefix, tensors) or ckpt.state("model", tensors)
    ckpt.load_weights(net, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, path)
    return net.eval().requires_grad_(False), meta, path


def load_model(spec: str = "digits", device: str | torch.device = "cpu") -> LoadedModel:
    """Load a shipped model by name or any sdeflow checkpoint (EMA weights) as a denoiser."""
    from ..registry import SCHEDULES, lookup

    net, meta, path = load_network(spec)
    if "config" not in meta or "data" not in meta:
        raise ValueError(f"{spec!r} is not a generative model (its checkpoint holds no training configuration, e.g. "
                         f"the digits classifier); give a run folder, its .safetensors, or one of: {', '.join(PRETRAINED)}")
    cfg = TrainConfig.from_dict(meta["config"], where=path).resolved()
    if cfg.objective == "classifier":
        raise ValueError(f"{spec!r} is a {cfg.objective}, not a generative model (load it with load_classifier)")
    schedule = lookup(SCHEDULES, "schedule", cfg.schedule)()
    kind = FlowMapDenoiser if meta["network"].get("jump") else ModelDenoiser
    denoiser = kind(net.to(device), schedule, cfg.parameterization, time_input=cfg.time_input)
    data = meta["data"]
    return LoadedModel(denoiser, tuple(data["shape"]), data["kind"], meta["network"].get("num_classes", 0), meta, path)


def load_classifier(spec: str = "digits-noisy-classifier", device: str | torch.device = "cpu"):
    """A noise-aware classifier checkpoint (``sdeflow train --objective classifier``) as a
    :class:`~sdeflow.guidance.ModelClassifier`: ``(x_t, t, label) -> log p_t(c | x_t)``."""
    from ..guidance.classifier import ModelClassifier
    from ..registry import SCHEDULES, lookup

    net, meta, path = load_network(spec)
    cfg = TrainConfig.from_dict(meta["config"], where=path).resolved() if "config" in meta else None
    if cfg is None or cfg.objective != "classifier":
        raise ValueError(f"{spec!r} is not a noise-aware classifier (train one with sdeflow train --objective classifier)")
    schedule = lookup(SCHEDULES, "schedule", cfg.schedule)()
    return ModelClassifier(net.to(device), schedule, time_input=cfg.time_input, sigma_data=cfg.sigma_data)

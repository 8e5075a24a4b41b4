"""Shipped models and loading any sdeflow checkpoint as a ready-to-sample denoiser.

The package ships small models trained with ``sdeflow train`` (commands in ``docs/training.md``):
``digits`` (class-conditional 8x8 digits, rectified flow), ``digits-small`` (a deliberately weaker
digits model: a quarter of the width, a quarter of the training; the default guide of
autoguidance), the 2-D toys ``moons``, ``swiss-roll``, ``eight-gaussians`` and ``checkerboard``,
``digits-bridge`` (a DDBM-VP bridge that restores digits from their 2x-downsampled, noisy views:
``sdeflow restore --checkpoint digits-bridge``), ``digits-tokens`` (masked diffusion over the digits' 64 pixels
as tokens of 17 levels: ``sdeflow sample --checkpoint digits-tokens``), ``digits-classifier`` (the classifier of the quality
benchmark) and ``digits-noisy-classifier`` (a noise-aware classifier of noised digits, for classifier
guidance). :func:`load_model` takes one of the models' names or the path of any checkpoint;
:func:`load_classifier` loads a noise-aware classifier.

A name that is also a file or folder in the working directory (a run trained with ``--out moons``)
means that path, with a warning; ``shipped:NAME`` always means the shipped model. The shipped files
are read-only to sdeflow: what a user makes for them (tuned grids) goes to a user folder.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from .. import models
from ..denoisers import FlowMapDenoiser, ModelDenoiser
from .. import checkpoint as ckpt

FOLDER = os.path.dirname(os.path.abspath(__file__))
PRETRAINED = ("digits", "digits-small", "digits-reflow", "digits-bridge", "digits-tokens", "moons", "swiss-roll", "eight-gaussians",
              "checkerboard")
CLASSIFIERS = ("digits-classifier", "digits-noisy-classifier")


#: The prefix that names a shipped model even where a local file or folder has its name.
SHIPPED = "shipped:"


def shipped_name(spec: str) -> str | None:
    """The shipped model ``spec`` names (``NAME`` or ``shipped:NAME``), or None for a path. A bare name
    that is also a local file or folder means the path, with a warning that says how to ask for the
    shipped model."""
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"a checkpoint is a shipped model name, a run folder or a .safetensors file; got "
                         f"{type(spec).__name__} {spec!r}")
    spec = os.fspath(spec)
    if spec.startswith(SHIPPED):
        name = spec[len(SHIPPED):]
        if name not in PRETRAINED + CLASSIFIERS:
            raise ValueError(f"no shipped model {name!r}; the shipped models are: {', '.join(PRETRAINED + CLASSIFIERS)}")
        return name
    if spec in PRETRAINED + CLASSIFIERS:
        if not os.path.exists(spec):
            return spec
        warnings.warn(f"{spec!r} is a local {'folder' if os.path.isdir(spec) else 'file'} and the name of a shipped "
                      f"model: using the local {spec!r} (write {SHIPPED}{spec} for the shipped model)", stacklevel=3)
    return None


def path_of(spec: str) -> str:
    """The file of a shipped model name, or ``spec`` itself (a path; a run folder means its checkpoint)."""
    name = shipped_name(spec)
    if name is not None:
        return os.path.join(FOLDER, f"{name}.safetensors")
    if os.path.isdir(spec):
        return os.path.join(spec, "checkpoint.safetensors")
    if not os.path.exists(spec):
        raise ValueError(f"no checkpoint {spec!r}: give a .safetensors file, a training run folder, or one of the "
                         f"shipped models: {', '.join(PRETRAINED)}")
    return spec


def shipped_of(path: str) -> str | None:
    """The shipped model whose file ``path`` is, or None."""
    folder, base = os.path.split(os.path.abspath(path))
    name = base[:-len(".safetensors")] if base.endswith(".safetensors") else None
    return name if folder == FOLDER and name in PRETRAINED + CLASSIFIERS else None


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
    def shipped(self) -> str | None:
        """The shipped model's name, or None for a user's checkpoint."""
        return shipped_of(self.path)

    @property
    def bridge(self) -> bool:
        """A bridge pinned at a degraded source (``sdeflow train --process``): it restores, it does not sample."""
        return bool(self.meta.get("config", {}).get("process"))

    @property
    def settings(self) -> dict:
        """The training settings stored with the model (the resolved training configuration)."""
        return settings_of(self.meta)


def load_network(spec: str, prefix: str = "ema") -> tuple[torch.nn.Module, dict, str]:
    """The network stored in a checkpoint (its ``prefix`` weights, falling back to ``model``), after
    checking the whole file: the network description, the data description against the network, and
    every weight (a floating-point, finite tensor where the network has one)."""
    path = path_of(spec)
    tensors, meta = ckpt.load(path)
    if "architecture" not in meta or "network" not in meta:
        raise ValueError(f"checkpoint {path!r} holds no network description")
    try:
        net = models.build(meta["architecture"], meta["network"])
        _check_data(meta, net)
    except ValueError as err:
        raise ValueError(f"checkpoint {path!r} is corrupted or was not written by sdeflow: {err}") from None
    weights = ckpt.state(prefix, tensors) or ckpt.state("model", tensors)
    own = net.state_dict()
    for k, v in weights.items():
        if k in own and own[k].is_floating_point() and not v.is_floating_point():
            raise ValueError(f"checkpoint {path!r}: weight {k} is stored as {v.dtype}; network weights are floating point "
                             "(the file is corrupted or was not written by sdeflow)")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"checkpoint {path!r}: weight {k} holds NaN or infinite values (a diverged run?); "
                             "it cannot sample")
    ckpt.load_weights(net, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, path)
    return net.eval().requires_grad_(False), meta, path


#: The training settings that define what a stored model computes: a checkpoint without them is refused
#: (a default would silently give another model).
DEFINING = ("schedule", "parameterization", "time_input")


def settings_of(meta: dict) -> dict:
    """A checkpoint's training settings (checked on load to hold :data:`DEFINING`), with the defaults of
    settings that later versions added."""
    return {"objective": "denoise", "sigma_data": 0.5, **meta["config"]}


def _check_data(meta: dict, net: torch.nn.Module) -> None:
    """The data description of a checkpoint (``shape``, ``kind``, ``scale``, ``shift``) and its agreement
    with the network; the settings that define the model (:data:`DEFINING`)."""
    import math

    config = meta.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise ValueError(f"its training configuration is a JSON {type(config).__name__}, not an object")
        missing = [k for k in DEFINING if config.get(k) is None
                   and not (k == "schedule" and (config.get("process") or config.get("tokens")))]
        if missing:
            raise ValueError(f"its training configuration lacks {', '.join(missing)}, which define the model")
    data = meta.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError(f"its data description is a JSON {type(data).__name__}, not an object")
    missing = [k for k in ("shape", "kind", "scale", "shift") if k not in data]
    if missing:
        raise ValueError(f"its data description lacks {', '.join(missing)}")
    shape, kind, scale, shift = data["shape"], data["kind"], data["scale"], data["shift"]
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                           for n in shape):
        raise ValueError(f"its data shape {shape!r} is not a list of positive integers")
    if kind not in ("image", "vector", "tokens") or (kind == "image" and len(shape) != 3) or (
            kind == "tokens" and (len(shape) != 1 or not isinstance(data.get("image"), list)
                                  or math.prod(data["image"]) != shape[0] or not isinstance(data.get("levels"), int))):
        raise ValueError(f"its data kind {kind!r} with shape {shape} is not an image (C, H, W), a vector or the tokens "
                         "of an image (with its image shape and levels)")
    for key, value in (("scale", scale), ("shift", shift)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (key == "scale" and value == 0):
            raise ValueError(f"its data {key} {value!r} is not a finite number{' other than 0' if key == 'scale' else ''}")
    c = getattr(net, "config", {})
    takes = ((c["length"],) if "length" in c else (c["channels"], c["size"], c["size"]) if "size" in c else
             (c["dim"],) if "dim" in c else None)
    if takes is not None and (math.prod(takes) != math.prod(shape) if "dim" in c and "length" not in c
                              else tuple(shape) != takes):
        raise ValueError(f"its data shape {shape} does not fit its network, which takes {list(takes)}")


def load_model(spec: str = "digits", device: str | torch.device = "cpu", *, bridges: bool = False,
               tokens: bool = False) -> LoadedModel:
    """Load a shipped model by name or any sdeflow checkpoint (EMA weights) as a denoiser. A bridge pinned at
    a degraded source (``digits-bridge``, ``sdeflow train --process``) restores rather than samples: it is
    refused unless ``bridges=True`` (its denoiser is then a :class:`~sdeflow.bridges.BridgeDenoiser`). A token
    model (``digits-tokens``, ``sdeflow train --tokens``) is refused unless ``tokens=True``; its ``denoiser`` is
    then a :class:`~sdeflow.discrete.TokenModel` and its kind ``tokens``."""
    from ..schedules import SCHEDULES

    net, meta, path = load_network(spec)
    if "config" not in meta or "data" not in meta:
        raise ValueError(f"{spec!r} is not a generative model (its checkpoint holds no training configuration, e.g. "
                         f"the digits classifier); give a run folder, its .safetensors, or one of: {', '.join(PRETRAINED)}")
    cfg = settings_of(meta)
    if cfg["objective"] == "classifier":
        raise ValueError(f"{spec!r} is a classifier, not a generative model (load it with load_classifier)")
    if cfg.get("tokens"):  # discrete-state diffusion over the tokens of images
        from ..discrete import TokenModel, process_of

        if not tokens:
            raise ValueError(f"{spec!r} is a token model (discrete diffusion over the pixels' values): sample it with "
                             f"sdeflow sample --checkpoint {spec} (or sdeflow.discrete.sample_tokens)")
        denoiser = TokenModel(net.to(device), process_of(cfg["tokens"], cfg["levels"], cfg["token_schedule"]))
    elif cfg.get("process"):  # a bridge: the denoiser of its residual, sampled from a source (sdeflow restore)
        from ..bridges import PROCESSES, bridge_denoiser

        if not bridges:
            raise ValueError(f"{spec!r} is a bridge that restores a degraded source ({cfg['degrade']}): use it with "
                             f"sdeflow restore --checkpoint {spec} (or sdeflow.bridges.restore); it does not sample "
                             "from noise")
        denoiser = bridge_denoiser(net.to(device), PROCESSES.lookup(cfg["process"])(), cfg["parameterization"],
                                   cfg["sigma_data"])
    else:
        schedule = SCHEDULES.lookup(cfg["schedule"])()
        kind = FlowMapDenoiser if meta["network"].get("jump") else ModelDenoiser
        denoiser = kind(net.to(device), schedule, cfg["parameterization"], time_input=cfg["time_input"])
    data = meta["data"]
    if not cfg.get("tokens"):
        denoiser.sample_shape = data["shape"]
    return LoadedModel(denoiser, tuple(data["shape"]), data["kind"], meta["network"].get("num_classes", 0), meta, path)


def load_classifier(spec: str = "digits-noisy-classifier", device: str | torch.device = "cpu"):
    """A noise-aware classifier checkpoint (``sdeflow train --objective classifier``) as a
    :class:`~sdeflow.guidance.ModelClassifier`: ``(x_t, t, label) -> log p_t(c | x_t)``."""
    from ..guidance.classifier import ModelClassifier
    from ..schedules import SCHEDULES

    net, meta, path = load_network(spec)
    cfg = settings_of(meta) if "config" in meta else None
    if cfg is None or cfg["objective"] != "classifier":
        raise ValueError(f"{spec!r} is not a noise-aware classifier (train one with sdeflow train --objective classifier)")
    schedule = SCHEDULES.lookup(cfg["schedule"])()
    return ModelClassifier(net.to(device), schedule, time_input=cfg["time_input"], sigma_data=cfg["sigma_data"])

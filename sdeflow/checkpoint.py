"""Checkpoints: one safetensors file (tensors) whose metadata holds the JSON configuration.

Never pickle: a checkpoint is ``checkpoint.safetensors`` with the tensors ``model.*`` (trained
weights), ``ema.*`` (averaged weights) and ``optim.<k>.<name>`` (optimiser state), and the metadata
entry ``"sdeflow"``: a JSON object with the training configuration, the architecture and its
configuration, the data description, the step and the optimiser's hyper-parameters. A released model
is the same file with only ``ema.*`` (see :func:`export_weights`). Files are written atomically (a
temporary file in the same folder, then a rename), so a run killed while saving keeps the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os

import torch

from .files import atomic_write

FORMAT = "sdeflow-checkpoint-1"


def save(path: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` and ``meta`` (JSON-serialisable) atomically."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"sdeflow": json.dumps({"format": FORMAT, **meta})}))


def load(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of a checkpoint; a clear error for a missing, foreign or corrupted file."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"checkpoint {path!r} is corrupted or not a safetensors file ({err})") from None
    if "sdeflow" not in meta:
        raise ValueError(f"{path!r} is a safetensors file but not an sdeflow checkpoint (no 'sdeflow' metadata)")
    try:
        info = json.loads(meta["sdeflow"])
    except json.JSONDecodeError:
        raise ValueError(f"checkpoint {path!r} has corrupted metadata") from None
    if not isinstance(info, dict):
        raise ValueError(f"checkpoint {path!r} has corrupted metadata: a JSON {type(info).__name__}, not an object")
    if info.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} has format {info.get('format')!r}; this sdeflow reads {FORMAT!r}")
    return tensors, info


def is_training_checkpoint(path: str) -> bool:
    """Whether ``path`` is an sdeflow checkpoint that holds an optimiser state (what ``--resume`` needs),
    read from its metadata alone."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        return False
    try:
        with safe_open(path, framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("sdeflow", "{}"))
    except Exception:  # not a safetensors file, or garbled: not a checkpoint this could destroy
        return False
    return isinstance(info, dict) and "optimizer" in info


def refuse_overwrite(path: str, what: str = "OUT") -> None:
    """No command replaces a training checkpoint: refuse ``path`` if it is one."""
    if is_training_checkpoint(path):
        raise ValueError(f"{what} {path!r} is a training checkpoint (it holds the optimiser state --resume needs): "
                         "writing it would lose the run; give another file name")


def state(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    """``module.load_state_dict`` with an error that names the mismatch (another architecture or size)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"shape of {wrong[0]}: {tuple(weights[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
        raise ValueError(f"checkpoint {path!r} does not fit this network ({'; '.join(parts)}): it was saved from "
                         "another architecture or configuration")
    module.load_state_dict(weights)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimiser's state as flat tensors ``optim.<k>.<name>`` plus its JSON hyper-parameters."""
    sd = opt.state_dict()
    tensors = {f"optim.{k}.{name}": torch.as_tensor(v) for k, s in sd["state"].items() for name, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, k, name = key.split(".", 2)
            state.setdefault(int(k), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def export_weights(checkpoint: str, out: str, dtype: torch.dtype | None = None) -> None:
    """A sampling-only file: the EMA weights (optionally cast, e.g. to float16) and the metadata
    without the optimiser state."""
    tensors, meta = load(checkpoint)
    weights = state("ema", tensors) or state("model", tensors)
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    meta = {k: v for k, v in meta.items() if k not in ("format", "optimizer")}
    save(out, {f"ema.{k}": v for k, v in weights.items()}, meta)

"""Images read as token sequences (the data of token runs, :mod:`sdeflow.training.tokens`): values in
``[-1, 1]`` become tokens ``0..levels-1``, ``round((x + 1) / 2 (levels - 1))``; the digits (pixel values 0..16)
with 17 levels are their own pixel values."""

from __future__ import annotations

import torch

from .datasets import Dataset


def token_dataset(data: Dataset, levels: int) -> Dataset:
    """``data``'s images as ``(N, C H W)`` long tokens in ``0..levels-1`` (``kind="tokens"``; ``info`` keeps the
    image shape and the levels for pictures)."""
    if data.kind != "image":
        raise ValueError(f"a token run reads images as tokens; {data.name} holds samples of shape "
                         f"{tuple(data.x.shape[1:])} ({data.kind})")
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    shape = list(data.x.shape[1:])
    tokens = to_tokens(data.x.reshape(len(data), -1), levels)
    info = {"image": shape, "levels": levels}
    return Dataset(tokens, data.labels, data.scale, data.shift, kind="tokens", name=data.name, info=info)


def to_tokens(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Values in ``[-1, 1]`` as tokens ``0..levels-1``."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 0.5 * (levels - 1)).long()


def to_images(tokens: torch.Tensor, data_info: dict) -> torch.Tensor:
    """Tokens back to images in ``[-1, 1]`` of the run's image shape."""
    levels, shape = data_info["levels"], data_info["image"]
    return (tokens.float() * (2.0 / (levels - 1)) - 1.0).reshape(-1, *shape)

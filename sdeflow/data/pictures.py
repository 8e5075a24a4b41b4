"""PNG pictures of samples: a grid of images, or a scatter of 2-D points (Pillow only, atomic writes)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..files import atomic_write


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """``(N, C, H, W)`` images in [-1, 1] tiled into one uint8 ``(H', W', C)`` array (C = 1 or 3),
    ``nrow`` images per row, ``pad`` pixels of background, each pixel repeated ``upscale`` times."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    img = img.repeat(upscale, axis=2).repeat(upscale, axis=3)
    h, w = h * upscale, w * upscale
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img[k].transpose(1, 2, 0)
    return canvas


def points_image(x: torch.Tensor, size: int = 400, lim: float | None = None) -> np.ndarray:
    """2-D points as a density picture on white (each point a 3x3 dot, darker where points pile up),
    the view ``[-lim, lim]^2`` (default: fits 99.5% of the points)."""
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"expected 2-D points (N, 2), got shape {tuple(x.shape)}")
    p = x.float().cpu().numpy()
    lim = lim or float(np.quantile(np.abs(p), 0.995)) * 1.1 + 1e-6
    ij = np.clip(((p / lim + 1) / 2 * (size - 1)).round().astype(int), 1, size - 2)
    counts = np.zeros((size, size))
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            np.add.at(counts, (size - 1 - ij[:, 1] + di, ij[:, 0] + dj), 1.0)
    level = np.quantile(counts[counts > 0], 0.95) if counts.any() else 1.0
    ink = np.clip(counts / level, 0, 1) ** 0.5
    rgb = np.array([255.0, 255.0, 255.0]) * (1 - ink[..., None]) + np.array([20.0, 40.0, 120.0]) * ink[..., None]
    return rgb.round().astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 ``(H, W, C)`` array as a PNG, atomically."""
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def class_columns(num_classes: int, most: int = 16) -> int | None:
    """Columns of a picture of class-conditional samples cycling through the classes: one class per
    column when they fit (up to ``most``), else ``None`` (a square grid)."""
    return num_classes if 0 < num_classes <= most else None


def save_samples(x: torch.Tensor, path: str, kind: str, nrow: int | None = None) -> None:
    """Images as a grid (upscaled to at least 32 pixels per image), 2-D points as a scatter."""
    if kind == "image":
        save_png(image_grid(x, nrow, upscale=max(1, 32 // x.shape[-1])), path)
    elif x.ndim == 2 and x.shape[1] == 2:
        save_png(points_image(x), path)
    else:
        raise ValueError(f"no picture for samples of shape {tuple(x.shape[1:])} (images or 2-D points only)")

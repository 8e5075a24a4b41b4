"""Loaders returning :class:`Dataset` (see the package docstring for the scaling conventions)."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch

from ..names import NameTable
from .toys import TOYS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Dataset:
    """``x``: float32 ``(N, *shape)`` in the training range; ``labels``: int64 ``(N,)`` or None;
    ``raw = (x - shift) / scale`` maps back to the original units; ``kind``: "image" or "vector" (or "tokens",
    images read as long token sequences by :func:`sdeflow.data.tokens.token_dataset`)."""

    x: torch.Tensor
    labels: torch.Tensor | None = None
    scale: float = 1.0
    shift: float = 0.0
    kind: str = "vector"
    name: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def describe(self) -> dict:
        """What a checkpoint records about its data (enough to map samples back and to plot them)."""
        out = dict(name=self.name, shape=list(self.x.shape[1:]), kind=self.kind, scale=self.scale, shift=self.shift,
                   num_classes=self.num_classes, size=len(self))
        if self.kind == "tokens":  # images read as tokens: the image shape and the levels map them back
            out.update(image=self.info["image"], levels=self.info["levels"])
        return out


def digits() -> Dataset:
    """scikit-learn's bundled handwritten digits: 1797 images 1x8x8, values 0..16 mapped to [-1, 1],
    labels 0..9. Needs scikit-learn (``pip install "sdeflow[train]"``)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the digits dataset needs scikit-learn: pip install \"sdeflow[train]\" (or scikit-learn)") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return Dataset(x, torch.tensor(d.target, dtype=torch.int64), scale=1 / 8.0, shift=-1.0, kind="image", name="digits")


def toy(name: str, n: int = 100_000, seed: int = 0) -> Dataset:
    """``n`` points of a 2-D toy (:data:`~sdeflow.data.TOYS`), drawn from ``seed``."""
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; allowed: {', '.join(TOYS)}")
    return Dataset(TOYS[name](n, seed), name=name)


def read_image(path: str, size: int, mode: str | None = None, convert: bool = False):
    """``(array (C, size, size) of 0..255 floats, mode)``: the image centre-cropped to a square and
    resized. Only L and RGB images are read, and one of ``mode`` when given, unless ``convert`` (then
    any image is converted to ``mode``)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if convert:
                img = img.convert(mode)
            if img.mode not in ("L", "RGB"):
                raise ValueError(f"{path}: image mode {img.mode}; sdeflow reads 8-bit grayscale (L) or RGB "
                                 "images, convert it first (e.g. drop alpha onto a background)")
            if mode is not None and img.mode != mode:
                raise ValueError(f"{path}: image mode {img.mode} in a folder of {mode} images; use one mode "
                                 "throughout (grayscale L or RGB)")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            img = img.crop(box).resize((size, size), Image.BICUBIC)  # centre crop, then resize
            arr = np.asarray(img, dtype=np.float32)
            return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), img.mode
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def image_folder(path: str, size: int = 32) -> Dataset:
    """Every PNG/JPEG under ``path`` (recursively), centre-cropped to a square and resized to
    ``size x size``, values 0..255 mapped to [-1, 1]. Sub-folders become class labels when there
    are at least two of them holding images; otherwise the data is unlabelled."""
    if not os.path.isdir(path):
        raise ValueError(f"data folder {path!r} does not exist (give a folder of PNG/JPEG images, a .npy/.npz "
                         f"file, or one of: {', '.join(DATASETS)})")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no PNG or JPEG images under {path!r}")
    images, mode = [], None
    for f in files:
        arr, mode = read_image(f, size, mode)
        images.append(arr)
    x = torch.from_numpy(np.stack(images)) / 127.5 - 1.0
    classes = sorted({os.path.relpath(os.path.dirname(f), path) for f in files})
    labels = None
    if len(classes) > 1:
        index = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([index[os.path.relpath(os.path.dirname(f), path)] for f in files])
    return Dataset(x, labels, scale=1 / 127.5, shift=-1.0, kind="image", name=os.path.basename(os.path.normpath(path)),
                   info={"classes": classes} if labels is not None else {})


def read_array(path: str):
    """``np.load(path)`` of an ``.npy`` or ``.npz`` file, never unpickling, with one clear error for a file
    that is missing, truncated, garbled or holds Python objects."""
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not (magic == b"\x93NUMPY" or magic.startswith(b"PK")):  # numpy would take anything else for a pickle
        raise ValueError(f"{path}: not a readable .npy/.npz array file (it does not start like one)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path}: the array holds Python objects, which sdeflow does not load (unpickling can "
                             "run code); save a numeric array") from None
        raise ValueError(f"{path}: not a readable .npy/.npz array file ({' '.join(str(err).split())})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npy/.npz array file ({' '.join(str(err).split()) or 'truncated'})") from None


def array_file(path: str, standardize: bool = False) -> Dataset:
    """An ``.npy`` array ``(N, ...)`` or an ``.npz`` with the data under ``x`` (or its only array)
    and optional integer ``labels`` (or ``y``). Arrays of shape ``(N, C, H, W)`` are treated as images
    (for plotting) but not rescaled; ``standardize=True`` maps them to mean 0, standard deviation 1."""
    loaded = read_array(path)
    try:
        labels = None
        if isinstance(loaded, np.lib.npyio.NpzFile):  # an .npz reads its arrays lazily: read them here
            keys = list(loaded.keys())
            key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(f"an .npz needs its data under 'x' (found {', '.join(keys)})")
            arr = loaded[key]
            for lk in ("labels", "y"):
                if lk in keys:
                    labels = loaded[lk]
        else:
            arr = loaded
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npy/.npz array file ({' '.join(str(err).split()) or 'truncated'})") from None
    if arr.ndim < 2 or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{path}: expected a real numeric array of shape (N, ...), got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or 0 in arr.shape[1:]:
        raise ValueError(f"{path}: the array of shape {arr.shape} holds no samples")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: the array holds NaN or infinite values")
    if labels is not None:
        if labels.shape != (arr.shape[0],) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"{path}: labels must be non-negative integers, one per sample")
        labels = torch.from_numpy(labels.astype(np.int64))
    scale, shift = 1.0, 0.0
    if standardize:
        mean, std = float(x.mean()), float(x.std())
        scale, shift = 1.0 / std, -mean / std
        x = x * scale + shift
    return Dataset(x, labels, scale=scale, shift=shift, kind="image" if x.ndim == 4 else "vector",
                   name=os.path.splitext(os.path.basename(path))[0])


#: Built-in datasets by name (besides image folders and array files).
DATASETS = NameTable("dataset", {
    "digits": (digits, "scikit-learn's 1797 handwritten digits, 1x8x8, 10 classes"),
    **{name: ((lambda name=name: toy(name)), TOYS.summary(name)) for name in TOYS},
})


def load(spec: str, *, image_size: int = 32, standardize: bool = False, toy_size: int = 100_000, seed: int = 0) -> Dataset:
    """A dataset by name (:data:`DATASETS`), folder of images or .npy/.npz path."""
    if spec == "digits":
        return digits()
    if spec in TOYS:
        return toy(spec, toy_size, seed)
    if spec.lower().endswith((".npy", ".npz")):
        return array_file(spec, standardize)
    return image_folder(spec, image_size)

"""``sdeflow restore``: solve an inverse problem with a trained model as the prior.

The input is a real digit from scikit-learn's set (``--index``, the default for the digits model),
an image file (PNG/JPEG, resized to the model's size) or an ``.npy`` array of one sample. It is
measured with ``--operator`` and ``--noise-std`` (seeded), then ``--method`` draws ``--num``
posterior samples; the command prints the PSNR of the sample mean and of the best sample against
the input, and writes a picture (input | measurement | samples | mean) and optionally an ``.npz``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..files import save_npz
from ..inverse import Blur, Bound, Downsample, Identity, Mask, RandomProjection, METHODS, solve

OPERATORS = ("inpaint", "inpaint-random", "superres", "blur", "denoise", "compressed-sensing")


def make_operator(name: str, shape: tuple[int, ...], seed: int = 0):
    """A measurement operator by name for samples of ``shape``."""
    if name == "inpaint":  # hide a centred box covering the middle half of each side
        mask = torch.ones(shape, dtype=torch.bool)
        h, w = shape[-2:]
        mask[..., h // 4:h - h // 4, w // 4:w - w // 4] = False
        return Mask(mask)
    if name == "inpaint-random":  # keep 30% of the entries
        return Mask(torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3)
    if name == "superres":
        return Downsample(shape, 2)
    if name == "blur":
        return Blur.gaussian(shape, std=1.0)
    if name == "denoise":
        return Identity(shape)
    if name == "compressed-sensing":
        return RandomProjection(shape, max(1, math.prod(shape) // 4), seed=seed)
    raise ValueError(f"unknown operator {name!r}; allowed: {', '.join(OPERATORS)}")


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB for data in a range of width ``data_range`` ([-1, 1]: 2)."""
    mse = float((x - ref).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def _load_input(args, model) -> torch.Tensor:
    shape = model.shape
    if args.input is None:
        if model.meta["data"]["name"] != "digits":
            raise ValueError("give --input (an image or .npy file): only the digits model has a default input")
        from ..data import digits

        d = digits()
        if not 0 <= args.index < len(d):
            raise ValueError(f"--index must be in 0..{len(d) - 1}")
        return d.x[args.index]
    if args.input.lower().endswith(".npy"):
        x = torch.from_numpy(np.load(args.input, allow_pickle=False).astype(np.float32))
        if tuple(x.shape) != shape:
            raise ValueError(f"{args.input}: expected one sample of shape {shape}, got {tuple(x.shape)}")
        return x
    if model.kind != "image":
        raise ValueError(f"this model's samples have shape {shape}: give a .npy file, not an image")
    from ..data.datasets import read_image

    arr, _ = read_image(args.input, shape[-1], "L" if shape[0] == 1 else "RGB", convert=True)
    return torch.from_numpy(arr) / 127.5 - 1.0  # the training scaling of image folders


def run_restore(args) -> dict:
    from ..cli.registry import SAMPLERS, lookup
    from ..data.pictures import image_grid, save_png
    from ..pretrained import load_model

    model = load_model(args.checkpoint)
    x_true = _load_input(args, model)
    op = make_operator(args.operator, model.shape, args.seed)
    if args.noise_std < 0:
        raise ValueError(f"--noise-std must be >= 0, got {args.noise_std}")
    y = op.measure(x_true[None], args.noise_std, torch.Generator().manual_seed(args.seed))[0]
    denoiser = model.denoiser
    if model.num_classes:  # the unconditional prior of a class-conditional model
        denoiser = Bound(denoiser, label=torch.tensor([model.num_classes]))
    if args.method == "repaint" and not isinstance(op, Mask):
        raise ValueError("repaint inpaints: use it with --operator inpaint or inpaint-random")
    sampler = lookup(SAMPLERS, "sampler", args.sampler)() if args.sampler else None
    sol = solve(args.method, denoiser, op, y, args.noise_std, args.nfe, args.num, sampler=sampler, seed=args.seed)
    x = sol.x.clamp(-3, 3)
    mean = x.mean(0)
    report = {"psnr_mean": psnr(mean, x_true), "psnr_best": max(psnr(s, x_true) for s in x), "nfe": sol.nfe}
    shown = op.adjoint(op.gram_solve(y[None], 1e-3)) if op.linear else torch.zeros_like(x_true)[None]
    print(f"{args.method} on {args.operator} (noise {args.noise_std}), NFE {sol.nfe}: PSNR of the mean "
          f"{report['psnr_mean']:.2f} dB, best of {args.num} samples {report['psnr_best']:.2f} dB")
    if args.out:
        if model.kind != "image":
            raise ValueError("pictures are for image models; write --npz instead")
        row = torch.cat([x_true[None], shown.reshape(1, *model.shape), x, mean[None]])
        save_png(image_grid(row, nrow=row.shape[0], upscale=max(1, 32 // model.shape[-1])), args.out)
        print(f"  wrote {args.out} (input | measurement | {args.num} samples | mean)")
    if args.npz:
        save_npz(args.npz, input=x_true.numpy(), measurement=y.numpy(), samples=sol.x.numpy())
        print(f"  wrote {args.npz}")
    return report


def add_restore_parser(sub) -> None:
    p = sub.add_parser("restore", help="solve an inverse problem (inpainting, super-resolution, deblurring, ...) "
                       "with a trained model as the prior",
                       description="Measure an input with an operator and noise, then draw posterior samples with a "
                       "diffusion-prior method; writes input | measurement | samples | mean as a picture.")
    p.add_argument("--checkpoint", default="digits", help="shipped model name, run folder or .safetensors (default: digits)")
    p.add_argument("--input", default=None, help="an image or .npy file (default: a real digit, see --index)")
    p.add_argument("--index", type=int, default=0, help="which scikit-learn digit to restore (default: 0)")
    p.add_argument("--operator", default="inpaint", choices=OPERATORS, metavar="NAME",
                   help=f"one of: {', '.join(OPERATORS)} (default: inpaint)")
    p.add_argument("--noise-std", type=float, default=0.05, help="measurement noise in data units (default: 0.05)")
    p.add_argument("--method", default="mmps", choices=METHODS, metavar="NAME",
                   help=f"one of: {', '.join(METHODS)} (default: mmps)")
    p.add_argument("--sampler", default=None, help="sampler for mmps/pigdm/dps/ddnm/diffpir (default: ddim-eta1)")
    p.add_argument("--nfe", type=int, default=50, help="network evaluations (default: 50)")
    p.add_argument("--num", type=int, default=6, help="posterior samples (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurement noise and the sampler (default: 0)")
    p.add_argument("--out", default="restored.png", help="picture to write; '' for none (default: restored.png)")
    p.add_argument("--npz", default="", help="also write input, measurement and samples to this .npz")

"""``sdeflow restore``: solve an inverse problem with a trained model as the prior, or restore with a bridge.

The input is a real digit from scikit-learn's set (``--index``, the default for the digits model),
an image file (PNG/JPEG, resized to the model's size) or an ``.npy`` array of one sample. It is
measured with ``--operator`` and ``--noise-std`` (seeded), then ``--method`` draws ``--num``
posterior samples; the command prints the PSNR of the sample mean and of the best sample against
the input, and writes a picture (input | measurement | samples | mean) and optionally an ``.npz``.

A bridge model (``sdeflow train --process``, the shipped ``digits-bridge``) was trained for one operator and
noise: the input is measured with those, back-projected to its source, and the bridge restores it in
``--nfe`` evaluations (:func:`sdeflow.bridges.restore`).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from ..files import check_output, save_npz
from ..metrics import psnr
from ..inverse import TRANSFORMS, Bound, Mask, METHODS, solve
from ..registry import OPERATORS, make_operator

#: Posterior samples without -n (ensemble Kalman guidance: one more particle than measured values).
DEFAULT_NUM = 6


def _load_input(args, model) -> torch.Tensor:
    if args.input is None:
        if model.meta["data"]["name"] != "digits":
            raise ValueError("give --input (an image or .npy file): only the digits model has a default input")
        from ..data import digits

        d = digits()
        if not 0 <= args.index < len(d):
            raise ValueError(f"--index must be in 0..{len(d) - 1}")
        return d.x[args.index]
    return read_input(args.input, model)


def read_input(path: str, model) -> torch.Tensor:
    """One sample for ``model`` from a file: an ``.npy`` array of its shape, or (image models) a
    PNG/JPEG picture, centre-cropped, resized and scaled as image folders are in training."""
    import os

    shape = model.shape
    if not os.path.isfile(path):
        raise ValueError(f"--input {path!r}: no such file (give a PNG/JPEG picture or an .npy array)")
    if path.lower().endswith(".npy"):
        from ..data.datasets import read_array

        arr = read_array(path)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{path}: expected a real numeric array, got {arr.dtype}")
        x = torch.from_numpy(arr.astype(np.float32))
        if tuple(x.shape) != shape:
            raise ValueError(f"{path}: expected one sample of shape {shape}, got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{path}: the sample holds NaN or infinite values")
        return x
    if model.kind != "image":
        raise ValueError(f"this model's samples have shape {shape}: give a .npy file, not an image")
    from ..data.datasets import read_image

    arr, _ = read_image(path, shape[-1], "L" if shape[0] == 1 else "RGB", convert=True)
    return torch.from_numpy(arr) / 127.5 - 1.0  # the training scaling of image folders


def run_restore(args) -> dict:
    from ..pretrained import load_model
    from ..registry import SAMPLERS, lookup

    outs = [check_output(o, (".png", ".npz"), inputs=[args.input]) for o in args.out if o]
    if any(o.lower().endswith(".png") for o in outs):
        from .demo import pyplot_module

        pyplot_module()
    model = load_model(args.checkpoint, bridges=True)
    if model.bridge:
        return _restore_with_bridge(args, model, outs)
    args.operator = args.operator or "inpaint"
    args.method = args.method or "mmps"
    args.noise_std = 0.05 if args.noise_std is None else args.noise_std
    if not math.isfinite(args.noise_std) or args.noise_std < 0:
        raise ValueError(f"--noise-std must be a finite number >= 0, got {args.noise_std}")
    if args.sampler and args.method not in TRANSFORMS:
        raise ValueError(f"--sampler is for the methods that transform the denoiser ({', '.join(TRANSFORMS)}); "
                         f"{args.method} brings its own steps")
    sampler = lookup(SAMPLERS, "sampler", args.sampler)() if args.sampler else None
    if model.kind != "image" and any(o.lower().endswith(".png") for o in outs):
        raise ValueError("pictures are for image models; write an .npz instead (--out restored.npz)")
    x_true = _load_input(args, model)
    op = make_operator(args.operator, model.shape, args.seed)
    y = op.measure(x_true[None], args.noise_std, torch.Generator().manual_seed(args.seed))[0]
    if args.num is None:  # ensemble Kalman guidance needs more particles than measured values
        args.num = y.numel() + 1 if args.method == "enkg" else DEFAULT_NUM
    denoiser = model.denoiser
    if model.num_classes:  # the unconditional prior of a class-conditional model
        denoiser = Bound(denoiser, label=torch.tensor([model.num_classes]))
    if args.method == "repaint" and not isinstance(op, Mask):
        raise ValueError("repaint inpaints: use it with --operator inpaint or inpaint-random")
    sol = solve(args.method, denoiser, op, y, args.noise_std, args.nfe, args.num, sampler=sampler, seed=args.seed,
                progress=args.progress and sys.stderr.isatty())
    shown = op.back_project(y[None])[0] if op.linear else torch.zeros_like(x_true)
    notes, extra = [], {}
    if "ess" in sol.info:  # the particles' effective sample size: how many distinct particles the samples rest on
        ess = sol.info["ess"]
        extra["ess"] = ess[-1]
        notes.append(f"  effective sample size: {ess[-1]:.1f} of {args.num} particles at the end (lowest on the way "
                     f"{min(ess):.1f}; a small one means the samples are copies of few particles)")
    return _finish(args, outs, model, x_true, y, shown, sol.x, sol.nfe, f"{args.method} on {args.operator} (noise "
                   f"{args.noise_std})", "samples", notes, extra)


def _finish(args, outs, model, x_true, y, shown, samples, nfe: int, what: str, kind: str, notes=(), extra=None) -> dict:
    """Print the PSNR of the samples' mean and of the best sample (and ``notes``), write ``outs``; the report."""
    x = samples.clamp(-3, 3)
    mean = x.mean(0)
    report = {"psnr_mean": psnr(mean, x_true), "psnr_best": max(psnr(s, x_true) for s in x), "nfe": nfe, **(extra or {})}
    print(f"{what}, NFE {nfe}: PSNR of the mean {report['psnr_mean']:.2f} dB, best of {len(x)} {kind} "
          f"{report['psnr_best']:.2f} dB")
    for line in notes:
        print(line)
    for out in outs:
        if out.lower().endswith(".npz"):
            save_npz(out, input=x_true.numpy(), measurement=y.numpy(), samples=samples.numpy())
        else:
            _picture(out, x_true, shown.reshape(model.shape), x, mean, args, nfe)
        print(f"  wrote {out}")
    return report


def _restore_with_bridge(args, model, outs) -> dict:
    """A bridge model restores the source made the way it was trained (its operator and noise): ``--num``
    restorations of one input in ``--nfe`` evaluations."""
    from ..bridges import DEFAULT_BRIDGE_SAMPLER, restore

    cfg = model.settings
    if args.operator not in (None, cfg["degrade"]):
        raise ValueError(f"{args.checkpoint} is a bridge trained to restore the {cfg['degrade']} operator's measurements; "
                         f"it cannot restore --operator {args.operator} (leave --operator out)")
    if args.method is not None:
        raise ValueError(f"{args.checkpoint} is a bridge: it restores with its own sampler (--sampler), not a zero-shot "
                         "--method")
    noise = cfg["degrade_noise"] if args.noise_std is None else args.noise_std
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"--noise-std must be a finite number >= 0, got {noise}")
    args.operator, args.noise_std, args.method = cfg["degrade"], noise, "bridge"
    num = args.num or DEFAULT_NUM
    sampler = args.sampler or DEFAULT_BRIDGE_SAMPLER
    if model.kind != "image" and any(o.lower().endswith(".png") for o in outs):
        raise ValueError("pictures are for image models; write an .npz instead (--out restored.npz)")
    x_true = _load_input(args, model)
    op = make_operator(cfg["degrade"], model.shape, args.seed)
    y = op.measure(x_true[None], noise, torch.Generator().manual_seed(args.seed))[0]
    source = op.back_project(y[None]).to(x_true.dtype)
    res = restore(model.denoiser, source.expand(num, *model.shape).clone(), args.nfe, sampler,
                  generator=torch.Generator().manual_seed(args.seed), progress=args.progress and sys.stderr.isatty())
    return _finish(args, outs, model, x_true, y, source[0], res.x, res.nfe,
                   f"bridge ({cfg['process']}, {sampler}) on {cfg['degrade']} (noise {noise})", "restorations")


def _picture(path, x_true, shown, x, mean, args, nfe: int, columns: int = 8):
    """Truth, measurement (back-projected), the samples and their mean, each titled (with its PSNR)."""
    from .demo import pyplot_module, save_figure, show_image

    plt = pyplot_module()
    panels = [(x_true, "truth"), (shown, "measurement")]
    panels += [(s, f"sample {k + 1}\n{psnr(s, x_true):.1f} dB") for k, s in enumerate(x)]
    panels += [(mean, f"mean\n{psnr(mean, x_true):.1f} dB")]
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows + 0.4), dpi=100, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, title) in zip(axes.flat, panels):
        show_image(ax, img)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{args.method} on {args.operator}, noise {args.noise_std}, NFE {nfe}", fontsize=9)
    save_figure(fig, path)


def add_restore_parser(sub) -> None:
    from .args import positive_int

    p = sub.add_parser("restore", help="solve an inverse problem (inpainting, super-resolution, deblurring, ...) "
                       "with a trained model as the prior",
                       description="Measure an input with an operator and noise, then draw posterior samples with a "
                       "diffusion-prior method; writes truth, measurement, samples and their mean, each with its "
                       "PSNR, as a picture and/or the arrays as an .npz.")
    p.add_argument("--checkpoint", default="shipped:digits",
                   help="shipped model name, run folder or .safetensors (default: shipped:digits)")
    p.add_argument("--input", default=None, help="an image or .npy file (default: a real digit, see --index)")
    p.add_argument("--index", type=int, default=0, help="which scikit-learn digit to restore (default: 0)")
    p.add_argument("--operator", default=None, choices=OPERATORS, metavar="NAME",
                   help=f"one of: {', '.join(OPERATORS)} (default: inpaint; a bridge model: the one it was trained on)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="measurement noise in data units (default: 0.05; a bridge model: its training noise)")
    p.add_argument("--method", default=None, choices=METHODS, metavar="NAME",
                   help=f"one of: {', '.join(METHODS)} (default: mmps; not for a bridge model, which brings its own)")
    p.add_argument("--sampler", default=None, help="sampler for mmps/pigdm/dps/ddnm/diffpir (default: ddim-eta1); for a "
                   "bridge model any sampler or bridge sampler (default: unipc-bh2 after the boot step)")
    p.add_argument("--nfe", type=positive_int, default=50, help="network evaluations (default: 50)")
    p.add_argument("-n", "--num", "--num-samples", dest="num", type=positive_int, default=None,
                   help=f"posterior samples (default: {DEFAULT_NUM}; enkg: one more than the measured values, its "
                   "particles)")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurement noise and the sampler (default: 0)")
    p.add_argument("--out", nargs="+", default=["restored.png"], metavar="FILE",
                   help="one or more .png (picture) / .npz (input, measurement, samples) files; '' for none "
                   "(default: restored.png)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

"""``sdeflow sample``: sample a trained model (default: the shipped digits model) or one of the
exact problems with any sampler, grid and NFE; write a PNG picture and/or an .npz of the samples.

Model samples are generated in fixed chunks with per-sample seeds (:mod:`sdeflow.generation`), so
they do not depend on ``--batch-size`` nor on the number of processes under torchrun.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..files import check_output, save_npz
from ..noise import BrownianTreeNoise, GeneratorNoise, SeededNoise
from ..sampling import sample
from ..registry import PROBLEMS, SAMPLERS, SCHEDULES, default_sampling, lookup, parse_grid, steps_for_nfe


#: At most this many images go into a PNG grid (the .npz holds them all).
PICTURE_LIMIT = 400


def resolve(args, schedule=None):
    """Schedule, sampler, grid and step count from the common sampling flags (a model's own
    schedule when given). A grid must end at clean data (t = 0) unless ``--partial`` asks for a run
    that stops early: otherwise the samples would silently be noise."""
    schedule = schedule or lookup(SCHEDULES, "schedule", args.schedule)()
    if args.sampler is None:  # sdeflow's default for this schedule family and budget (see registry.DEFAULTS)
        args.sampler, grid = default_sampling(schedule, args.nfe)
        args.grid = args.grid or grid
    sampler = lookup(SAMPLERS, "sampler", args.sampler)()
    if "," in args.grid:
        ts = parse_grid(args.grid, 0, schedule)
        steps = ts.numel() - 1
    else:
        steps = args.steps if args.steps is not None else steps_for_nfe(sampler, schedule, args.grid, args.nfe)
        ts = parse_grid(args.grid, steps, schedule)
    if float(ts[-1]) != 0.0 and not getattr(args, "partial", False):
        raise ValueError(f"the grid ends at t = {float(ts[-1]):.6g}, before clean data (t = 0): the samples would "
                         "still be noisy; end it with 0 (e.g. 1,0.5,0) or pass --partial for a run that stops early")
    from ..sampling import planned

    planned(sampler, schedule, ts)  # a grid the schedule cannot take is refused now, before any work
    return schedule, sampler, ts, steps


def noise_source(args, gen):
    """The ``--noise`` choice; per-sample seeds are derived from ``--seed``."""
    seeds = [args.seed * 1_000_003 + b for b in range(args.num)]
    return {"generator": lambda: GeneratorNoise(gen), "seeded": lambda: SeededNoise(seeds),
            "brownian": lambda: BrownianTreeNoise(seeds)}[getattr(args, "noise", "generator")]()


def _outputs(args, default: str) -> list[str]:
    """The ``--out`` files, each checked (a .png or .npz name in a writable folder) before any work."""
    outs = args.out if args.out is not None else [default]
    return [check_output(o, (".png", ".npz")) for o in outs if o]


def run_sample(args) -> dict:
    if args.problem is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --checkpoint (a model) or --problem (an exact mixture), not both")
        return _sample_problem(args)
    return _sample_model(args)


def _sample_problem(args) -> dict:
    args.num = args.num or 1000
    args.schedule = args.schedule or "vp-linear"
    if args.sampler is not None:
        args.grid = args.grid or "logsnr"
    outs = _outputs(args, "samples.npz")
    schedule, sampler, ts, steps = resolve(args)
    mixture, shape = lookup(PROBLEMS, "problem", args.problem)()
    gen = torch.Generator().manual_seed(args.seed)
    x_init, _ = mixture.sample_t(args.num, schedule, float(ts[0]), gen)
    result = sample(mixture.denoiser(schedule), sampler, ts, x_init.float().reshape(args.num, *shape),
                    noise=noise_source(args, gen), progress=args.progress and sys.stderr.isatty())
    print(f"{args.num} samples of {args.problem} with {args.sampler} on {args.schedule}: {steps} steps, NFE {result.nfe}")
    for out in outs:
        if out.lower().endswith(".npz"):
            save_npz(out, samples=result.x.numpy(), nfe=np.array(result.nfe), ts=ts.numpy())
        else:
            from ..data.pictures import save_samples

            save_samples(result.x, out, "image" if len(shape) == 3 else "vector")
        print(f"  wrote {out}")
    return {"x": result.x, "nfe": result.nfe}


def parse_labels(text: str | None, num: int, num_classes: int) -> torch.Tensor | None:
    """``--label``: ``all`` cycles through the classes (default), ``none`` samples unconditionally,
    ``K`` or ``K1,K2,...`` repeats the given classes."""
    if num_classes == 0:
        if text not in (None, "none"):
            raise ValueError("this model is unconditional: it takes no --label")
        return None
    if text is None or text == "all":
        return torch.arange(num) % num_classes
    if text == "none":
        return torch.full((num,), num_classes)
    try:
        chosen = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--label takes all, none, or class numbers such as 3 or 1,7; got {text!r}") from None
    bad = [k for k in chosen if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"--label {bad[0]} is not a class of this model (0..{num_classes - 1})")
    return torch.tensor(chosen)[torch.arange(num) % len(chosen)]


def _sample_model(args) -> dict:
    from ..data.pictures import class_columns, save_samples
    from ..generation import gather, generate
    from ..pretrained import load_model
    from ..distributed import Distributed

    if args.schedule is not None:
        raise ValueError("--schedule is fixed by the model's training; leave it out when sampling a checkpoint")
    outs = _outputs(args, "samples.png")
    dist = Distributed(args.device)
    model = load_model(args.checkpoint or "digits", device=dist.device)
    if args.sampler is not None:
        args.grid = args.grid or "auto"
    schedule, sampler, ts, steps = resolve(args, model.denoiser.schedule)
    if args.noise == "generator":
        args.noise = "seeded"  # per-sample seeds: independent of the batch size and of the number of processes
    args.num = args.num or (100 if model.kind == "image" else 2000)
    labels = parse_labels(args.label, args.num, model.num_classes)
    chunks = generate(model.denoiser, sampler, ts, model.shape, args.num, seed=args.seed, labels=labels,
                      batch_size=args.batch_size, noise=args.noise, rank=dist.rank, world=dist.world,
                      progress=args.progress and dist.main and sys.stderr.isatty(), device=dist.device)
    x = gather(chunks, dist.world)
    name = args.checkpoint or "digits"
    if dist.main:
        nfe = sampler.prepare(schedule, ts).nfe if not sampler.adaptive else "adaptive"
        procs = f" on {dist.world} processes" if dist.world > 1 else ""
        print(f"{args.num} samples of {name} with {args.sampler}, {steps} steps, NFE {nfe}{procs}")
        for out in outs:
            if out.lower().endswith(".npz"):
                raw = x * (1.0 / model.meta["data"]["scale"]) - model.meta["data"]["shift"] / model.meta["data"]["scale"]
                arrays = dict(samples=x.numpy(), raw=raw.numpy(), ts=ts.numpy())
                if labels is not None:
                    arrays["labels"] = labels.numpy()
                save_npz(out, **arrays)
            else:
                nrow = class_columns(model.num_classes) if (labels is not None and args.label in (None, "all")) else None
                shown = x[:PICTURE_LIMIT] if model.kind == "image" else x
                save_samples(shown, out, model.kind, nrow=nrow)
            print(f"  wrote {out}")
    return {"x": x, "labels": labels}

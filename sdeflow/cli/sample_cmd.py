"""``sdeflow sample``: run any sampler on a named problem and save the samples (.npz).

Until a trained model ships, the problems are the oracle's exact Gaussian mixtures; the start is an
exact sample of ``p_{t_max}``, so the samples can be compared with the exact data distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from ..files import save_npz
from ..noise import BrownianTreeNoise, GeneratorNoise, SeededNoise
from ..sampling import sample
from .registry import PROBLEMS, SAMPLERS, SCHEDULES, lookup, parse_grid, steps_for_nfe


def resolve(args):
    """Schedule, sampler, grid and step count from the common sampling flags."""
    schedule = lookup(SCHEDULES, "schedule", args.schedule)()
    sampler = lookup(SAMPLERS, "sampler", args.sampler)()
    if "," in args.grid:
        ts = parse_grid(args.grid, 0, schedule)
        return schedule, sampler, ts, ts.numel() - 1
    steps = args.steps if args.steps is not None else steps_for_nfe(sampler, schedule, args.grid, args.nfe)
    return schedule, sampler, parse_grid(args.grid, steps, schedule), steps


def noise_source(args, gen):
    """The ``--noise`` choice; per-sample seeds are derived from ``--seed``."""
    seeds = [args.seed * 1_000_003 + b for b in range(args.num)]
    return {"generator": lambda: GeneratorNoise(gen), "seeded": lambda: SeededNoise(seeds),
            "brownian": lambda: BrownianTreeNoise(seeds)}[getattr(args, "noise", "generator")]()


def run_sample(args) -> dict:
    schedule, sampler, ts, steps = resolve(args)
    mixture, shape = lookup(PROBLEMS, "problem", args.problem)()
    gen = torch.Generator().manual_seed(args.seed)
    x_init, _ = mixture.sample_t(args.num, schedule, float(ts[0]), gen)
    result = sample(mixture.denoiser(schedule), sampler, ts, x_init.float().reshape(args.num, *shape),
                    noise=noise_source(args, gen), progress=args.progress)
    print(f"{args.num} samples of {args.problem} with {args.sampler} on {args.schedule}: {steps} steps, NFE {result.nfe}")
    if args.out:
        save_npz(args.out, samples=result.x.numpy(), nfe=np.array(result.nfe), ts=ts.numpy())
        print(f"  wrote {args.out}")
    return {"x": result.x, "nfe": result.nfe}

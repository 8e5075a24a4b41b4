"""Inversion and gradients through sampling, measured on exact problems.

1. Explicit inversion (each sampler's own steps on the reversed grid): round-trip RMS (invert, then
   sample back) on the 2-D ring mixture with the exact field, VP linear, Karras grid ending at
   t_min (no final jump to 0), at 10, 20 and 50 steps per direction.
2. Exact inversion of the sampling map (fixed-point or Newton): worst round trip, NFE spent and
   iterations, on the 2-D ring and a 16-D mixture, at 10 and 20 steps.
3. Gradients through sampling: peak tensor memory (sdeflow.profiling.PeakMemory) and time of sampling
   plus backward for an MLP denoiser (width 512, batch 64), plain autograd against
   gradient="checkpoint", at 10, 100 and 1000 DPM-Solver++(2M) steps.

    python benchmarks/inversion.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from sdeflow import ModelDenoiser, analytic, grids, sample
from sdeflow.inversion import invert
from sdeflow.profiling import PeakMemory
from sdeflow.registry import SAMPLERS
from sdeflow.schedules import VPLinear

DETERMINISTIC = sorted(n for n, make in SAMPLERS.items() if not make().stochastic and not make().adaptive)
EXACT = ["ddim", "heun", "dpm-solver-2", "dpm-solver++-2m", "dpm-solver++-3m", "unipc-bh2", "ipndm"]


def _grid(n, sch):
    return grids.karras_grid(n, sch, denoise_to_zero=False)


def explicit_table(steps) -> str:
    mix, sch = analytic.ring_2d(), VPLinear()
    rows = ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---:|" * len(steps)]
    for name in DETERMINISTIC:
        cells = []
        for n in steps:
            x = mix.sample_t(512, sch, float(_grid(n, sch)[-1]), torch.Generator().manual_seed(0))[0]
            cells.append(f"{invert(mix.denoiser(sch), SAMPLERS[name](), _grid(n, sch), x).round_trip_rms:.2e}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def exact_table(steps) -> str:
    problems = {"2-D ring": analytic.ring_2d(), "16-D mixture": analytic.random_mixture(16, 4, structure="full", seed=2)}
    sch = VPLinear()
    rows = ["| problem | sampler | steps | method | worst round trip | converged | NFE | iterations |",
            "|---|---|---:|---|---:|---|---:|---:|"]
    for pname, mix in problems.items():
        for name in EXACT:
            for n in steps:
                x = mix.sample_t(256, sch, float(_grid(n, sch)[-1]), torch.Generator().manual_seed(1))[0]
                r = invert(mix.denoiser(sch), SAMPLERS[name](), _grid(n, sch), x, method="exact")
                share = float((r.round_trip <= 1e-9 * x.pow(2).mean(1).sqrt().clamp(min=1)).double().mean())
                rows.append(f"| {pname} | {name} | {n} | {r.method} | {float(r.round_trip.max()):.1e} | "
                            f"{share:.0%} | {r.nfe} | {r.iterations} |")
    return "\n".join(rows)


def gradient_table(steps) -> str:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 512), torch.nn.SiLU(), torch.nn.Linear(512, 512), torch.nn.SiLU(),
                              torch.nn.Linear(512, 2))
    den = ModelDenoiser(lambda x, t: mlp(torch.cat([x, t[:, None]], 1)), VPLinear(), "eps")
    x0 = torch.randn(64, 2)
    rows = ["| steps | autograd peak MiB | checkpoint peak MiB | ratio | autograd s | checkpoint s |",
            "|---:|---:|---:|---:|---:|---:|"]
    for n in steps:
        ts = grids.uniform_grid(n, t_min=1e-3)
        with torch.no_grad():
            sample(den, SAMPLERS["dpm-solver++-2m"](), ts, x0)  # per-time input cache, outside the measurement
        got = {}
        for mode in ["autograd", "checkpoint"]:
            x = x0.clone().requires_grad_()
            with PeakMemory() as m:
                sample(den, SAMPLERS["dpm-solver++-2m"](), ts, x, gradient=mode).x.pow(2).sum().backward()
            x = x0.clone().requires_grad_()
            start = time.perf_counter()
            sample(den, SAMPLERS["dpm-solver++-2m"](), ts, x, gradient=mode).x.pow(2).sum().backward()
            got[mode] = (m.peak / 2 ** 20, time.perf_counter() - start)
        (ma, ta), (mc, tc) = got["autograd"], got["checkpoint"]
        rows.append(f"| {n} | {ma:.2f} | {mc:.2f} | {ma / mc:.1f} | {ta:.2f} | {tc:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer step counts")
    args = parser.parse_args()
    print("## Explicit inversion: round-trip RMS, 2-D ring, VP linear\n")
    print(explicit_table([10, 20] if args.quick else [10, 20, 50]))
    print("\n## Exact inversion (tol 1e-9, float64)\n")
    print(exact_table([20] if args.quick else [10, 20]))
    print("\n## Gradients through sampling: peak tensor memory and time (sampling + backward)\n")
    print(gradient_table([10, 100] if args.quick else [10, 100, 1000]))


if __name__ == "__main__":
    main()

"""Teleportation: the error at equal NFE with and without the Gaussian jump over the first steps.

On the exact problems of ``sdeflow sample --problem`` (the 2-D ring and the 64-D mixture), with DDPM's
discrete schedule, rectified flow and EDM: 1000 draws ``z``; the reference is a fine solve
(DPM-Solver++(3M), 300 Karras steps) from the Gaussian's state at the top of the schedule,
``Teleport.start(z, top)``. Each sampler runs at NFE 5-15 on its best of the logSNR, Karras and auto
grids, once from the top and once from ``t_skip`` (chosen by ``Teleport.choose_time`` on 200 other
draws, threshold 0.99, at most 24 model evaluations, not counted in the NFE), starting at
``Teleport.start(z, t_skip)``. The Gaussian is the mixture's exact mean and covariance.

    python benchmarks/teleport.py      # under a minute on 2 CPU cores

Writes docs/benchmarks/teleport.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_report  # noqa: E402

from sdeflow import grids, sample, schedules  # noqa: E402
from sdeflow.registry import PROBLEMS, SAMPLERS  # noqa: E402
from sdeflow.samplers import DPMSolverPP  # noqa: E402
from sdeflow.teleport import Teleport  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "teleport.md")
NAMES = ("dpm-solver++-2m", "unipc-bh2")
NFES = (5, 6, 8, 10, 15)
GRIDS = (grids.logsnr_grid, grids.karras_grid, grids.auto_grid)


def main() -> None:
    torch.set_default_dtype(torch.float64)
    rows = ["| problem | process | t_skip | sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
            "|---|---|---:|---|" + "---|" * len(NFES)]
    for problem in ("ring-2d", "mixture-64d"):
        mix, _ = PROBLEMS[problem]()
        tp = Teleport.from_moments(mix.mean(), mix.covariance())
        for pname, sch in (("DDPM (1000 steps)", schedules.ddpm_linear()), ("rectified flow", schedules.RectifiedFlow()),
                           ("EDM", schedules.EDM())):
            den = mix.denoiser(sch)
            z = torch.randn(1000, mix.mean().numel(), generator=torch.Generator().manual_seed(0))
            top = grids.start_time(sch)
            t_skip, _ = tp.choose_time(den, torch.randn(200, z.shape[1], generator=torch.Generator().manual_seed(1)))
            ref = sample(den, DPMSolverPP(order=3), grids.karras_grid(300, sch), tp.start(z, sch, top)).x

            def error(sampler, nfe, t0):
                return min(float((sample(den, sampler, g(nfe, sch, t_max=t0), tp.start(z, sch, t0)).x - ref)
                                 .norm(dim=1).pow(2).mean().sqrt()) for g in GRIDS)
            for name in NAMES:
                cells = [f"{error(SAMPLERS[name](), n, top):.3g} / {error(SAMPLERS[name](), n, t_skip):.3g}" for n in NFES]
                rows.append(f"| {problem} | {pname} | {t_skip:.3f} | `{name}` | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    sweep = ["| t_skip | explained | NFE 6 | NFE 10 |", "|---:|---:|---:|---:|"]
    mix, _ = PROBLEMS["mixture-64d"]()
    tp, sch = Teleport.from_moments(mix.mean(), mix.covariance()), schedules.ddpm_linear()
    den = mix.denoiser(sch)
    z, z_other = (torch.randn(n, 64, generator=torch.Generator().manual_seed(s)) for n, s in ((1000, 0), (500, 1)))
    top = grids.start_time(sch)
    ref = sample(den, DPMSolverPP(order=3), grids.karras_grid(300, sch), tp.start(z, sch, top)).x
    for t in grids.logsnr_grid(24, sch, t_max=top, denoise_to_zero=False).tolist()[:9]:
        errs = [float((sample(den, SAMPLERS["unipc-bh2"](), grids.logsnr_grid(n, sch, t_max=t), tp.start(z, sch, t)).x - ref)
                      .norm(dim=1).pow(2).mean().sqrt()) for n in (6, 10)]
        sweep.append(f"| {t:.3f} | {tp.explained(den, t, z_other):.4f} | {errs[0]:.3g} | {errs[1]:.3g} |")
        print(sweep[-1], flush=True)
    write_report(OUT, "Teleportation at equal NFE", "`python benchmarks/teleport.py`; see its docstring. Each cell: RMS "
                 "endpoint error from the top / from `t_skip` (lower is better).", rows,
                 ["## Deeper skips", "", "64-D mixture, DDPM: `unipc-bh2` on the logSNR grid from each candidate time of "
                  "`choose_time` (24 candidates), with the fraction of the field the Gaussian explains there (500 other "
                  "draws).", "", *sweep])


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()

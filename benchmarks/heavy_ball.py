"""Heavy-ball momentum against DPM-Solver++ under strong classifier-free guidance.

On the labelled 2-D ring with two classes (``sdeflow.analytic.ring_2d(n_classes=2)``, exact class
fields), 2000 draws guided towards class 0 by CFG at scale ``w``, sampled on the logSNR grid at
NFE 4-12: RMS distance of each sampler's output to a reference solve from the same draws (third-order
DPM-Solver++ on 400 logSNR steps). DPM-Solver++(2M) and (3M) against ``heavy-ball`` (order 2,
``beta`` 0.8 and 0.5; order 3, ``beta`` 0.8), on VP linear and rectified flow.

    python benchmarks/heavy_ball.py      # under a minute on 2 CPU cores

Writes docs/benchmarks/heavy_ball.md.
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
from sdeflow.analytic import ring_2d  # noqa: E402
from sdeflow.guidance import Guided  # noqa: E402
from sdeflow.samplers import DPMSolverPP, HeavyBall  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "heavy_ball.md")
SAMPLERS = {"dpm-solver++-2m": lambda: DPMSolverPP(order=2), "dpm-solver++-3m": lambda: DPMSolverPP(order=3),
            "heavy-ball 2, beta 0.8": lambda: HeavyBall(order=2, beta=0.8),
            "heavy-ball 2, beta 0.5": lambda: HeavyBall(order=2, beta=0.5),
            "heavy-ball 3, beta 0.8": lambda: HeavyBall(order=3, beta=0.8)}


def main() -> None:
    torch.set_default_dtype(torch.float64)
    mix = ring_2d(n_classes=2)
    rows = ["| schedule | CFG scale | NFE | " + " | ".join(SAMPLERS) + " |", "|---|---:|---:|" + "---:|" * len(SAMPLERS)]
    for sname, sch in (("vp-linear", schedules.VPLinear()), ("rectified-flow", schedules.RectifiedFlow())):
        x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
        cond = {"label": torch.zeros(2000, dtype=torch.long)}
        for w in (1.0, 4.0, 8.0):
            guided = Guided(mix.denoiser(sch), w)
            ref = sample(guided, DPMSolverPP(order=3), grids.logsnr_grid(400, sch), x, cond=cond).x
            for nfe in (4, 6, 8, 12):
                ts = grids.logsnr_grid(nfe, sch)
                errs = [float((sample(guided, make(), ts, x, cond=cond).x - ref).norm(dim=1).pow(2).mean().sqrt())
                        for make in SAMPLERS.values()]
                rows.append(f"| {sname} | {w:g} | {nfe} | " + " | ".join(f"{e:.3g}" for e in errs) + " |")
                print(rows[-1], flush=True)
    write_report(OUT, "Heavy-ball momentum under strong guidance",
                 "`python benchmarks/heavy_ball.py`; see its docstring. RMS error to the reference solve (lower is better).",
                 rows)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()

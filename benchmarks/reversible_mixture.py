"""The reversible samplers against their base solvers on Gaussian mixtures (not only on a Gaussian).

Error of the map from ``t = 1`` to the smallest noise level of a Karras grid (as ``invert`` uses it):
RMS distance to a reference solve of the probability-flow ODE from the same 512 draws (third-order
DPM-Solver in float64 on 2000 logSNR steps), exact mixture fields, at 10, 20 and 40 evaluations:
BDIA and O-BELM against DDIM (one evaluation per step), reversible Heun against Heun (two, its last
step one), EDICT (two per step), with DPM-Solver++(2M) for scale. The 2-D ring and the 64-D mixture of
``sdeflow sample --problem``, on VP linear, rectified flow and EDM.

    python benchmarks/reversible_mixture.py      # a few minutes on 2 CPU cores

Writes docs/benchmarks/reversible_mixture.md.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sdeflow import grids, sample  # noqa: E402
from sdeflow.files import atomic_write  # noqa: E402
from sdeflow.registry import PROBLEMS, SAMPLERS, SCHEDULES  # noqa: E402
from sdeflow.samplers import DPMSolver  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "reversible_mixture.md")
NAMES = ["ddim", "bdia", "obelm", "edict", "heun", "reversible-heun", "dpm-solver++-2m"]


def steps_for(name: str, nfe: int) -> int:
    return {"edict": nfe // 2, "heun": nfe // 2, "reversible-heun": nfe - 1}.get(name, nfe)


def main() -> None:
    rows = ["| problem | schedule | NFE | " + " | ".join(NAMES) + " |", "|---|---|---:|" + "---:|" * len(NAMES)]
    for problem in ("ring-2d", "mixture-64d"):
        mix, _ = PROBLEMS[problem]()
        for sname in ("vp-linear", "rectified-flow", "edm"):
            sch = SCHEDULES[sname]()
            den = mix.denoiser(sch)
            ends = grids.karras_grid(2, sch, denoise_to_zero=False)  # every Karras grid runs between these times
            x, _ = mix.sample_t(512, sch, float(ends[0]), torch.Generator().manual_seed(0))
            fine = grids.logsnr_grid(2000, sch, t_max=float(ends[0]), t_min=float(ends[-1]), denoise_to_zero=False)
            ref = sample(den, DPMSolver(order=3, form="data"), fine, x).x
            for nfe in (10, 20, 40):
                cells = []
                for name in NAMES:
                    ts = grids.karras_grid(steps_for(name, nfe), sch, denoise_to_zero=False)
                    assert float(ts[0]) == float(ends[0]) and float(ts[-1]) == float(ends[-1])
                    run = sample(den, SAMPLERS[name](), ts, x)
                    assert run.nfe == nfe, (name, run.nfe, nfe)
                    cells.append(f"{float((run.x - ref).pow(2).sum(1).mean().sqrt()):.2e}")
                rows.append(f"| {problem} | {sname} | {nfe} | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    text = ["# Reversible samplers on Gaussian mixtures", "", "`python benchmarks/reversible_mixture.py`; see its docstring.",
            "", *rows, ""]
    atomic_write(OUT, lambda tmp: open(tmp, "w").write("\n".join(text)))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

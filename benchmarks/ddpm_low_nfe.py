"""DDPM at NFE 5-8 in tens of dimensions: sdeflow's best configuration, with the start below the top made
explicit, against every diffusers scheduler configuration (``leading`` spacing included).

The cell family where a peer led: a 1000-step DDPM eps model on mixtures of some 64 dimensions at
NFE 5-8, where diffusers' UniPC with ``leading`` spacing starts below the top of the schedule. Scored
as the ODE benchmark scores (``benchmarks/ode_solvers.py``): every method starts from exact draws of
``p_{t0}`` at its own first time ``t0`` and is judged by the RMS distance to the exact probability-flow
solution from there (float32 states). sdeflow runs every deterministic one-evaluation-per-step and
single-step sampler of ``benchmarks/families.py`` on its grids and uniform in ``t`` (diffusers' index
spacings are uniform in ``t``), from the top and from the ``leading``
start ``t_max (n - 1) / n`` (the convention of ``sdeflow tune --start leading``), so both libraries may
start low. Problems: the ODE benchmark's 64-D mixture and the validation problems of the problem family
with 32-128 dimensions and several components.

    python benchmarks/ddpm_low_nfe.py      # about five minutes; writes docs/benchmarks/ddpm_low_nfe.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, Problem, Shared, sdeflow_denoiser, write_report  # noqa: E402
from families import SPLITS, draw_problem  # noqa: E402
from peers import diffusers_runs, load_diffusers  # noqa: E402

from sdeflow import analytic, sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, steps_for_nfe  # noqa: E402
from sdeflow.samplers.names import CANDIDATE_GRIDS, CANDIDATE_SAMPLERS  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "ddpm_low_nfe.md")
BUDGETS = [5, 6, 8]
#: sdeflow's grids here: the candidates of its family, and uniform in t (what diffusers' index spacings are).
GRIDS_HERE = (*CANDIDATE_GRIDS["vp"], "uniform")


def problems() -> list[Problem]:
    out = [Problem("ODE benchmark 64-D mixture", analytic.random_mixture(64, 8, seed=1), (64,), 500)]
    for seed in range(SPLITS["validate"], SPLITS["validate"] + 20):
        problem, params = draw_problem(seed)
        if 32 <= params["dim"] <= 128 and params["components"] >= 2:
            out.append(Problem(f"family problem {seed} (D={params['dim']}, K={params['components']})", problem.mixture,
                               problem.shape, 300))
    return out


def sdeflow_runs(shared: Shared, process, nfe: int):
    den, sch = sdeflow_denoiser(shared.problem, process), process.schedule
    for name in CANDIDATE_SAMPLERS:
        sampler = SAMPLERS[name]()
        for grid in GRIDS_HERE:
            n = steps_for_nfe(sampler, sch, grid, nfe)
            for start in ("top", "leading"):
                t_max = None if start == "top" else float(GRIDS[grid](n, sch)[0]) * (n - 1) / n
                if t_max is not None and n < 2:
                    continue
                try:
                    ts = GRIDS[grid](n, sch, t_max=t_max)
                except ValueError:  # the discrete spacings fix their own start
                    continue
                if sampler.prepare(sch, ts).nfe != nfe:
                    continue
                x = sample(den, sampler, ts, shared.x_init(float(ts[0])).float(), check_finite=False).x
                yield f"sdeflow {name} ({grid}, {start})", (float(ts[0]), 0.0), x.double()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    d, err = load_diffusers()
    if d is None:
        raise SystemExit(f"this comparison needs diffusers: {err}")
    process = PROCESSES[0]  # DDPM eps, 1000 discrete steps
    lines = ["| problem | NFE | best diffusers configuration | its RMS | best sdeflow configuration | its RMS | "
             "diffusers / sdeflow |", "|---|---|---|---|---|---|---|"]
    ratios = []
    for problem in problems():
        shared = Shared(problem, process)
        for nfe in BUDGETS:
            best = {}
            for family, runs in (("diffusers", ((n, s, x) for n, s, x, calls in diffusers_runs(d, shared, process, nfe))),
                                 ("sdeflow", sdeflow_runs(shared, process, nfe))):
                for name, span, x in runs:
                    rms = shared.score(span, x.reshape(problem.num, -1))["rms"] if bool(torch.isfinite(x).all()) else math.inf
                    if rms < best.get(family, (None, math.inf))[1]:
                        best[family] = (name, rms)
            ratio = best["diffusers"][1] / best["sdeflow"][1]
            ratios.append(ratio)
            lines.append(f"| {problem.name} | {nfe} | {best['diffusers'][0]} | {best['diffusers'][1]:.3g} | "
                         f"{best['sdeflow'][0]} | {best['sdeflow'][1]:.3g} | {ratio:.2f} |")
            print(lines[-1], flush=True)
    summary = [f"sdeflow's best is at least 1.5x more accurate than diffusers' best in {sum(r >= 1.5 for r in ratios)} of "
               f"{len(ratios)} cells and at least as accurate in {sum(r >= 1 for r in ratios)}; ratios "
               f"{min(ratios):.2f}-{max(ratios):.2f}."]
    intro = ("Written by `python benchmarks/ddpm_low_nfe.py`. The best configuration of each library per problem "
             "and budget (sdeflow's: sampler, grid and start); RMS against the exact probability-flow solution from "
             "each method's own start, float32 states.")
    write_report(OUT, "DDPM at NFE 5-8: sdeflow against diffusers, both free to start below the top", intro, summary, lines)


if __name__ == "__main__":
    main()

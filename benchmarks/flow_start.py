"""Where should a rectified-flow grid start: at t = 1, or at t = 0.999 as ``sdeflow tune`` starts it?

On rectified flow the logSNR is infinite at t = 1, so sdeflow's tuner and its ``auto`` grid start at
``grids.start_time`` = 0.999, while ``sdeflow sample --grid uniform`` (and ``quadratic``) start at 1.
The family benchmark (``families.py --moved``) compares the two runs each from exact draws of its own
start, which leaves out what a user pays for starting below 1: the prior there is drawn as
``N(0, sigma(0.999)^2)`` (``sampling.prior_sample``), which drops the data's 0.001 share of ``x_t``.

Here each noise draw ``eps`` is followed end to end, against the exact probability-flow map of ``eps``
from t = 1 (the sample that noise stands for):

- ``from 1``: the grid as ``sdeflow sample`` runs it, from ``x_1 = eps``;
- ``from 0.999``: the grid moved to 0.999, from ``sigma(0.999) eps``, as a user's run from there starts;
- ``prior alone``: the exact map from ``sigma(0.999) eps``, the error of the approximate prior with no
  integration error at all.

On the 12 validation problems of ``families_fine.json`` (at most 128 dimensions), 256 draws each, every
candidate sampler on the uniform and quadratic grids at NFE 5, 10, 20 and 50, float64. Per sampler, the
median over problems, grids and budgets of the RMS ratio ``from 0.999`` / ``from 1``, and the share of
cells where starting at 0.999 is better; per budget, the prior's own error against ``from 1``'s.

    python benchmarks/flow_start.py      # about 4 minutes on one core; writes docs/benchmarks/flow_start.md
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, Problem, Shared, sdeflow_denoiser, write_report  # noqa: E402
from families import FINE_OUT, MOVED, draw_problem, load, quantile  # noqa: E402

from sdeflow import grids, sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402
from sdeflow.samplers import DPMSolver, steps_for_nfe  # noqa: E402
from sdeflow.samplers.names import CANDIDATE_SAMPLERS  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "flow_start.md")
BUDGETS, DRAWS = (5, 10, 20, 50), 256


def exact_map(problem: Problem, schedule, x: torch.Tensor, t0: float) -> torch.Tensor:
    """The probability-flow map of ``x`` from ``t0`` to 0 (the benchmark's reference solve: third-order
    DPM-Solver in logSNR on a fine grid, float64)."""
    ts = grids.reference_grid(torch.tensor([t0, 0.0], dtype=torch.float64), schedule, 600)
    return sample(problem.mixture.denoiser(schedule), DPMSolver(order=3, form="data"), ts, x).x


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum(1).mean().sqrt())


def measure(seed: int) -> list[tuple]:
    """``(sampler, grid, nfe, from 1, from 0.999, prior alone)`` RMS errors on the problem of ``seed``."""
    problem = draw_problem(seed)[0]
    problem = Problem(problem.name, problem.mixture, problem.shape, DRAWS)
    process = next(p for p in PROCESSES if p.time_input == "t")
    sch, den = process.schedule, sdeflow_denoiser(problem, process)
    top = grids.start_time(sch)
    eps = Shared(problem, process, seed=seed).eps
    below = float(sch.sigma(top)) * eps  # sampling.prior_sample's draw at the tuner's start, same noise
    truth = exact_map(problem, sch, eps, 1.0)
    prior = rms(exact_map(problem, sch, below, top), truth)
    rows = []
    for sname in CANDIDATE_SAMPLERS:
        sampler = SAMPLERS[sname]()
        for gname in MOVED["flow"]:
            for nfe in BUDGETS:
                n = steps_for_nfe(sampler, sch, gname, nfe)
                ts, moved = GRIDS[gname](n, sch), GRIDS[gname](n, sch, t_max=top)
                if sampler.prepare(sch, ts).nfe > nfe:
                    continue
                a = rms(sample(den, sampler, ts, eps, check_finite=False).x, truth)
                b = rms(sample(den, sampler, moved, below, check_finite=False).x, truth)
                rows.append((sname, gname, nfe, a, b, prior))
    return rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    seeds = sorted(load(FINE_OUT)["problems"], key=int)
    rows = [r for seed in seeds for r in measure(int(seed))]
    by_sampler, by_budget = collections.defaultdict(list), collections.defaultdict(list)
    for sname, _, nfe, a, b, prior in rows:
        by_sampler[sname].append(b / a)
        by_budget[nfe].append(prior / a)
    table = ["| sampler | median ratio, from 0.999 / from 1 (10th-90th percentile) | cells better from 0.999 |",
             "|---|---|---|"]
    table += [f"| {s} | {statistics.median(r):.2f} ({quantile(r, 0.1):.2f}-{quantile(r, 0.9):.2f}) | "
              f"{sum(v < 1 for v in r) / len(r):.0%} |" for s, r in sorted(by_sampler.items())]
    floor = ["| NFE | the prior alone / from 1: median (10th-90th percentile) |", "|---|---|"]
    floor += [f"| {nfe} | {statistics.median(r):.3f} ({quantile(r, 0.1):.3f}-{quantile(r, 0.9):.3f}) |"
              for nfe, r in sorted(by_budget.items())]
    better = sum(b < a for *_, a, b, _ in rows)
    intro = (f"Written by `python benchmarks/flow_start.py`: the {len(seeds)} validation problems of "
             f"`docs/benchmarks/families_fine.json`, {DRAWS} noise draws each, rectified flow, every candidate sampler on "
             f"the uniform and quadratic grids at NFE {', '.join(map(str, BUDGETS))}. Each error: the RMS distance, over "
             "the draws, from the exact probability-flow map of the noise from t = 1. `from 1` runs the grid from "
             "`x_1 = eps`, as `sdeflow sample --grid uniform` does; `from 0.999` runs it moved to t = 0.999 from "
             "`sigma(0.999) eps`, the prior `sdeflow` draws there; `the prior alone` is the exact map from that draw, "
             "the error of the approximate prior with no integration error.")
    summary = [f"Starting at 0.999 is better in {better} of {len(rows)} cells "
               f"({better / len(rows):.0%}); by sampler:"]
    write_report(OUT, "Rectified flow: starting a grid at t = 1 or at t = 0.999", intro, summary, table,
                 ["The prior's own error against the run from 1, by budget:", ""] + floor)


if __name__ == "__main__":
    main()

"""Teleportation with tuned grids: a grid fitted from the top against a grid fitted from the rule's
``t_skip``, on fresh draws of problems neither was chosen on.

Problems: non-Gaussian validation problems of ``benchmarks/families.py``, the three processes, the
default sampler at NFE 5 and 8. The data's Gaussian is the mixture's exact one. Both grids are fitted
by ``optimize_grid`` with its defaults on 100 noises ``z`` (seed 1), against the same teacher: the
exact probability-flow solution from the Gaussian's own state at the top, ``alpha_1 mu + C_1^{1/2} z``
(``start="top"`` on those states, and ``start="teleport"`` at the rule's ``t_skip``). Both are then
run on 256 fresh noises (seed 2) and scored by the RMS distance to the exact solution of the same map.

    python benchmarks/teleport_tuned.py     # about ten minutes; writes docs/benchmarks/teleport_tuned.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, sdeflow_denoiser, write_report  # noqa: E402
from families import draw_problem  # noqa: E402

from sdeflow import grids  # noqa: E402
from sdeflow.registry import SAMPLERS, default_sampling  # noqa: E402
from sdeflow.sampling import prior_std  # noqa: E402
from sdeflow.teleport import Teleport  # noqa: E402
from sdeflow.tuning import Teacher, endpoint_loss, optimize_grid  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "teleport_tuned.md")
SEEDS = [1000, 1001, 1016]
BUDGETS = [5, 8]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    lines = ["| problem | process | NFE | sampler | t_skip | tuned from the top | tuned from t_skip | gain |",
             "|---|---|---|---|---|---|---|---|"]
    gains = []
    for seed in SEEDS:
        problem, params = draw_problem(seed)
        tel = Teleport.from_moments(problem.mixture.mean(), problem.mixture.covariance())
        d = params["dim"]
        z_fit = torch.randn(100, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        z_new = torch.randn(256, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        for process in PROCESSES:
            den, sch = sdeflow_denoiser(problem, process), process.schedule
            top = grids.start_time(sch)
            fresh_top = tel.start(z_new, sch, top)
            target = Teacher(den, fresh_top, steps=400).end
            t_skip, _ = tel.choose_time(den, torch.randn(128, d, generator=torch.Generator().manual_seed(3)))
            for nfe in BUDGETS:
                name = default_sampling(sch, nfe)[0]
                sampler = SAMPLERS[name]()
                from_top = optimize_grid(den, sampler, nfe, tel.start(z_fit, sch, top), sampler_name=name)
                error_top = endpoint_loss(den, sampler, from_top.grid(), fresh_top, target)
                top_cell = f"{error_top:.3g}" + (f" ({from_top.method})" if from_top.method.startswith("hand:") else "")
                if t_skip >= top:
                    lines.append(f"| {seed} (D={d}) | {process.name} | {nfe} | {name} | no skip | {top_cell} | - | - |")
                    continue
                prior = z_fit * prior_std(sch, top)  # optimize_grid reads the noise as x_init / prior std
                skipped = optimize_grid(den, sampler, nfe, prior, sampler_name=name, start="teleport", teleport=tel,
                                        t_skip=t_skip)
                first = tel.start(z_new, sch, skipped.ts[0]) if skipped.start == "teleport" else fresh_top
                error_skip = endpoint_loss(den, sampler, skipped.grid(), first, target)
                gains.append(error_top / error_skip)
                lines.append(f"| {seed} (D={d}) | {process.name} | {nfe} | {name} | {t_skip:.3f} | {top_cell} | "
                             f"{error_skip:.3g} ({skipped.start}) | {gains[-1]:.2f} |")
                print(lines[-1], flush=True)
    summary = [f"Teleported tuned grids against tuned grids from the top, on fresh draws: median gain "
               f"{statistics.median(gains):.2f}, range {min(gains):.2f}-{max(gains):.2f}; better in "
               f"{sum(g > 1 for g in gains)} of {len(gains)} cells."]
    intro = ("Written by `python benchmarks/teleport_tuned.py`. Gain: the fresh-draw RMS error of the grid tuned "
             "from the top over that of the grid tuned from `t_skip` (above 1: teleporting helps). Where a fit "
             "did not pass `optimize_grid`'s checks against the hand grids (held-out draws, and the RMS over all "
             "its draws), it returned a hand grid from the top: shown as `hand:<grid>` for the fit from the top, "
             "and as `top` for the fit from `t_skip`.")
    write_report(OUT, "Teleportation with tuned grids, on fresh draws", intro, summary, lines)


if __name__ == "__main__":
    main()

"""Grid fitting through autograd against central differences, on the ODE benchmark's 64-D mixture.

The same ``descent`` from the same starts (the DP grid and the best hand grids), once with the teacher
loss's gradient taken through the sampling run (``gradient="autograd"``: one run and its backward pass
per gradient) and once by central differences (``2n`` runs per gradient). Reported: the fitted loss,
model evaluations (each on the 100 fitting draws; of them, those differentiated through) and wall
time, per process, sampler and NFE.

    python benchmarks/grid_gradient.py     # writes docs/benchmarks/grid_gradient.{md,json}
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PROCESSES, problems, save_json, sdeflow_denoiser  # noqa: E402
from tuning_rows import fit_draws  # noqa: E402

from sdeflow import grids  # noqa: E402
from sdeflow.files import atomic_write  # noqa: E402
from sdeflow.registry import SAMPLERS  # noqa: E402
from sdeflow.tuning import GridSpace, Teacher, candidate_times, optimize_grid  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")
CASES = [("unipc-bh2", 8), ("dpm-solver++-2m", 20)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problem", default="64-D mixture")
    args = p.parse_args(argv)
    problem = next(q for q in problems() if q.name == args.problem)
    rows = []
    for process in PROCESSES:
        den, sch = sdeflow_denoiser(problem, process), process.schedule
        t0 = grids.start_time(sch)
        teacher = Teacher(den, fit_draws(problem, process, t0, 100), times=candidate_times(GridSpace(sch, 1)))
        for name, nfe in CASES:
            row = dict(problem=problem.name, process=process.name, sampler=name, nfe=nfe)
            for gradient in ("autograd", "differences"):
                start = time.time()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    tuned = optimize_grid(den, SAMPLERS[name](), nfe, teacher=teacher, sampler_name=name,
                                          gradient=gradient)
                row[gradient] = dict(loss=tuned.loss, cost_nfe=tuned.cost_nfe, cost_grad=tuned.cost_grad,
                                     seconds=time.time() - start, fell_back=any("central differences" in str(w.message)
                                                                                for w in caught))
            rows.append(row)
            a, d = row["autograd"], row["differences"]
            print(f"{process.name}, {name} NFE {nfe}: autograd {a['loss']:.4e} ({a['cost_nfe']} evaluations, "
                  f"{a['seconds']:.1f} s), differences {d['loss']:.4e} ({d['cost_nfe']}, {d['seconds']:.1f} s)", flush=True)
    save_json(os.path.join(OUT, "grid_gradient.json"), {"results": rows})
    lines = ["# Grid fitting through autograd against central differences", "",
             "`python benchmarks/grid_gradient.py`: the `descent` of `optimize_grid` on the ODE benchmark's "
             f"{problem.name}, 100 fitting draws, the same starts; evaluations are model calls on the batch (of them, "
             "differentiated through); times on the machine that ran it.", "",
             "| process | sampler | NFE | loss, autograd | loss, differences | evaluations, autograd | evaluations, "
             "differences | time, autograd | time, differences | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, d = r["autograd"], r["differences"]
        note = " (check failed: differences)" if a["fell_back"] else ""
        lines.append(f"| {r['process'].split(' (')[0]} | {r['sampler']} | {r['nfe']} | {a['loss']:.4e}{note} | "
                     f"{d['loss']:.4e} | {a['cost_nfe']} ({a['cost_grad']}) | {d['cost_nfe']} | {a['seconds']:.1f} s | "
                     f"{d['seconds']:.1f} s | {d['seconds'] / a['seconds']:.1f}x |")
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(OUT, "grid_gradient.md"), lambda tmp: open(tmp, "w").write(text))
    print(text)


if __name__ == "__main__":
    main()

"""Teleportation on problems it was not designed on: the rule's skip time and the evaluations it saves,
over the validation problems of ``benchmarks/families.py``.

For each problem (dimension up to 600, so that the data's covariance is formed exactly) and process:
the data's Gaussian (the mixture's exact mean and covariance), 128 noises ``z``, the exact
probability-flow solution of each from the Gaussian's own state at the top ``alpha_1 mu + C_1^{1/2} z``
(a third-order solve on a fine grid, float64), and the default sampler on its default grid at budgets
4-30, once from the top and once from the rule's ``t_skip`` (:meth:`~sdeflow.teleport.Teleport.choose_time`,
99% of the field explained, measured on 128 other noises), where the Gaussian carries ``z`` exactly.
"NFE saved" at a teleported budget ``n``: ``1 - n / m``, ``m`` the budget the run from the top needs for
the same error (log-log interpolation between the measured budgets; above 30: not reached).

    python benchmarks/teleport_families.py        # writes docs/benchmarks/teleport_families.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, budget_for, sdeflow_denoiser, write_report  # noqa: E402
from families import SPLITS, draw_problem  # noqa: E402

from sdeflow import grids, sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, default_sampling, steps_for_nfe  # noqa: E402
from sdeflow.teleport import Teleport  # noqa: E402
from sdeflow.tuning import Teacher  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "teleport_families.md")
BUDGETS = [4, 5, 6, 8, 10, 12, 15, 20, 25, 30]
REPORTED = [5, 6, 8, 10, 15, 20]
MAX_DIM = 600


def errors(den, sch, tel, z, target, t_start) -> dict[int, float]:
    out = {}
    for nfe in BUDGETS:
        name, grid = default_sampling(sch, nfe)
        sampler = SAMPLERS[name]()
        ts = GRIDS[grid](steps_for_nfe(sampler, sch, grid, nfe), sch, t_max=t_start)
        x = sample(den, sampler, ts, tel.start(z, sch, t_start), check_finite=False).x
        out[nfe] = float((x - target).pow(2).sum(1).mean().sqrt())
    return out


def measure(seed: int) -> list[dict]:
    problem, params = draw_problem(seed)
    mix = problem.mixture
    tel = Teleport.from_moments(mix.mean(), mix.covariance())
    g = torch.Generator().manual_seed(seed)
    z, z_rule = (torch.randn(128, params["dim"], generator=g, dtype=torch.float64) for _ in range(2))
    rows = []
    for process in PROCESSES:
        den, sch = sdeflow_denoiser(problem, process), process.schedule
        top = grids.start_time(sch)
        target = Teacher(den, tel.start(z, sch, top), steps=400).end
        t_skip, _ = tel.choose_time(den, z_rule)
        from_top = errors(den, sch, tel, z, target, top)
        row = {"problem": seed, "dim": params["dim"], "components": params["components"], "process": process.name,
               "t_skip": t_skip, "top": top, "from_top": from_top}
        if t_skip < top:
            tele = errors(den, sch, tel, z, target, t_skip)
            row["teleported"] = tele
            need = {n: budget_for(tele[n], from_top) for n in REPORTED}
            row["saved"] = {n: 1 - n / min(m, BUDGETS[-1]) for n, m in need.items()}
            row["beyond"] = [n for n, m in need.items() if m > BUDGETS[-1]]  # the top needs more than 30: a lower bound
        rows.append(row)
        print(f"problem {seed} (D={params['dim']}, K={params['components']}) {process.name}: t_skip {t_skip:.3f}"
              + ("" if t_skip >= top else ", saved " + ", ".join(f"NFE {n}: {v:.0%}" for n, v in row["saved"].items())),
              flush=True)
    return rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    seeds = [s for s in range(SPLITS["validate"], SPLITS["validate"] + 20) if draw_problem(s)[1]["dim"] <= MAX_DIM]
    rows = [r for s in seeds for r in measure(s)]
    lines = ["| problem | D | K | process | t_skip | " + " | ".join(f"saved at NFE {n}" for n in REPORTED) + " |",
             "|---|---|---|---|---|" + "---|" * len(REPORTED)]
    for r in rows:
        cells = ([("≥" if n in r["beyond"] else "") + f"{r['saved'][n]:.0%}" for n in REPORTED] if "saved" in r
                 else ["no skip"] * len(REPORTED))
        lines.append(f"| {r['problem']} | {r['dim']} | {r['components']} | {r['process']} | {r['t_skip']:.3f} | "
                     + " | ".join(cells) + " |")
    skipped = [r for r in rows if "saved" in r]
    summary = [f"The rule skips on {len(skipped)} of {len(rows)} (problem, process) pairs."]
    for n in REPORTED:
        v = [r["saved"][n] for r in skipped]
        if v:
            summary.append(f"- NFE {n}: median {statistics.median(v):.0%} saved, at least 20% in {sum(x >= 0.2 for x in v)} "
                           f"of {len(v)}, worse than no skip in {sum(x < 0 for x in v)}.")
    intro = ("Written by `python benchmarks/teleport_families.py` (the validation problems of `benchmarks/families.py` "
             f"with dimension up to {MAX_DIM}). Each run is the default sampler and grid at its budget; "
             "`saved` is the share of evaluations the teleported run saves at equal RMS error against the run from "
             "the top (negative: it costs more; ≥: the run from the top does not reach that error by NFE 30).")
    write_report(OUT, "Teleportation on unseen problems: skip time and evaluations saved", intro, summary, lines)


if __name__ == "__main__":
    main()

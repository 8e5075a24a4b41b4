"""Grids tuned to the model (sdeflow.tuning) against hand grids, peers and the exact optimum.

Part 1, the certificate (NFE 5 and 8): on a 16-D Gaussian (variances 0.01-4) the exact W2 of each sampler's output,
for the exact-optimal grid (``exact_optimal_grid``), the grids fitted on 100 draws by each method
(``dp``, ``descent``, ``dp+descent``), Align Your Steps' tangent law and the best hand grid.

Part 2, the ODE benchmark's problems (``common.py``: same 500 draws, same float64 reference solve,
float32 states): for each process and sampler, a grid fitted on 100 *other* draws (seed 7) is scored
on the benchmark's draws, next to the same sampler's best hand grid in this run and to the best
sdeflow and best peer rows (any method, any grid) of ``docs/benchmarks/ode_solvers.json``.

    python benchmarks/tuning.py                 # both parts, writes docs/benchmarks/tuning.{md,json}
    python benchmarks/tuning.py --part 1        # the certificate only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PROCESSES, Shared, family, problems, sdeflow_denoiser  # noqa: E402

from sdeflow import analytic, grids, sample  # noqa: E402
from sdeflow.analytic.sampler_law import gaussian_output_law, gaussian_w2  # noqa: E402
from sdeflow.files import atomic_write, write_json  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, SCHEDULES  # noqa: E402
from sdeflow.tuning import Teacher, ays_gaussian_grid, candidate_times, exact_optimal_grid, GridSpace, \
    hand_grids, optimize_grid, steps_for  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")
SAMPLER_NAMES = ["dpm-solver++-2m", "unipc-bh2", "ipndm"]
NFES = [5, 6, 8, 10, 20]
HAND = {"index": ["auto", "logsnr", "karras", "quadratic", "trailing"], "edm": ["auto", "karras", "logsnr", "polyexponential"],
        "t": ["auto", "uniform", "logsnr", "quadratic", "shifted"]}


def certificate(nfes) -> list[dict]:
    dim = 16
    gauss = analytic.gaussian(torch.randn(dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                              torch.logspace(-2, 0.6, dim, dtype=torch.float64))
    std = float(gauss.cov.var[0].mean().sqrt())
    rows = []
    for sched in ("vp-linear", "rectified-flow"):
        sch = SCHEDULES[sched]()
        den = gauss.denoiser(sch)
        x = gauss.sample_t(100, sch, grids.start_time(sch), torch.Generator().manual_seed(0))[0]
        for name in SAMPLER_NAMES:
            sampler = SAMPLERS[name]()
            for nfe in nfes:
                def w2(ts):
                    m, v = gaussian_output_law(gauss, sampler, sch, ts)
                    return gaussian_w2(m, v.clamp_min(0), gauss.means[0], gauss.cov.var[0])

                start = time.time()
                _, opt = exact_optimal_grid(gauss, sampler, sch, nfe)
                n = steps_for(sampler, sch, nfe)
                row = dict(schedule=sched, sampler=name, nfe=nfe, exact_optimal=opt,
                           ays=w2(ays_gaussian_grid(n, sch, std)))
                hand = {k: w2(ts) for k, ts in hand_grids(sch, n).items()}
                row["hand"], row["hand_grid"] = min(hand.values()), min(hand, key=hand.get)
                for method in ("dp", "descent", "dp+descent"):
                    tuned = optimize_grid(den, sampler, nfe, x, method=method, sampler_name=name)
                    row[method], row[method + " cost"] = w2(tuned.grid()), tuned.cost_nfe
                rows.append(row)
                print(f"{sched} {name} NFE {nfe}: exact-optimal {opt:.3e}, dp+descent {row['dp+descent']:.3e}, "
                      f"dp {row['dp']:.3e}, descent {row['descent']:.3e}, AYS {row['ays']:.3e}, best hand "
                      f"{row['hand']:.3e} ({row['hand_grid']}) [{time.time() - start:.0f} s]", flush=True)
    return rows


def stored_best(problem: str, process: str, nfe: int) -> dict:
    """Best sdeflow and best peer RMS of the ODE benchmark's stored run."""
    path = os.path.join(OUT, "ode_solvers.json")
    with open(path) as f:
        rows = json.load(f)["results"]
    best = {}
    for r in rows:
        if r["problem"] == problem and r["process"] == process and r["nfe"] == nfe:
            fam = "sdeflow" if family(r["method"]) == "sdeflow" else "peer"
            if fam not in best or r["rms"] < best[fam][0]:
                best[fam] = (r["rms"], r["method"])
    return best


def mixtures(nfes, names) -> list[dict]:
    rows = []
    for problem in problems():
        if problem.name not in names:
            continue
        for process in PROCESSES:
            sch = process.schedule
            den = sdeflow_denoiser(problem, process)
            shared = Shared(problem, process)
            t0 = grids.start_time(sch)
            fit = Shared(problem, process, seed=7).x_init(t0)[:100].float()
            start = time.time()
            teacher = Teacher(den, fit, times=candidate_times(GridSpace(sch, 1)))
            print(f"{problem.name}, {process.name}: teacher {teacher.calls} evaluations, {time.time() - start:.0f} s", flush=True)
            for nfe in nfes:
                stored = stored_best(problem.name, process.name, nfe)
                for name in SAMPLER_NAMES:
                    sampler = SAMPLERS[name]()
                    start = time.time()
                    tuned = optimize_grid(den, sampler, nfe, teacher=teacher, sampler_name=name)
                    seconds = time.time() - start
                    ts = tuned.grid()
                    score = shared.score((float(ts[0]), 0.0), sample(den, sampler, ts, shared.x_init(float(ts[0])).float()).x.double())
                    hand = {}
                    for g in HAND[process.time_input]:
                        n = next((m for m in range(1, nfe + 1) if sampler.prepare(sch, GRIDS[g](m, sch)).nfe == nfe), None)
                        if n is None:
                            continue
                        hts = GRIDS[g](n, sch)
                        hx = sample(den, sampler, hts, shared.x_init(float(hts[0])).float()).x.double()
                        hand[g] = shared.score((float(hts[0]), float(hts[-1])), hx)["rms"]
                    best_hand = min(hand, key=hand.get) if hand else None
                    row = dict(problem=problem.name, process=process.name, sampler=name, nfe=nfe, used_nfe=tuned.nfe,
                               tuned=score["rms"], fit_loss=tuned.loss, cost_nfe=tuned.cost_nfe + teacher.calls,
                               seconds=seconds, hand=hand.get(best_hand), hand_grid=best_hand,
                               best_sdeflow=stored.get("sdeflow"), best_peer=stored.get("peer"), ts=tuned.ts)
                    rows.append(row)
                    peer = row["best_peer"][0] if row["best_peer"] else float("nan")
                    print(f"  {name} NFE {nfe}: tuned {score['rms']:.3e} (fit {tuned.loss:.3e}), best hand "
                          f"{row['hand'] or float('nan'):.3e} ({best_hand}), best peer {peer:.3e} [{seconds:.0f} s]", flush=True)
    return rows


def report(cert, mix) -> str:
    out = ["# Grids tuned to the model", "",
           "`python benchmarks/tuning.py`. See `sdeflow.tuning` and docs/tuning.md for the methods.", ""]
    if cert:
        out += ["## The certificate: exact W2 on a 16-D Gaussian", "",
                "Exact W2 between each sampler's output law and the data (no Monte Carlo error). Fitted grids use "
                "100 draws against the teacher; `cost`: model evaluations of the fit on that batch (teacher included).", "",
                "| schedule | sampler | NFE | exact-optimal | dp+descent | dp | descent | AYS tangent law | best hand grid |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in cert:
            out.append(f"| {r['schedule']} | {r['sampler']} | {r['nfe']} | {r['exact_optimal']:.3e} | {r['dp+descent']:.3e} "
                       f"({r['dp+descent'] / r['exact_optimal']:.2f}x) | {r['dp']:.3e} ({r['dp'] / r['exact_optimal']:.1f}x) | "
                       f"{r['descent']:.3e} ({r['descent'] / r['exact_optimal']:.2f}x) | {r['ays']:.3e} "
                       f"({r['ays'] / r['exact_optimal']:.1f}x) | {r['hand']:.3e} ({r['hand'] / r['exact_optimal']:.1f}x, {r['hand_grid']}) |")
        out.append("")
    if mix:
        out += ["## The ODE benchmark's problems", "",
                "Endpoint RMS error on the benchmark's draws against its reference solve. `tuned`: the grid fitted on 100 "
                "other draws (fit cost in model evaluations on that batch, teacher included); `hand`: the same sampler's "
                "best hand grid; `best sdeflow` / `best peer`: the best row of any method and grid in "
                "docs/benchmarks/ode_solvers.json at that NFE.", "",
                "| problem | process | sampler | NFE | tuned | hand (grid) | tuned / hand | best sdeflow | best peer | tuned / best peer | fit cost |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in mix:
            peer = r["best_peer"][0] if r["best_peer"] else float("nan")
            bs = r["best_sdeflow"][0] if r["best_sdeflow"] else float("nan")
            hand = r["hand"] if r["hand"] is not None else float("nan")
            out.append(f"| {r['problem']} | {r['process'].split(' (')[0]} | {r['sampler']} | {r['nfe']} | {r['tuned']:.3e} | "
                       f"{hand:.3e} ({r['hand_grid']}) | {r['tuned'] / hand:.2f} | {bs:.3e} | {peer:.3e} | "
                       f"**{r['tuned'] / peer:.2f}** | {r['cost_nfe']} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", type=int, choices=[1, 2], default=None, help="run one part only")
    p.add_argument("--nfe", nargs="+", type=int, default=NFES)
    p.add_argument("--problems", nargs="+", default=["64-D mixture"])
    args = p.parse_args(argv)
    cert = certificate([n for n in args.nfe if n in (5, 8)]) if args.part in (None, 1) else []
    mix = mixtures(args.nfe, args.problems) if args.part in (None, 2) else []
    os.makedirs(OUT, exist_ok=True)
    write_json(os.path.join(OUT, "tuning.json"), dict(certificate=cert, mixtures=mix))
    text = report(cert, mix)
    atomic_write(os.path.join(OUT, "tuning.md"), lambda tmp: open(tmp, "w").write(text))
    print(text)


if __name__ == "__main__":
    main()

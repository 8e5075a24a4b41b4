"""Grids tuned to the model (sdeflow.tuning) against hand grids, peers and the exact optimum.

Part 1, the certificate (NFE 5 and 8): on a 16-D Gaussian (variances 0.01-4) the exact W2 of each sampler's output,
for the exact-optimal grid (``exact_optimal_grid``), the grids fitted on 100 draws by each method
(``dp``, ``descent``, ``dp+descent``), the ``dp+descent`` grid with the sampler's coefficients fitted on
the same draws, Align Your Steps' tangent law and the best hand grid.

Part 2, the ODE benchmark's problems (``common.py``: same 500 draws, same float64 reference solve,
float32 states): for each process and sampler, a grid fitted on 100 *other* draws, then the sampler's
coefficients fitted on that grid on 1000 further draws (``--coef-draws``), are scored on the benchmark's
draws, next to the same sampler's best hand grid in this run and to the best sdeflow and best peer rows
(any method, any grid; peers: diffusers, k-diffusion, flow_matching) of ``docs/benchmarks/ode_solvers.json``.

    python benchmarks/tuning.py                 # both parts, writes docs/benchmarks/tuning.{md,json}
    python benchmarks/tuning.py --part 2 --nfe 5 6 8 10 20   # the ODE problems only (the stored certificate is kept)
    python benchmarks/tuning.py --part 2 --rescore --problems "64-D mixture"   # score stored fits again, no fitting
    python benchmarks/tuning.py --report        # the report again from the stored results, nothing run

Rare draws that land in another mixture component than the reference (a few per thousand to a few per
hundred at 5-8 evaluations on the larger problems, under every method) can decide the RMS; the tables also give the
median error, which they do not move.
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
from sdeflow.tuning import Teacher, TunedGrid, ays_gaussian_grid, candidate_times, endpoint_loss, exact_optimal_grid, \
    GridSpace, hand_grids, optimize_coefficients, optimize_grid, steps_for  # noqa: E402

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
        t0 = grids.start_time(sch)  # the fits start where the draws are; so do the hand grids they are judged by
        x = gauss.sample_t(100, sch, t0, torch.Generator().manual_seed(0))[0]
        for name in SAMPLER_NAMES:
            sampler = SAMPLERS[name]()
            for nfe in nfes:
                def w2(ts, run=sampler):
                    m, v = gaussian_output_law(gauss, run, sch, ts)
                    return gaussian_w2(m, v.clamp_min(0), gauss.means[0], gauss.cov.var[0])

                start = time.time()
                _, opt = exact_optimal_grid(gauss, sampler, sch, nfe)
                n = steps_for(sampler, sch, nfe)
                row = dict(schedule=sched, sampler=name, nfe=nfe, exact_optimal=opt,
                           ays=w2(ays_gaussian_grid(n, sch, std)))
                hand = {k: w2(ts) for k, ts in hand_grids(sch, n, t_max=t0).items()}
                row["hand"], row["hand_grid"] = min(hand.values()), min(hand, key=hand.get)
                for method in ("dp", "descent", "dp+descent"):
                    tuned = optimize_grid(den, sampler, nfe, x, method=method, sampler_name=name)
                    row[method], row[method + " cost"] = w2(tuned.grid()), tuned.cost_nfe
                    row[method + " returned"] = tuned.method  # "hand:<name>" where the fit lost to that hand grid
                coef = optimize_coefficients(den, sampler, tuned.grid(), x, sampler_name=name, tuned=tuned)
                row["coefficients"], row["coefficients cost"] = w2(tuned.grid(), coef.sampler_for(sampler)), coef.cost_nfe
                rows.append(row)
                print(f"{sched} {name} NFE {nfe}: exact-optimal {opt:.3e}, dp+descent {row['dp+descent']:.3e} "
                      f"(+ coefficients {row['coefficients']:.3e}), "
                      f"dp {row['dp']:.3e}, descent {row['descent']:.3e}, AYS {row['ays']:.3e}, best hand "
                      f"{row['hand']:.3e} ({row['hand_grid']}) [{time.time() - start:.0f} s]", flush=True)
    return rows


def stored_best(problem: str, process: str, nfe: int, metric: str = "rms") -> dict:
    """Best sdeflow and best peer ``metric`` (rms or median) of the ODE benchmark's stored run."""
    path = os.path.join(OUT, "ode_solvers.json")
    with open(path) as f:
        rows = json.load(f)["results"]
    best = {}
    for r in rows:
        if r["problem"] == problem and r["process"] == process and r["nfe"] == nfe:
            fam = "sdeflow" if family(r["method"]) == "sdeflow" else "peer"
            if fam not in best or r[metric] < best[fam][0]:
                best[fam] = (r[metric], r["method"])
    return best


def fit_draws(problem, process, t0: float, num: int, seed: int = 7) -> torch.Tensor:
    """``num`` draws of ``p_{t0}`` independent of the benchmark's (float32, as the samplers run)."""
    g = torch.Generator().manual_seed(seed)
    sch = process.schedule
    data = problem.mixture.sample(num, g)
    eps = torch.randn(data.shape, generator=g, dtype=torch.float64)
    return (float(sch.alpha(t0)) * data + float(sch.sigma(t0)) * eps).reshape(num, *problem.shape).float()


def samplers_for(process, only=None) -> list[str]:
    """The tuned samplers: the exponential integrators everywhere, and on rectified flow also the
    Runge-Kutta family that leads its hand-grid rows, RK4 with its last stage on clean data included
    (``only``: the samplers named instead, any deterministic fixed-grid one)."""
    if only:
        return list(only)
    return SAMPLER_NAMES + (["heun", "heun3", "midpoint", "rk4-at-data", "rk4-38-at-data"] if process.time_input == "t" else [])


def scorer(problem, process):
    """``score(sampler, ts) -> {"rms", "median"}`` of a run from the benchmark's draws against its reference."""
    den, shared = sdeflow_denoiser(problem, process), Shared(problem, process)

    def score(sampler, ts):
        out = sample(den, sampler, ts, shared.x_init(float(ts[0])).float()).x.double()
        got = shared.score((float(ts[0]), float(ts[-1])), out)
        return {"rms": got["rms"], "median": got["median"]}

    return score


def stored_runs(r: dict) -> dict:
    """A stored row's two configurations as ``(sampler, grid)``: its tuned grid, and the grid its
    coefficients were fitted on with them (the sampler's own where the row kept none)."""
    sampler = SAMPLERS[r["sampler"]]()
    on = r.get("coef_ts", r["ts"])  # rows from before the hand-grid start fitted on the tuned grid
    fitted = TunedGrid(on, r["sampler"], r["used_nfe"], "stored", 0.0, shift=r["shift"])
    return {"grid": (sampler, torch.tensor(r["ts"], dtype=torch.float64)),
            "with coefficients": (fitted.sampler_for(sampler), torch.tensor(on, dtype=torch.float64))}


def rescore(rows: list[dict]) -> None:
    """Score stored rows again from their stored grids and coefficients (no fitting): RMS and median
    error of the tuned grid, of the fitted coefficients and of the best hand grid, and the stored
    peers' best median, in place."""
    for problem in problems():
        for process in PROCESSES:
            at = [r for r in rows if r["problem"] == problem.name and r["process"] == process.name]
            if not at:
                continue
            score, sch = scorer(problem, process), process.schedule
            for r in at:
                sampler = SAMPLERS[r["sampler"]]()
                tuned, coef = (score(*run) for run in stored_runs(r).values())
                r.update(tuned=tuned["rms"], tuned_median=tuned["median"], coef=coef["rms"], coef_median=coef["median"])
                if r["hand_grid"]:
                    hand = score(sampler, GRIDS[r["hand_grid"]](steps_for(sampler, sch, r["nfe"]), sch))
                    r.update(hand=hand["rms"], hand_median=hand["median"])
                medians = stored_best(r["problem"], r["process"], r["nfe"], "median")
                r["best_sdeflow_median"], r["best_peer_median"] = medians.get("sdeflow"), medians.get("peer")
            print(f"{problem.name}, {process.name}: {len(at)} rows scored again", flush=True)


def mixtures(nfes, names, coef_draws: int, processes=None, samplers=None) -> list[dict]:
    rows = []
    for problem in problems():
        if problem.name not in names:
            continue
        for process in PROCESSES:
            if processes and not any(o.lower() in process.name.lower() for o in processes):
                continue
            sch = process.schedule
            den = sdeflow_denoiser(problem, process)
            score = scorer(problem, process)
            t0 = grids.start_time(sch)
            start = time.time()
            teacher = Teacher(den, fit_draws(problem, process, t0, 100), times=candidate_times(GridSpace(sch, 1)))
            coef_teacher = Teacher(den, fit_draws(problem, process, t0, coef_draws, seed=8), t_max=t0)
            print(f"{problem.name}, {process.name}: teachers {teacher.calls} and {coef_teacher.calls} evaluations, "
                  f"{time.time() - start:.0f} s", flush=True)

            for nfe in nfes:
                stored = stored_best(problem.name, process.name, nfe)
                medians = stored_best(problem.name, process.name, nfe, "median")
                for name in samplers_for(process, samplers):
                    sampler = SAMPLERS[name]()
                    n = steps_for(sampler, sch, nfe)
                    if sampler.prepare(sch, GRIDS["uniform"](n, sch)).nfe != nfe:
                        continue  # this sampler cannot spend exactly this budget
                    start = time.time()
                    tuned = optimize_grid(den, sampler, nfe, teacher=teacher, sampler_name=name)
                    ts = tuned.grid()
                    grid_seconds = time.time() - start
                    hand, hand_grids_ = {}, {}
                    for g in HAND[process.time_input]:
                        hts = GRIDS[g](n, sch)
                        if sampler.prepare(sch, hts).nfe == nfe:
                            hand[g], hand_grids_[g] = score(sampler, hts), hts
                    best_hand = min(hand, key=lambda g: hand[g]["rms"]) if hand else None
                    # the coefficients are fitted on the tuned grid and on the hand grid that is best on the
                    # coefficient draws (the tuned grid saw only 100 draws); the lower held-out error wins
                    starts = {"tuned": ts}
                    on_draws = {g: endpoint_loss(den, sampler, hts.clone().index_fill_(0, torch.tensor([0]), t0),
                                                 coef_teacher.x_init, coef_teacher.end)
                                for g, hts in hand_grids_.items()}
                    if on_draws:
                        g = min(on_draws, key=on_draws.get)
                        starts[g] = hand_grids_[g].clone().index_fill_(0, torch.tensor([0]), t0)
                    fits = {k: optimize_coefficients(den, sampler, v, teacher=coef_teacher, sampler_name=name)
                            for k, v in starts.items()}
                    coef_grid = min(fits, key=lambda k: fits[k].heldout)
                    coef, coef_ts = fits[coef_grid], starts[coef_grid]
                    seconds = time.time() - start
                    on_tuned, on_coef = score(sampler, ts), score(coef.sampler_for(sampler), coef_ts)
                    on_hand = hand.get(best_hand, {})
                    row = dict(problem=problem.name, process=process.name, sampler=name, nfe=nfe, used_nfe=tuned.nfe,
                               tuned=on_tuned["rms"], tuned_median=on_tuned["median"], fit_loss=tuned.loss,
                               cost_nfe=tuned.cost_nfe + teacher.calls, coef=on_coef["rms"], coef_median=on_coef["median"],
                               coef_grid=coef_grid, coef_fit_loss=coef.loss,
                               coef_heldout=coef.heldout,
                               coef_cost_nfe=sum(f.cost_nfe for f in fits.values()) + coef_teacher.calls,
                               coef_cost_grad=sum(f.cost_grad for f in fits.values()), coef_draws=coef_draws,
                               coefficients=len(coef.shift or ()),  # none: the fit lost on held-out draws
                               grid_seconds=grid_seconds, seconds=seconds, hand=on_hand.get("rms"),
                               hand_median=on_hand.get("median"), hand_grid=best_hand,
                               best_sdeflow=stored.get("sdeflow"), best_peer=stored.get("peer"),
                               best_sdeflow_median=medians.get("sdeflow"), best_peer_median=medians.get("peer"), ts=tuned.ts,
                               coef_ts=coef_ts.tolist(), shift=coef.shift)
                    rows.append(row)
                    peer = row["best_peer"][0] if row["best_peer"] else float("nan")
                    print(f"  {name} NFE {nfe}: tuned grid {row['tuned']:.3e}, + coefficients {row['coef']:.3e} on {coef_grid} "
                          f"(fit {coef.loss:.3e}, held out {coef.heldout:.3e}), best hand {row['hand'] or float('nan'):.3e} "
                          f"({best_hand}), best peer {peer:.3e} [{seconds:.0f} s]", flush=True)
    return rows


def with_coefficients(r: dict) -> list[tuple[float, bool]]:
    """A row's tuned grid and, where its fitted coefficients were kept, the grid with them: ``(RMS, with
    coefficients)`` (a row whose coefficient fit lost runs the sampler's own, named without them)."""
    return [(r["tuned"], False)] + ([(r["coef"], True)] if r.get("coefficients", 1) else [])


def report(cert, mix) -> str:
    out = ["# Grids tuned to the model", "",
           "`python benchmarks/tuning.py`. See `sdeflow.tuning` and docs/tuning.md for the methods.", ""]
    if cert:
        out += ["## The certificate: exact W2 on a 16-D Gaussian", "",
                "Exact W2 between each sampler's output law and the data (no Monte Carlo error). Fitted grids use 100 "
                "draws against the teacher, with `optimize_grid`'s defaults (30% held out, the worst 10% trimmed); a fit "
                "that does not beat the best hand grid on the held-out draws, or loses to it in the RMS over all the draws, "
                "returns that grid (marked `hand:`). The "
                "coefficients are fitted on the `dp+descent` grid and the same draws (a fifth held out).", "",
                "| schedule | sampler | NFE | exact-optimal | dp+descent | dp+descent + coefficients | dp | descent "
                "| AYS tangent law | best hand grid |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        def returned(r, method):
            name = r.get(method + " returned", "")
            return f", {name}" if name.startswith("hand:") else ""

        for r in cert:
            c = r.get("coefficients", float("nan"))
            out.append(f"| {r['schedule']} | {r['sampler']} | {r['nfe']} | {r['exact_optimal']:.3e} | {r['dp+descent']:.3e} "
                       f"({r['dp+descent'] / r['exact_optimal']:.2f}x{returned(r, 'dp+descent')}) | "
                       f"{c:.3e} ({c / r['exact_optimal']:.2f}x) | "
                       f"{r['dp']:.3e} ({r['dp'] / r['exact_optimal']:.1f}x{returned(r, 'dp')}) | "
                       f"{r['descent']:.3e} ({r['descent'] / r['exact_optimal']:.2f}x{returned(r, 'descent')}) | {r['ays']:.3e} "
                       f"({r['ays'] / r['exact_optimal']:.1f}x) | {r['hand']:.3e} "
                       f"({r['hand'] / r['exact_optimal']:.1f}x, {r['hand_grid']}) |")
        out.append("")
    if mix:
        out += ["## The ODE benchmark's problems", "",
                "Endpoint RMS error on the benchmark's draws against its reference solve. `tuned grid`: the grid fitted "
                "on 100 other draws; `+ coefficients`: the sampler's coefficients fitted on the tuned grid and on the hand grid "
                "that is best on the coefficient draws, the one with the lower held-out error kept (named), on "
                + ", ".join(f"{n} further draws ({p})" for p, n in dict.fromkeys((r["problem"], r["coef_draws"]) for r in mix))
                + " (a fifth held out for early stopping); `hand`: the same sampler's "
                "best hand grid; `best sdeflow` / `best peer`: the best row of any method and grid in "
                "docs/benchmarks/ode_solvers.json at that NFE (peers: diffusers, k-diffusion, flow_matching). Costs: "
                "model evaluations of the fits (teachers included; each on its batch of draws), and the evaluations "
                "the coefficient fit differentiated through.", "",
                "| problem | process | sampler | NFE | hand (grid) | tuned grid | + coefficients | best sdeflow hand | best peer "
                "| tuned grid / best peer | + coefficients / best peer | fit cost (grid; coefficients, of them differentiated) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        def own(r):  # a coefficient fit that lost on its held-out draws keeps the sampler's own
            return ", own kept" if r.get("coefficients", 1) == 0 else ""

        for r in mix:
            peer = r["best_peer"][0] if r["best_peer"] else float("nan")
            bs = r["best_sdeflow"][0] if r["best_sdeflow"] else float("nan")
            hand = r["hand"] if r["hand"] is not None else float("nan")
            out.append(f"| {r['problem']} | {r['process'].split(' (')[0]} | {r['sampler']} | {r['nfe']} | "
                       f"{hand:.3e} ({r['hand_grid']}) | {r['tuned']:.3e} | {r['coef']:.3e} ({r.get('coef_grid', 'tuned')}{own(r)}) | "
                       f"{bs:.3e} | {peer:.3e} | "
                       f"{r['tuned'] / peer:.2f} | **{r['coef'] / peer:.2f}** | "
                       f"{r['cost_nfe']}; {r['coef_cost_nfe']}, {r['coef_cost_grad']} |")
        out += ["", "Best of each process and NFE (any tuned sampler, grid only or with coefficients):", "",
                "| problem | process | NFE | best tuned | best peer | ratio |", "|---|---|---|---|---|---|"]
        for key in dict.fromkeys((r["problem"], r["process"], r["nfe"]) for r in mix):
            at = [r for r in mix if (r["problem"], r["process"], r["nfe"]) == key]
            err, label = min((v, f"{r['sampler']}{' + coefficients' if c else ''}")
                             for r in at for v, c in with_coefficients(r))
            peer = at[0]["best_peer"][0] if at[0]["best_peer"] else float("nan")
            out.append(f"| {key[0]} | {key[1].split(' (')[0]} | {key[2]} | {err:.3e} ({label}) | {peer:.3e} "
                       f"({at[0]['best_peer'][1] if at[0]['best_peer'] else '-'}) | **{err / peer:.2f}** |")
        out += ["", "sdeflow's best, hand grid or tuned, against the best peer, with the target: at most half the best "
                "peer at NFE 5-8, at most the best peer at NFE 10-20:", "",
                "| problem | process | NFE | best sdeflow (hand or tuned) | best peer | ratio | target | median error: best "
                "sdeflow / best peer |",
                "|---|---|---|---|---|---|---|---|"]
        order = {p: k for k, p in enumerate(["2-D mixture", "64-D mixture", "3x32x32 mixture"])}
        for key in sorted(dict.fromkeys((r["problem"], r["process"], r["nfe"]) for r in mix),
                          key=lambda k: (order.get(k[0], 9), k[0], k[1], k[2])):
            at = [r for r in mix if (r["problem"], r["process"], r["nfe"]) == key]
            if not at[0]["best_peer"]:
                continue
            options = [(v, f"{r['sampler']}{' + coefficients' if c else ''}, tuned")
                       for r in at for v, c in with_coefficients(r)]
            if at[0]["best_sdeflow"]:
                options.append((at[0]["best_sdeflow"][0], at[0]["best_sdeflow"][1].removeprefix("sdeflow ")))
            err, label = min(options)
            peer = at[0]["best_peer"][0]
            goal = 0.5 if key[2] <= 8 else 1.0  # judged on the ratio as shown: the same method as a peer's ties
            medians = [r[k] for r in at for k in ("tuned_median", "coef_median") if r.get(k) is not None]
            if at[0].get("best_sdeflow_median"):
                medians.append(at[0]["best_sdeflow_median"][0])
            peer_median = (at[0].get("best_peer_median") or [None])[0]
            median = (f"{min(medians):.3e} / {peer_median:.3e} = {min(medians) / peer_median:.2f}"
                      if medians and peer_median else "-")
            out.append(f"| {key[0]} | {key[1].split(' (')[0]} | {key[2]} | {err:.3e} ({label}) | {peer:.3e} | "
                       f"**{err / peer:.2f}** | {'met' if round(err / peer, 2) <= goal else 'missed'} (<= {goal:g}) | "
                       f"{median} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", type=int, choices=[1, 2], default=None,
                   help="run one part only (the other part's stored results are kept)")
    p.add_argument("--nfe", nargs="+", type=int, default=NFES)
    p.add_argument("--problems", nargs="+", default=["64-D mixture"],
                   help="ODE benchmark problems for part 2 (64-D mixture, 3x32x32 mixture, 2-D mixture); the stored rows "
                   "of the others are kept")
    p.add_argument("--processes", nargs="+", default=None, metavar="NAME",
                   help="part 2 for these processes only (e.g. rectified); the stored rows of the others are kept")
    p.add_argument("--samplers", nargs="+", default=None, metavar="NAME",
                   help="part 2 for these samplers (any deterministic fixed-grid one; default: " + ", ".join(SAMPLER_NAMES)
                   + ", and on rectified flow also heun, heun3, midpoint, rk4-at-data, rk4-38-at-data); the stored rows of "
                   "the others are kept")
    p.add_argument("--coef-draws", type=int, default=1000, help="draws the coefficients are fitted on (default: 1000)")
    p.add_argument("--rescore", action="store_true",
                   help="part 2: score the chosen stored rows again from their stored grids and coefficients, "
                   "without fitting (RMS and median error)")
    p.add_argument("--report", action="store_true", help="write the report from the stored results; run nothing")
    args = p.parse_args(argv)
    for name in args.samplers or []:
        if name not in SAMPLERS:
            p.error(f"unknown sampler {name!r}; sdeflow list shows the names")
        if SAMPLERS[name]().stochastic or SAMPLERS[name]().adaptive:
            p.error(f"{name} is stochastic or adaptive: grids are tuned for deterministic fixed-grid samplers")
    path = os.path.join(OUT, "tuning.json")
    old = {}
    if (args.part is not None or args.report) and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    run = (lambda part: False) if args.report else (lambda part: args.part in (None, part))
    cert = certificate([n for n in args.nfe if n in (5, 8)]) if run(1) else old.get("certificate", [])
    mix = old.get("mixtures", [])
    if run(2):  # the stored rows of other problems are kept
        def chosen(r):
            return r["problem"] in args.problems and (not args.processes or any(
                o.lower() in r["process"].lower() for o in args.processes)) and (
                not args.samplers or r["sampler"] in args.samplers) and r["nfe"] in args.nfe

        if args.rescore:
            rescore([r for r in mix if chosen(r)])
        else:
            mix = [r for r in mix if not chosen(r)] + mixtures(args.nfe, args.problems, args.coef_draws, args.processes,
                                                               args.samplers)
    os.makedirs(OUT, exist_ok=True)
    if not args.report:
        write_json(path, dict(certificate=cert, mixtures=mix))
    text = report(cert, mix)
    atomic_write(os.path.join(OUT, "tuning.md"), lambda tmp: open(tmp, "w").write(text))
    print(text)


if __name__ == "__main__":
    main()

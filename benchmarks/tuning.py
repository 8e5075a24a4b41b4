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
    python benchmarks/tuning.py --part 2 --stale --problems "3x32x32 mixture"  # refit the rows of an older fitting
    python benchmarks/tuning.py --part 2 --trim 0 --problems "3x32x32 mixture" --processes EDM --nfe 5 6 8 --coef-draws 200
                                                # fits to the plain RMS, kept apart in docs/benchmarks/tuning_trim0.{json,md}
    python benchmarks/tuning.py --part 2 --check-draws 400 --processes DDPM --samplers ipndm --nfe 10
                                                # 400 check draws beside each fit's, kept apart in tuning_check400.{json,md}
    python benchmarks/tuning.py --report        # the report again from the stored results, nothing run

Each part-2 row is saved to docs/benchmarks/tuning.json when it is done (runs side by side share the
file), and a run skips the rows this revision of the fitting has stored, so an interrupted run resumes;
``--refit`` fits them again.

Rare draws that land in another mixture component than the reference (a few per thousand to a few per
hundred at 5-8 evaluations on the larger problems, under every method) can decide the RMS; the tables also give the
median error, which they do not move.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PROCESSES, load_json, locked_update, problems, sdeflow_denoiser  # noqa: E402
from tuning_report import report  # noqa: E402
from tuning_rows import (OUT, fit_draws, fresh, hand_scores, peer_fresh, rescore, scorer,  # noqa: E402
                         stored_best)

from sdeflow import analytic, grids  # noqa: E402
from sdeflow.analytic.sampler_law import gaussian_output_law, gaussian_w2  # noqa: E402
from sdeflow.files import atomic_write  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, SCHEDULES  # noqa: E402
from sdeflow.tuning import Teacher, ays_gaussian_grid, candidate_times, endpoint_loss, exact_optimal_grid, \
    GridSpace, hand_grids, optimize_coefficients, optimize_grid, steps_for  # noqa: E402
from sdeflow.tuning.draws import TRIM, check_trim  # noqa: E402

SAMPLER_NAMES = ["dpm-solver++-2m", "unipc-bh2", "ipndm"]
NFES = [5, 6, 8, 10, 20]
#: The fitting's revision, stored with each part-2 row and raised when ``sdeflow.tuning`` fits differently.
#: 1: the held-out split, the trimmed loss and the check on all draws; rows without one came before them.
FIT_REVISION = 1


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


def samplers_for(process, only=None) -> list[str]:
    """The tuned samplers: the exponential integrators everywhere, and on rectified flow also the
    Runge-Kutta family that leads its hand-grid rows, RK4 with its last stage on clean data included
    (``only``: the samplers named instead, any deterministic fixed-grid one)."""
    if only:
        return list(only)
    return SAMPLER_NAMES + (["heun", "heun3", "midpoint", "rk4-at-data", "rk4-38-at-data"] if process.time_input == "t" else [])


def key(r: dict) -> tuple:
    """A part-2 row's identity: its problem, process, sampler and budget."""
    return r["problem"], r["process"], r["sampler"], r["nfe"]


def save_rows(path: str, rows: list[dict]) -> None:
    """Put ``rows`` into the results file, each in place of a stored row of the same :func:`key` or
    after the others, in one locked atomic write (runs side by side share the file)."""
    def update(results):
        new = {key(r): r for r in rows}
        results["mixtures"] = [new.pop(key(r), r) for r in results.get("mixtures", [])] + list(new.values())
        results.setdefault("certificate", [])

    locked_update(path, update)


def spends(process, name: str, nfe: int) -> bool:
    """Whether the sampler ``name`` can spend exactly ``nfe`` evaluations on the process's schedule."""
    sampler, sch = SAMPLERS[name](), process.schedule
    return sampler.prepare(sch, GRIDS["uniform"](steps_for(sampler, sch, nfe), sch)).nfe == nfe


def plan(stored: list[dict], names, nfes, coef_draws: int, processes=None, samplers=None, stale=False,
         refit=False) -> dict:
    """The rows to fit, ``{(problem, process): [(nfe, sampler, coefficient draws), ...]}``: the chosen
    samplers at the chosen budgets, less the rows stored by this :data:`FIT_REVISION` (a run resumes)
    unless ``refit``; with ``stale``, the stored rows of an older revision instead (``nfes`` None: at
    every budget), each with the coefficient draws it was fitted on."""
    current = {key(r) for r in stored if r.get("fit_revision") == FIT_REVISION and not refit}
    todo = {}
    for problem in problems():
        for process in PROCESSES:
            if problem.name not in names or processes and not any(o.lower() in process.name.lower() for o in processes):
                continue
            if stale:
                rows = [(r["nfe"], r["sampler"], r["coef_draws"]) for r in stored
                        if (r["problem"], r["process"]) == (problem.name, process.name) and key(r) not in current
                        and (not nfes or r["nfe"] in nfes) and (not samplers or r["sampler"] in samplers)]
            else:
                rows = [(nfe, name, coef_draws) for nfe in nfes for name in samplers_for(process, samplers)
                        if (problem.name, process.name, name, nfe) not in current and spends(process, name, nfe)]
            if rows:
                todo[problem.name, process.name] = rows
    return todo


def mixtures(todo: dict, path: str, trim: float = TRIM, check: int = 0) -> None:
    """Fit and score the rows of :func:`plan`, saving each to ``path`` as it is done; the fits leave
    out the ``trim`` share of their worst draws (``sdeflow.tuning``'s default unless given). ``check``:
    that many further draws beside each fit's, kept apart from fitting and selection, decide whether
    each fit is kept (``sdeflow.tuning``'s ``check``); the fits see as many draws as without them."""
    for problem in problems():
        for process in PROCESSES:
            if (problem.name, process.name) not in todo:
                continue
            sch = process.schedule
            den = sdeflow_denoiser(problem, process)
            score = scorer(problem, process)
            t0 = grids.start_time(sch)
            start = time.time()
            teacher = Teacher(den, fit_draws(problem, process, t0, 100 + check), times=candidate_times(GridSpace(sch, 1)))
            coef_teachers = {n: Teacher(den, fit_draws(problem, process, t0, n + check, seed=8), t_max=t0)
                             for n in sorted({c for _, _, c in todo[problem.name, process.name]})}
            print(f"{problem.name}, {process.name}: teachers {teacher.calls} and "
                  f"{sum(c.calls for c in coef_teachers.values())} evaluations, {time.time() - start:.0f} s", flush=True)

            for nfe, name, coef_draws in todo[problem.name, process.name]:
                stored = stored_best(problem.name, process.name, nfe)
                medians = stored_best(problem.name, process.name, nfe, "median")
                coef_teacher = coef_teachers[coef_draws]
                sampler = SAMPLERS[name]()
                start = time.time()
                parts = {"holdout": 30, "check": check} if check else {}  # 70 fitted and 30 held out, as by default
                tuned = optimize_grid(den, sampler, nfe, teacher=teacher, sampler_name=name, trim=trim, **parts)
                ts = tuned.grid()
                grid_seconds = time.time() - start
                hand, hand_grids_ = hand_scores(score, process, sampler, nfe)
                best_hand = min(hand, key=lambda g: hand[g]["rms"]) if hand else None
                # the coefficients are fitted on the tuned grid and on the hand grid that is best on the
                # coefficient draws (the tuned grid saw only 100 draws); the lower held-out error wins
                starts = {"tuned": ts}
                on_draws = {g: endpoint_loss(den, sampler, hts, coef_teacher.x_init[:coef_draws],
                                             coef_teacher.end[:coef_draws]) for g, hts in hand_grids_.items()}
                if on_draws:
                    g = min(on_draws, key=on_draws.get)
                    starts[g] = hand_grids_[g]
                parts = {"holdout": round(0.3 * coef_draws), "check": check} if check else {}
                fits = {k: optimize_coefficients(den, sampler, v, teacher=coef_teacher, sampler_name=name, trim=trim,
                                                 **parts) for k, v in starts.items()}
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
                           coef_ts=coef_ts.tolist(), shift=coef.shift, fit_revision=FIT_REVISION, trim=trim,
                           check=check)
                save_rows(path, [row])
                peer = row["best_peer"][0] if row["best_peer"] else float("nan")
                print(f"  {name} NFE {nfe}: tuned grid {row['tuned']:.3e}, + coefficients {row['coef']:.3e} on {coef_grid} "
                      f"(fit {coef.loss:.3e}, held out {coef.heldout:.3e}), best hand {row['hand'] or float('nan'):.3e} "
                      f"({best_hand}), best peer {peer:.3e} [{seconds:.0f} s]", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", type=int, choices=[1, 2], default=None,
                   help="run one part only (the other part's stored results are kept)")
    p.add_argument("--nfe", nargs="+", type=int, default=None,
                   help="budgets (default: " + " ".join(map(str, NFES)) + "; with --stale, --rescore or --fresh: every stored one)")
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
    p.add_argument("--stale", action="store_true",
                   help="part 2: refit the chosen stored rows that an older revision of the fitting made, each on the "
                   "coefficient draws it had, instead of the samplers at the budgets")
    p.add_argument("--refit", action="store_true",
                   help="part 2: fit the chosen rows again where this revision's are stored (by default a run skips "
                   "them: each row is saved when done, and an interrupted run resumes)")
    p.add_argument("--rescore", action="store_true",
                   help="part 2: score the chosen stored rows again from their stored grids and coefficients, "
                   "without fitting (RMS and median error)")
    p.add_argument("--trim", type=float, default=None,
                   help="part 2: fit with this share of the worst draws left out (0: the plain RMS) instead of sdeflow.tuning's "
                   f"default ({TRIM:g}); the rows are stored apart, in docs/benchmarks/tuning_trim<share>.json, with their report")
    p.add_argument("--check-draws", type=int, default=0,
                   help="part 2: this many further draws beside each fit's decide whether it is kept (sdeflow.tuning's "
                   "check); the rows are stored apart, in docs/benchmarks/tuning_check<draws>.json, with their report")
    p.add_argument("--fresh", action="store_true",
                   help="part 2: run each chosen cell's best tuned configuration (chosen on the benchmark's draws) again "
                   "on the ODE benchmark's fresh draws, those its best peer was run on again, without fitting")
    p.add_argument("--report", action="store_true", help="write the report from the stored results; run nothing")
    args = p.parse_args(argv)
    for name in args.samplers or []:
        if name not in SAMPLERS:
            p.error(f"unknown sampler {name!r}; sdeflow list shows the names")
        if SAMPLERS[name]().stochastic or SAMPLERS[name]().adaptive:
            p.error(f"{name} is stochastic or adaptive: grids are tuned for deterministic fixed-grid samplers")
    if (args.rescore or args.fresh) and (args.stale or args.refit):
        p.error("--rescore and --fresh score stored fits without fitting; they do not go with --stale or --refit")
    if args.trim is not None:
        try:
            check_trim(args.trim)
        except ValueError as e:
            p.error(f"--{e}")
    if (args.trim is not None or args.check_draws) and args.part != 2:
        p.error("--trim and --check-draws apply to part 2: give --part 2")
    if args.check_draws < 0 or args.trim is not None and args.check_draws:
        p.error("--check-draws is a number of draws, 0 or more, and goes without --trim")
    path = os.path.join(OUT, f"tuning_check{args.check_draws}.json" if args.check_draws else
                        "tuning.json" if args.trim is None else f"tuning_trim{args.trim:g}.json")
    run = (lambda part: False) if args.report else (lambda part: args.part in (None, part))
    if run(1):
        cert = certificate([n for n in args.nfe or NFES if n in (5, 8)])
        locked_update(path, lambda results: results.update(certificate=cert, mixtures=results.get("mixtures", [])))
    if run(2):  # the stored rows of other problems are kept
        nfes = args.nfe or (None if args.stale or args.rescore or args.fresh else NFES)
        stored = load_json(path).get("mixtures", [])
        chosen = [r for r in stored if r["problem"] in args.problems and (not args.processes or any(
            o.lower() in r["process"].lower() for o in args.processes)) and (
            not args.samplers or r["sampler"] in args.samplers) and (nfes is None or r["nfe"] in nfes)]
        if args.rescore:
            rescore(chosen)
            save_rows(path, chosen)
        if args.fresh:  # every row of a chosen cell takes part in its choice, whatever --samplers says
            cells = {(r["problem"], r["process"], r["nfe"]) for r in chosen}
            fresh([r for r in stored if (r["problem"], r["process"], r["nfe"]) in cells], path)
        if not (args.rescore or args.fresh):
            todo = plan(stored, args.problems, nfes, args.coef_draws, args.processes, args.samplers, args.stale, args.refit)
            print(f"{sum(map(len, todo.values()))} rows to fit ({', '.join(f'{a}, {b}' for a, b in todo) or 'none'}); "
                  "each is saved when done", flush=True)
            mixtures(todo, path, TRIM if args.trim is None else args.trim, args.check_draws)
    results = load_json(path)
    text = report(results.get("certificate", []), results.get("mixtures", []), FIT_REVISION, results.get("fresh", []),
                  peer_fresh())
    atomic_write(path.removesuffix(".json") + ".md", lambda tmp: open(tmp, "w").write(text))
    print(text)


if __name__ == "__main__":
    main()

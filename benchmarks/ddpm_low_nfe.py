"""DDPM at NFE 5-8 in tens of dimensions: sdeflow's best configuration, with the start below the top made
explicit, against every diffusers scheduler configuration (``leading`` spacing included).

A 1000-step DDPM eps model on mixtures of some 64 dimensions at NFE 5-8, where diffusers' UniPC with
``leading`` spacing starts below the top. Scored as ``benchmarks/ode_solvers.py`` scores: every method
starts from exact draws of ``p_{t0}`` at its own first time ``t0`` and is judged by the RMS distance to
the exact probability-flow solution from there (float32 states). sdeflow runs every deterministic
one-evaluation-per-step and single-step sampler of ``benchmarks/families.py`` on its grids and uniform
in ``t`` (diffusers' index spacings), from the top, from the ``leading`` start ``t_max (n - 1) / n``
(as ``sdeflow tune --start leading``) and teleported (the top's draws carried to the rule's ``t_skip``
by the data's Gaussian); and the best hand configuration's sampler with its grid and then its
coefficients fitted on other exact draws (``sdeflow.tuning``'s defaults) from each of those starts.
Problems: the ODE benchmark's 64-D mixture, the problem family's validation problems with 32-128
dimensions and several components, and two 64-D problems of the family's generator with 8 components
and low-rank-plus-diagonal covariances of condition number 300 (seeds 2000 and 2001). Then each
library's choice is run again on 2000 fresh draws and scored there (``rescore``): a choice made on the
scored draws is credited with their luck, which on these mixtures is large.

    python benchmarks/ddpm_low_nfe.py                 # about four hours on one core; writes docs/benchmarks/ddpm_low_nfe.md
    python benchmarks/ddpm_low_nfe.py --shard 0/2 &   # or two processes (2.5 hours) sharing docs/benchmarks/ddpm_low_nfe.json
    python benchmarks/ddpm_low_nfe.py --shard 1/2     # (an interrupted run resumes from it)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, Problem, Shared, load_json, locked_update, sdeflow_denoiser, shard, tail_scores, \
    write_report  # noqa: E402
from families import SPLITS, draw_problem  # noqa: E402
from peers import diffusers_runs, load_diffusers  # noqa: E402

from sdeflow import analytic, grids, sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, steps_for_nfe  # noqa: E402
from sdeflow.samplers.names import CANDIDATE_GRIDS, CANDIDATE_SAMPLERS  # noqa: E402
from sdeflow.sampling import prior_std  # noqa: E402
from sdeflow.teleport import Teleport  # noqa: E402
from sdeflow.tuning import optimize_coefficients, optimize_grid, steps_for  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "ddpm_low_nfe.md")
RESULTS = OUT[:-3] + ".json"
#: the tuned configurations' fitting draws: how many, and the seed (the scored draws are seed 0's)
FIT_DRAWS, FIT_SEED = 100, 7
#: the tuned fits' revision, stored per cell; earlier ones are fitted again, teleported ones included (2:
#: ``leading`` fits start there; 3: a fit is kept only if it also wins in the RMS over all its draws)
FIT_REVISION = 3
#: the chosen configurations scored again: how many draws, and the seed
FRESH_DRAWS, FRESH_SEED = 2000, 1
BUDGETS = [5, 6, 8]
#: 64-D problems of the family's generator with low-rank-plus-diagonal covariances of condition number
#: 300 and 8 components (log-normal weights, separation and scale as each seed draws them): these seeds
SIXTY_FOUR_D, SIXTY_FOUR_D_FIXED = (2000, 2001), {"dim": 64, "components": 8, "condition": 300.0, "rank": 4}
#: sdeflow's grids here: the candidates of its family, and uniform in t (what diffusers' index spacings are).
GRIDS_HERE = (*CANDIDATE_GRIDS["vp"], "uniform")


def problems() -> list[Problem]:
    out = [Problem("ODE benchmark 64-D mixture", analytic.random_mixture(64, 8, seed=1), (64,), 500)]
    for seed in range(SPLITS["validate"], SPLITS["validate"] + 20):
        problem, params = draw_problem(seed)
        if 32 <= params["dim"] <= 128 and params["components"] >= 2:
            out.append(Problem(f"family problem {seed} (D={params['dim']}, K={params['components']})", problem.mixture,
                               problem.shape, 300))
    for seed in SIXTY_FOUR_D:
        problem, params = draw_problem(seed, **SIXTY_FOUR_D_FIXED)
        out.append(Problem(f"64-D problem {seed} (K=8, condition 300)", problem.mixture, problem.shape, 300))
    return out


def teleport_of(problem: Problem, process) -> tuple[Teleport, float]:
    """The data's Gaussian (the mixture's exact mean and covariance) and the time ``t_skip`` its rule
    chooses on the model (:meth:`~sdeflow.teleport.Teleport.choose_time`, 128 noises of seed 3)."""
    tel = Teleport.from_moments(problem.mixture.mean(), problem.mixture.covariance())
    z = torch.randn(128, *problem.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return tel, float(tel.choose_time(sdeflow_denoiser(problem, process), z)[0])


#: Where sdeflow's runs may start: the top, the ``leading`` start, and ``teleport``: the same exact
#: draws as the top's, carried by the data's Gaussian to the rule's ``t_skip`` at no model cost and
#: judged against the exact solution from the top (no run where the rule skips nothing).
STARTS = ("top", "leading", "teleport")


def teleport_wanted(shared: Shared, process, starts, only):
    """``(Teleport, t_skip)`` where a teleported run is asked for and the rule skips something, else ``None``."""
    if "teleport" not in starts or not (only is None or any(o.endswith(", teleport)") for o in only)):
        return None
    tel, t_skip = teleport_of(shared.problem, process)
    return (tel, t_skip) if t_skip < grids.start_time(process.schedule) else None


def sdeflow_runs(shared: Shared, process, nfe: int, only=None, starts=("top", "leading")):
    """sdeflow's hand configurations from each of ``starts`` (see :data:`STARTS`; with ``only``, a set
    of names as yielded, those alone)."""
    den, sch = sdeflow_denoiser(shared.problem, process), process.schedule
    top = grids.start_time(sch)
    teleport = teleport_wanted(shared, process, starts, only)
    x_skip = teleport[0].flow(shared.x_init(top), sch, top, teleport[1]) if teleport else None
    for name in CANDIDATE_SAMPLERS:
        sampler = SAMPLERS[name]()
        for grid in GRIDS_HERE:
            n = steps_for_nfe(sampler, sch, grid, nfe)
            for start in starts:
                if start == "teleport":
                    if teleport is None:
                        continue
                    t_max = teleport[1]
                else:
                    t_max = None if start == "top" else float(GRIDS[grid](n, sch)[0]) * (n - 1) / n
                    if t_max is not None and n < 2:
                        continue
                try:
                    ts = GRIDS[grid](n, sch, t_max=t_max)
                except ValueError:  # the discrete spacings fix their own start
                    continue
                label = f"sdeflow {name} ({grid}, {start})"
                if sampler.prepare(sch, ts).nfe != nfe or (only is not None and label not in only):
                    continue
                x0, span = (x_skip, (top, 0.0)) if start == "teleport" else (shared.x_init(float(ts[0])), (float(ts[0]), 0.0))
                yield label, span, sample(den, sampler, ts, x0.float(), check_finite=False).x.double()


def tuned_runs(shared: Shared, process, nfe: int, name: str, only=None, starts=("top", "leading")):
    """``name``'s grid fitted by :func:`sdeflow.tuning.optimize_grid` from each of ``starts``, then its
    coefficients by :func:`sdeflow.tuning.optimize_coefficients`, on 100 exact draws disjoint from the
    scored ones: of ``p_{t0}`` for the top and ``leading``, and their noise read as the Gaussian's from
    ``t_skip`` for ``teleport`` (a teleported fit that falls back to a hand grid runs from the top).
    A fit that does not beat the best hand grid on its held-out draws returns that grid, as the library
    does. With ``only`` (a set of names as yielded), the fits that give those alone (fits are deterministic)."""
    def wanted(what, start):
        return only is None or any(o.startswith(f"sdeflow {name} ({what} [") and o.endswith(f"], {start})") for o in only)

    den, sch = sdeflow_denoiser(shared.problem, process), process.schedule
    sampler = SAMPLERS[name]()
    n = steps_for(sampler, sch, nfe)
    top = grids.start_time(sch)
    teleport = teleport_wanted(shared, process, starts, only)
    g = torch.Generator().manual_seed(FIT_SEED)
    data = shared.problem.mixture.sample(FIT_DRAWS, g).reshape(FIT_DRAWS, *shared.problem.shape)
    noise = torch.randn(data.shape, generator=g, dtype=torch.float64)
    for start in starts:
        if not (wanted("tuned grid", start) or wanted("tuned grid and coefficients", start)):
            continue
        if start == "teleport" and teleport is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fit kept as its hand grid says so; the report names the grid kept
            if start == "teleport":
                tel, t_skip = teleport
                tuned = optimize_grid(den, sampler, nfe, noise * prior_std(sch, top), sampler_name=name,
                                      start="teleport", teleport=tel, t_skip=t_skip)
                x_fit = tel.start(noise, sch, tuned.ts[0] if tuned.start == "teleport" else top)
            else:
                t0 = top if start == "top" else top * (n - 1) / n
                x_fit = float(sch.alpha(t0)) * data + float(sch.sigma(t0)) * noise
                tuned = optimize_grid(den, sampler, nfe, x_fit, sampler_name=name, t_max=t0)
            fits = [("tuned grid", sampler, tuned)]
            try:
                coef = (optimize_coefficients(den, sampler, tuned.grid(), x_fit, sampler_name=name, tuned=tuned)
                        if wanted("tuned grid and coefficients", start) else None)
            except ValueError:  # samplers without coefficients to fit
                coef = None
            if coef is not None and coef.shift is not None:
                fits.append(("tuned grid and coefficients", coef.sampler_for(sampler), coef))
        for what, runner, fit in fits:
            if not wanted(what, start):
                continue
            ts = fit.grid()
            if start != "teleport":
                x0, span = shared.x_init(float(ts[0])), (float(ts[0]), 0.0)
            else:
                x0, span = shared.x_init(top), (top, 0.0)
                if tuned.start == "teleport":
                    x0 = teleport[0].flow(x0, sch, top, float(ts[0]))
            x = sample(den, runner, ts, x0.float(), check_finite=False).x
            yield f"sdeflow {name} ({what} [{fit.method}], {start})", span, x.double()


def best_of(shared: Shared, runs) -> tuple[str, float]:
    """The least RMS of ``runs`` (name, span, states) against the exact solution: (name, RMS)."""
    best = (None, math.inf)
    for name, span, x in runs:
        rms = shared.score(span, x.reshape(shared.problem.num, -1))["rms"] if bool(torch.isfinite(x).all()) else math.inf
        if rms < best[1]:
            best = (name, rms)
    return best


def measure(d, problem: Problem) -> dict:
    """Every budget of ``problem``: diffusers' best, sdeflow's best hand configuration and the best
    tuned configuration of that configuration's sampler."""
    process = PROCESSES[0]  # DDPM eps, 1000 discrete steps
    shared = Shared(problem, process)
    cells = {}
    for nfe in BUDGETS:
        peer = best_of(shared, ((n, s, x) for n, s, x, calls in diffusers_runs(d, shared, process, nfe)))
        hand = best_of(shared, sdeflow_runs(shared, process, nfe))
        sampler = hand[0].split()[1]
        tuned = best_of(shared, tuned_runs(shared, process, nfe, sampler))
        cells[str(nfe)] = {"diffusers": peer, "hand": hand, "tuned": tuned, "fit_revision": FIT_REVISION}
        print(f"{problem.name} NFE {nfe}: diffusers {peer[1]:.3g} ({peer[0]}), sdeflow hand {hand[1]:.3g} ({hand[0]}), "
              f"tuned {tuned[1]:.3g} ({tuned[0]})", flush=True)
    return cells


def refit(problem: Problem, entry: dict) -> dict | None:
    """``entry`` with the tuned fits of an earlier :data:`FIT_REVISION` redone, the teleported choice dropped
    (:func:`teleport_stage` fits again) and both fresh-draw scores dropped; ``None`` if every fit is current."""
    stale = [nfe for nfe in BUDGETS if entry[str(nfe)].get("fit_revision") != FIT_REVISION]
    if not stale:
        return None
    shared = Shared(problem, PROCESSES[0])
    for nfe in stale:
        cell = entry[str(nfe)]
        tuned = list(best_of(shared, tuned_runs(shared, PROCESSES[0], nfe, cell["hand"][0].split()[1])))
        print(f"{problem.name} NFE {nfe}: tuned {tuned[1]:.3g} ({tuned[0]}), before {cell['tuned'][1]:.3g} "
              f"({cell['tuned'][0]})", flush=True)
        for key in ("tuned", "teleport"):
            entry.get("fresh", {}).get(str(nfe), {}).pop(key, None)
        cell.pop("teleport", None)
        cell.update(tuned=tuned, fit_revision=FIT_REVISION)
    return entry


def teleport_stage(problem: Problem) -> dict:
    """Every budget's best teleported configuration (:func:`sdeflow_runs` from ``teleport``, then
    :func:`tuned_runs` from there for that configuration's sampler): {NFE: [name, RMS]}, or ``None``
    per budget where the rule skips nothing."""
    process = PROCESSES[0]
    shared = Shared(problem, process)
    out = {}
    for nfe in BUDGETS:
        hand = best_of(shared, sdeflow_runs(shared, process, nfe, starts=("teleport",)))
        if hand[0] is None:
            out[str(nfe)] = None
            continue
        tuned = best_of(shared, tuned_runs(shared, process, nfe, hand[0].split()[1], starts=("teleport",)))
        out[str(nfe)] = list(min(hand, tuned, key=lambda b: b[1]))
        print(f"{problem.name} NFE {nfe}: teleported hand {hand[1]:.3g} ({hand[0]}), tuned {tuned[1]:.3g} ({tuned[0]})",
              flush=True)
    return out


def sdeflow_pick(cell: dict) -> str:
    """Which of sdeflow's choices in ``cell`` (hand, tuned, teleport) has the least RMS on the draws that choose."""
    return min((k for k in ("hand", "tuned", "teleport") if cell.get(k)), key=lambda k: cell[k][1])


def rescore(d, problem: Problem, cells: dict, fresh: dict) -> dict:
    """Each cell's choices (diffusers' best, sdeflow's best hand and tuned ones, and its teleported one
    where that is sdeflow's pick, all chosen on the seed-0 draws) run again on ``FRESH_DRAWS`` draws of
    seed ``FRESH_SEED``: {NFE: {which: [name, RMS, median, share of the squared error in the worst 1%
    of draws]}}, added to ``fresh`` (those there are kept). On separated mixtures a few draws that end
    in another component decide an RMS, and the least of many RMS on one set of draws is partly that
    set's luck; on other draws each library's choice is judged without it."""
    process = PROCESSES[0]
    shared = Shared(Problem(problem.name, problem.mixture, problem.shape, FRESH_DRAWS), process, seed=FRESH_SEED)
    out = {k: dict(v) for k, v in fresh.items()}
    for nfe in BUDGETS:
        cell, done = cells[str(nfe)], out.setdefault(str(nfe), {})
        keys = ("diffusers", "hand", "tuned") + (("teleport",) if sdeflow_pick(cell) == "teleport" else ())
        chosen = {k: cell[k][0] for k in keys if k not in done}
        if not chosen:
            continue
        names = set(chosen.values())
        runs = [*((n, s, x) for n, s, x, _ in diffusers_runs(d, shared, process, nfe, only=names)),
                *sdeflow_runs(shared, process, nfe, only=names, starts=STARTS)]
        for sampler in dict.fromkeys(n.split()[1] for n in names if "tuned grid" in n):
            runs += [*tuned_runs(shared, process, nfe, sampler, only=names, starts=STARTS)]
        scored = {}
        for name, span, x in runs:
            scored[name] = tail_scores(x, shared.reference(*span))
        missing = names - scored.keys()
        if missing:
            raise RuntimeError(f"{problem.name} NFE {nfe}: could not run {sorted(missing)} again")
        done.update({k: [name, *scored[name]] for k, name in chosen.items()})
        print(f"{problem.name} NFE {nfe} on {FRESH_DRAWS} fresh draws: " + ", ".join(
            f"{k} {v[1]:.3g}" for k, v in done.items()), flush=True)
    return out


def rescored(entry: dict) -> bool:
    """Whether a problem's cells are fitted by this :data:`FIT_REVISION` and all their choices rerun on fresh draws."""
    def done(nfe):
        cell, fresh = entry[str(nfe)], entry.get("fresh", {}).get(str(nfe), {})
        return ("teleport" in cell and cell.get("fit_revision") == FIT_REVISION
                and {"diffusers", "hand", "tuned", sdeflow_pick(cell)} <= fresh.keys())
    return all(done(nfe) for nfe in BUDGETS)


def report(results: dict) -> None:
    lines = ["| problem | NFE | best diffusers configuration | its RMS | best sdeflow hand configuration | its RMS | "
             "diffusers / sdeflow hand | sdeflow tuned (that sampler) | its RMS | sdeflow teleported (best) | its RMS | "
             "diffusers / sdeflow best |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    hand_ratios, best_ratios = [], []
    for problem in problems():
        for nfe in BUDGETS:
            c = results[problem.name][str(nfe)]
            (pn, pr), (hn, hr), (tn, tr) = c["diffusers"], c["hand"], c["tuned"]
            gn, gr = c.get("teleport") or ("- (no skip)", math.inf)
            best = min(hr, tr, gr)
            hand_ratios.append(pr / hr)
            best_ratios.append(pr / best)
            lines.append(f"| {problem.name} | {nfe} | {pn} | {pr:.3g} | {hn} | {hr:.3g} | {pr / hr:.2f} | {tn} | "
                         f"{tr:.3g} | {gn} | {gr:.3g} | {pr / best:.2f} |")

    def counts(ratios, what, peer="diffusers' best"):
        return (f"{what} is at least 1.5x more accurate than {peer} in {sum(r >= 1.5 for r in ratios)} of "
                f"{len(ratios)} cells and at least as accurate in {sum(r >= 1 for r in ratios)}; ratios "
                f"{min(ratios):.2f}-{max(ratios):.2f}.")
    summary = [counts(hand_ratios, "On the draws each choice is made on, sdeflow's best hand configuration"), "",
               counts(best_ratios, "sdeflow's best configuration, tuned and teleported ones included,")]
    fresh = [f"## The chosen configurations on {FRESH_DRAWS} fresh draws", "",
             f"Each library's choice above (for sdeflow the hand, tuned or teleported configuration with the least "
             f"RMS on the draws above) run again from {FRESH_DRAWS} other exact draws (seed {FRESH_SEED}) and scored "
             "there, so that neither choice is credited with the luck of the draws it was chosen on. Share: the "
             "fraction of a method's squared error that its worst 1% of draws carry.", "",
             "| problem | NFE | diffusers' choice: RMS | median | share | sdeflow's choice | RMS | median | share | "
             "diffusers / sdeflow, RMS | median | sdeflow's hand choice: diffusers / it, RMS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fresh_rms, fresh_median, fresh_hand = [], [], []
    for problem in problems():
        for nfe in BUDGETS:
            c, f = results[problem.name][str(nfe)], results[problem.name]["fresh"][str(nfe)]
            pick = sdeflow_pick(c)
            (_, pr, pm, ps), (sn, sr, sm, ss), (_, hr, _, _) = f["diffusers"], f[pick], f["hand"]
            fresh_rms.append(pr / sr)
            fresh_median.append(pm / sm)
            fresh_hand.append(pr / hr)
            fresh.append(f"| {problem.name} | {nfe} | {pr:.3g} | {pm:.3g} | {ps:.2f} | {sn} | {sr:.3g} | {sm:.3g} | {ss:.2f} | "
                         f"{pr / sr:.2f} | {pm / sm:.2f} | {pr / hr:.2f} |")
    fresh[4:4] = [counts(fresh_rms, "On the fresh draws, sdeflow's choice", "diffusers' choice"), "",
                  counts(fresh_hand, "Its hand choice alone", "diffusers' choice"), "",
                  counts(fresh_median, "On the median error, sdeflow's choice", "diffusers' choice"), ""]
    intro = ("Written by `python benchmarks/ddpm_low_nfe.py`. The best configuration of each library per problem "
             "and budget (sdeflow's hand configurations: sampler, grid and start); RMS against the exact "
             "probability-flow solution from each method's own start, float32 states, on the problem's draws "
             f"(seed 0). Tuned: the best hand configuration's sampler with its grid fitted by `optimize_grid`, "
             f"and then its coefficients by `optimize_coefficients` (library defaults), from the top and from the "
             f"`leading` start, each on {FIT_DRAWS} other exact draws of the start's marginal (seed {FIT_SEED}); "
             "`[hand:...]` marks a fit that did not beat the best hand grid on its held-out draws and returned "
             "that grid. The sampler tuned is chosen on the scored draws, as each library's best configuration is. "
             "Teleported: every run starts from the same exact draws of `p_1` as those from the top, the data's "
             "Gaussian (the mixture's exact mean and covariance) carries them to the `t_skip` its rule chooses on "
             "the model, at no model cost, and a hand configuration, or the best one's sampler with its grid "
             "fitted by `optimize_grid(start=\"teleport\")` and then its coefficients, runs from there; judged "
             "against the exact solution from the top.")
    headline = [counts(fresh_rms, f"Judged on {FRESH_DRAWS} fresh draws (the last section), sdeflow's choice",
                       "diffusers' choice") + " These draws, not the ones a choice is made on, are the measure."]
    write_report(OUT, "DDPM at NFE 5-8: sdeflow against diffusers, both free to start below the top", intro, headline,
                 summary, lines, fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", type=shard, default=(0, 1), help="i/k: measure the problems whose index is i modulo k "
                        "(shards share the results file; the report is written once every problem is in it)")
    parser.add_argument("--problems", nargs="+", metavar="TEXT", help="only the problems whose name holds one of these")
    args = parser.parse_args()
    torch.set_num_threads(1)
    d, err = load_diffusers()
    if d is None:
        raise SystemExit(f"this comparison needs diffusers: {err}")
    i, k = args.shard
    todo = problems()
    for problem in [p for p in todo[i::k] if not args.problems or any(t in p.name for t in args.problems)]:
        if problem.name not in load_json(RESULTS):
            cells = measure(d, problem)
            locked_update(RESULTS, lambda results: results.__setitem__(problem.name, cells))
        entry = refit(problem, load_json(RESULTS)[problem.name])
        if entry is not None:
            locked_update(RESULTS, lambda results: results.__setitem__(problem.name, entry))
        if any("teleport" not in load_json(RESULTS)[problem.name][str(nfe)] for nfe in BUDGETS):
            teleported = teleport_stage(problem)
            locked_update(RESULTS, lambda results: [results[problem.name][n].__setitem__("teleport", v)
                                                    for n, v in teleported.items()])
        entry = load_json(RESULTS)[problem.name]
        if not rescored(entry):
            fresh = rescore(d, problem, entry, entry.get("fresh", {}))
            locked_update(RESULTS, lambda results: results[problem.name].__setitem__("fresh", fresh))
    results = load_json(RESULTS)
    if all(p.name in results and rescored(results[p.name]) for p in todo):
        report(results)
    else:
        print(f"{sum(p.name in results for p in todo)} of {len(todo)} problems measured; the report waits for the rest")

if __name__ == "__main__":
    main()

"""The stored part-2 rows of ``benchmarks/tuning.py`` and how they are judged: the draws the fits see,
the hand grids a row is compared with (from where the fits start), a row's configurations, and
scoring stored rows again without fitting, on the benchmark's draws (``--rescore``) and on the ODE
benchmark's fresh draws beside its best peer (``--fresh``). ``check_size.py`` and
``tuning_rows_fresh.py`` judge the same rows on other draws with these pieces.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (HAND_GRIDS, PROCESSES, Shared, family, fresh_shared, load_json, locked_update,  # noqa: E402
                    problems, sdeflow_denoiser)
from tuning_report import best_tuned  # noqa: E402

from sdeflow import grids, sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402
from sdeflow.tuning import TunedGrid, steps_for  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")


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


def scorer(problem, process, shared: Shared | None = None):
    """``score(sampler, ts) -> {"rms", "median"}`` of a run from the benchmark's draws (or those of
    ``shared``) against their reference solve."""
    den, shared = sdeflow_denoiser(problem, process), shared or Shared(problem, process)

    def score(sampler, ts):
        out = sample(den, sampler, ts, shared.x_init(float(ts[0])).float()).x.double()
        got = shared.score((float(ts[0]), float(ts[-1])), out)
        return {"rms": got["rms"], "median": got["median"]}

    return score


def hand_grid(name: str, sampler, sch, nfe: int) -> torch.Tensor:
    """The hand grid ``name`` for ``sampler`` at ``nfe`` evaluations, from where the fits and their draws
    start (:func:`sdeflow.grids.start_time`: its first time moved to 0.999 on rectified flow), so that
    tuned and hand grids are judged on one problem."""
    ts = GRIDS[name](steps_for(sampler, sch, nfe), sch).clone()
    ts[0] = grids.start_time(sch)
    return ts


def hand_scores(score, process, sampler, nfe: int) -> tuple[dict, dict]:
    """The process's hand grids that let ``sampler`` spend exactly ``nfe`` evaluations, each from
    :func:`hand_grid`'s start: ``({name: score}, {name: grid})``."""
    scores, ts = {}, {}
    for g in HAND_GRIDS[process.time_input]:
        hts = hand_grid(g, sampler, process.schedule, nfe)
        if sampler.prepare(process.schedule, hts).nfe == nfe:
            scores[g], ts[g] = score(sampler, hts), hts
    return scores, ts


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
            score = scorer(problem, process)
            for r in at:
                sampler = SAMPLERS[r["sampler"]]()
                tuned, coef = (score(*run) for run in stored_runs(r).values())
                r.update(tuned=tuned["rms"], tuned_median=tuned["median"], coef=coef["rms"], coef_median=coef["median"])
                hand = hand_scores(score, process, sampler, r["nfe"])[0]
                if hand:  # the best of them again: the start of a hand grid may have moved since the row was fitted
                    r["hand_grid"] = min(hand, key=lambda g: hand[g]["rms"])
                    r.update(hand=hand[r["hand_grid"]]["rms"], hand_median=hand[r["hand_grid"]]["median"])
                medians = stored_best(r["problem"], r["process"], r["nfe"], "median")
                r["best_sdeflow_median"], r["best_peer_median"] = medians.get("sdeflow"), medians.get("peer")
            print(f"{problem.name}, {process.name}: {len(at)} rows scored again", flush=True)


def fresh(rows: list[dict], path: str) -> None:
    """Each cell's best tuned configuration, chosen on the benchmark's draws as the report's table
    chooses it, run again on the ODE benchmark's fresh draws (those its best peer was run on again,
    :func:`common.fresh_shared`) and scored against their reference solve: one
    ``{problem, process, nfe, label, rms, median, draws, config}`` per cell of ``rows``, saved in the
    results file ``path`` after each problem and process; a cell whose choice is unchanged since it was
    stored keeps its stored entry (a run resumes)."""
    for problem in problems():
        for process in PROCESSES:
            cells = {}
            for r in rows:
                if (r["problem"], r["process"]) == (problem.name, process.name):
                    cells.setdefault(r["nfe"], []).append(r)
            if not cells:
                continue
            shared = fresh_shared(problem, process)
            score = scorer(problem, process, shared)
            done = {(f["problem"], f["process"], f["nfe"]): f for f in load_json(path).get("fresh", [])}
            out = []
            for nfe, at in sorted(cells.items()):
                _, label, r, coef = best_tuned(at)
                config = [r["sampler"], coef, r["ts"], r.get("coef_ts") if coef else None, r["shift"] if coef else None]
                prior = done.get((problem.name, process.name, nfe))
                if prior is not None and prior["config"] == config:
                    out.append(prior)
                    continue
                got = score(*stored_runs(r)["with coefficients" if coef else "grid"])
                out.append(dict(problem=problem.name, process=process.name, nfe=nfe, label=label, rms=got["rms"],
                                median=got["median"], draws=shared.problem.num, config=config))
                print(f"  fresh draws: {problem.name} / {process.name} / NFE {nfe}: {label} {got['rms']:.3g}", flush=True)
            here = {(f["problem"], f["process"], f["nfe"]) for f in out}
            locked_update(path, lambda results: results.update(fresh=[
                f for f in results.get("fresh", []) if (f["problem"], f["process"], f["nfe"]) not in here] + out))


def peer_fresh() -> dict:
    """The ODE benchmark's fresh-draw rows, ``{(problem, process, nfe, method): row}``."""
    rows = load_json(os.path.join(OUT, "ode_solvers.json")).get("fresh", [])
    return {(f["problem"], f["process"], f["nfe"], f["method"]): f for f in rows}

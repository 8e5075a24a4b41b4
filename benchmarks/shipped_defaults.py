"""sdeflow's defaults on the shipped models: learned fields the defaults were not chosen on.

The defaults (``sdeflow.samplers.names.DEFAULTS``) were chosen on random exact Gaussian mixtures
(``benchmarks/defaults.py``). Here every candidate configuration of ``sdeflow tune --method choose``
(``sdeflow.tuning.choose.candidates``: the candidate samplers on every grid of the schedule's family,
each grid starting where sdeflow samples from) runs on each shipped sampling model at each budget
from the same draws of the prior at the top of the schedule, and is scored by the RMS distance of
its endpoints to the reference solve of the same draws (``sdeflow.tuning.Teacher``: third-order
DPM-Solver, 300 steps; its distance to the 150-step solve is reported as the reference's floor). The
table gives, per model and budget, the table default's RMS over the least of every candidate's, the
same for the defaults before the rule (``defaults.PREVIOUS``), for the configuration a 32-draw pilot
(``choose_configuration``, on draws apart from the judging ones) picks, and for the configuration
shipped with the model (``sdeflow/pretrained/<name>.grids.json``, ``sdeflow tune --method choose`` on
draws of other seeds), which is what ``sdeflow sample`` runs on the model by default.

    python benchmarks/shipped_defaults.py                      # every model; resumes per model
    python benchmarks/shipped_defaults.py --models moons --nfe 4 8

Writes ``docs/benchmarks/shipped_defaults.{md,json}``; a model's record is written as soon as it is
measured, so an interrupted run resumes with the next model, and a run measures only the budgets a
model's record lacks (``--redo``: the given ones again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import write_report  # noqa: E402
from defaults import PREVIOUS  # noqa: E402

from sdeflow.files import write_json  # noqa: E402
from sdeflow.grids import start_time  # noqa: E402
from sdeflow.pretrained import load_model, path_of  # noqa: E402
from sdeflow.sampling import prior_sample  # noqa: E402
from sdeflow.samplers.names import family  # noqa: E402
from sdeflow.tuning import Teacher, choose_configuration, find_chosen, tuned_paths  # noqa: E402
from sdeflow.tuning.choose import candidates, default_key  # noqa: E402
from sdeflow.tuning.draws import endpoint_loss, squared_errors  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "shipped_defaults")
MODELS = ("moons", "eight-gaussians", "swiss-roll", "checkerboard", "digits-small", "digits")
BUDGETS = (3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
DRAWS = {"vector": 512, "image": 128}
PILOT = 32


def draws(model, n: int, seed: int) -> tuple[torch.Tensor, dict | None]:
    """``n`` float64 draws of sdeflow's prior at the top of the schedule, and class labels cycling
    through the classes for a class-conditional model."""
    sch = model.denoiser.schedule
    x = prior_sample(sch, (n, *model.shape), t=start_time(sch), generator=torch.Generator().manual_seed(seed),
                     dtype=torch.float64)
    return x, ({"label": torch.arange(n) % model.num_classes} if model.num_classes else None)


def shipped_key(name: str, nfe: int) -> str | None:
    """The configuration shipped with the model at ``nfe`` (``sampler (grid)``), or ``None``."""
    chosen = find_chosen(tuned_paths(path_of(name))[-1], nfe)  # the shipped file, not a user's
    return None if chosen is None else f"{chosen.sampler} ({chosen.chosen_grid})"


def previous_key(fam: str, nfe: int) -> str:
    return "{} ({})".format(*next((s, g) for most, s, g in PREVIOUS[fam] if nfe <= most))


def measure(name: str, budgets) -> dict:
    model = load_model(name)
    den, sch = model.denoiser, model.denoiser.schedule
    x, cond = draws(model, DRAWS[model.kind], seed=1)
    start = time.perf_counter()
    teacher = Teacher(den, x, cond=cond, steps=300)
    floor = float(squared_errors(Teacher(den, x, cond=cond, steps=150).end, teacher.end).mean().sqrt())
    pilot_x, pilot_cond = draws(model, PILOT, seed=2)
    pilot_teacher = Teacher(den, pilot_x, cond=pilot_cond, steps=300)  # one reference serves every budget's pick
    rec = {"draws": x.shape[0], "reference_floor": floor, "family": family(sch), "budgets": {}}
    for nfe in budgets:
        errs = {key: endpoint_loss(den, sampler, ts, x, teacher.end, cond)
                for key, (_, _, sampler, ts) in candidates(sch, nfe).items()}
        pick = choose_configuration(den, nfe, teacher=pilot_teacher)
        rec["budgets"][str(nfe)] = {"errors": errs, "default": default_key(sch, nfe),
                                    "previous": previous_key(family(sch), nfe),
                                    "pilot": f"{pick.sampler} ({pick.chosen_grid})"}
        best = min(errs.values())
        print(f"{name} NFE {nfe}: default {errs[default_key(sch, nfe)] / best:.2f}x the best "
              f"({min(errs, key=errs.get)}, {best:.3g})", flush=True)
    rec["seconds"] = time.perf_counter() - start
    return rec


def ratio(cell: dict, which: str) -> float:
    errs = cell["errors"]
    return errs.get(cell[which], math.inf) / min(errs.values())


ROWS = (("default", "table default"), ("previous", "previous default"), ("pilot", "32-draw pilot"),
        ("shipped", "shipped choice"))


def report(results: dict) -> None:
    models = [m for m in MODELS if m in results] + [m for m in results if m not in MODELS]
    budgets = sorted({int(b) for r in results.values() for b in r["budgets"]})
    lines = ["| model | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m in models:
        for which, label in ROWS:
            cells = [results[m]["budgets"].get(str(b)) for b in budgets]
            lines.append(f"| {m}: {label} | " + " | ".join(f"{ratio(c, which):.2f}" if c else "" for c in cells) + " |")
    best = ["| model | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m in models:
        cells = [results[m]["budgets"].get(str(b)) for b in budgets]
        best.append(f"| {m} | " + " | ".join(
            f"{min(c['errors'], key=c['errors'].get)}: {min(c['errors'].values()):.3g}; table default {c['default']}: "
            f"{c['errors'][c['default']]:.3g}; shipped {c['shipped']}: {c['errors'][c['shipped']]:.3g}" if c else ""
            for c in cells) + " |")
    summary = []
    for which, label in ROWS:
        r = [ratio(c, which) for m in models for c in results[m]["budgets"].values()]
        summary.append(f"- {label}: median {statistics.median(r):.2f}x the best, worst {max(r):.2f}x; within 1.5x in "
                       f"{sum(v <= 1.5 for v in r)} and within 3x in {sum(v <= 3 for v in r)} of {len(r)} cells")
    floors = ", ".join(f"{m} {results[m]['reference_floor']:.1e}" for m in models)
    counts = ", ".join(f"{m} {results[m]['draws']}" for m in models)
    intro = ("`python benchmarks/shipped_defaults.py`. Each cell: a configuration's RMS endpoint error over the least "
             "of every candidate configuration of `sdeflow tune --method choose` (the same draws of the prior at the "
             "top of the schedule, the grids starting where sdeflow samples from) against a 300-step reference solve "
             f"({counts} draws; the reference's distance to a 150-step "
             f"solve: {floors}). The table default is the family's row of `sdeflow.samplers.names.DEFAULTS`, chosen on "
             "random exact Gaussian mixtures (`benchmarks/defaults.py`), never on these models; the previous default is "
             "the table before that rule; the pilot's pick is `choose_configuration` on 32 other draws; the shipped "
             "choice is the configuration shipped beside the model (`sdeflow/pretrained/<name>.grids.json`, "
             "`sdeflow tune --method choose` on draws of other seeds), what `sdeflow sample` and "
             "`sdeflow.tuning.model_recommended` run on the model by default.")
    write_report(OUT + ".md", "sdeflow's defaults on the shipped models", intro,
                 ["Over all cells:", "", *summary], ["## Ratio to the best configuration", "", *lines],
                 ["## The best configuration and the default (RMS)", "", *best])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--nfe", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--redo", action="store_true", help="measure the given budgets again even where the results hold them")
    args = p.parse_args(argv)
    for name in args.models:
        load_model(name)  # an unknown name is refused before any measurement
    results = {}
    if os.path.exists(OUT + ".json"):
        with open(OUT + ".json") as f:
            results = json.load(f)
    for name in args.models:
        have = results.get(name, {}).get("budgets", {})
        missing = [nfe for nfe in args.nfe if args.redo or str(nfe) not in have]
        if not missing:
            continue
        rec = measure(name, missing)  # the same draws and reference as any earlier run's: its cells join them
        if have:
            rec["budgets"] = {**have, **rec["budgets"]}
            rec["seconds"] += results[name]["seconds"]
        results[name] = rec
        write_json(OUT + ".json", results)
    for name, rec in results.items():  # the shipped choices are read where they are now: scored on the stored errors
        for nfe, cell in rec["budgets"].items():
            cell["shipped"] = shipped_key(name, int(nfe))
    write_json(OUT + ".json", results)
    report(results)


if __name__ == "__main__":
    main()

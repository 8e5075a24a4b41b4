"""Print the tables of docs/samplers.md (samplers by accuracy, peer ratios) from the saved benchmark results.

    python benchmarks/sampler_tables.py    # after benchmarks/ode_solvers.py and benchmarks/sde_samplers.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import fmt  # noqa: E402
from ode_solvers import choices  # noqa: E402
from sde_samplers import choices as sde_choices  # noqa: E402

from sdeflow.registry import SAMPLERS  # noqa: E402

WHAT = {name: SAMPLERS.summary(name) for name in SAMPLERS}  # the table's own one-line summaries


def main(problem="64-D mixture",
         path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "ode_solvers.json")):
    with open(path) as f:
        data = json.load(f)
    results = data["results"]
    procs = [("DDPM eps (1000 discrete steps)", "DDPM eps"), ("rectified-flow velocity", "flow velocity")]
    nfes = (5, 10, 20)
    head = "| sampler | method | order | NFE/step | " + " | ".join(f"{short} NFE {n}" for _, short in procs for n in nfes) + " |"
    lines = [head, "|" + " --- |" * (4 + len(procs) * len(nfes))]
    for name, make in SAMPLERS.items():
        s = make()
        if s.stochastic:
            continue
        cost = "adaptive" if s.adaptive else str(s.nfe_per_step)
        cells = []
        for proc, _ in procs:
            for n in nfes:
                hits = [r["rms"] for r in results if r["problem"] == problem and r["process"] == proc and r["nfe"] == n
                        and r["method"].startswith("sdeflow ") and r["method"].split(" ")[1] == name]
                cells.append(fmt(min(hits)) if hits else "-")
        lines.append(f"| `{name}` | {WHAT.get(name, '')} | {s.convergence_order} | {cost} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    # summary: each cell's best peer over sdeflow's best (both chosen on the scored draws), scored on fresh draws
    again = {(r["problem"], r["process"], r["nfe"], r["method"]): r["rms"] for r in data.get("fresh", [])}
    if not again:
        print("(no fresh-draw results yet: run benchmarks/ode_solvers.py --fresh)")
    picks = choices(results)
    probs = list(dict.fromkeys(r["problem"] for r in results))
    allp = list(dict.fromkeys(r["process"] for r in results))
    nfe_all = sorted({r["nfe"] for r in results})
    out = ["| problem | process | " + " | ".join(f"NFE {n}" for n in nfe_all) + " |", "|" + " --- |" * (2 + len(nfe_all))]
    for pb in probs:
        for pc in allp:
            cells = []
            for n in nfe_all:
                ours, peer = picks.get((pb, pc, n), (None, None))
                f_ours, f_peer = (again.get((pb, pc, n, r["method"])) if r else None for r in (ours, peer))
                cells.append(f"{f_peer / f_ours:.2f}" if f_ours and f_peer else "-")
            out.append(f"| {pb} | {pc} | " + " | ".join(cells) + " |")
    print("\n".join(out))
    print()
    sde_tables()


def sde_tables(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "sde_samplers.json")):
    """The stochastic samplers' table (sliced Wasserstein on the 64-D mixture) and the peer ratios."""
    if not os.path.exists(path):
        print("(no stochastic-sampler results yet: run benchmarks/sde_samplers.py)")
        return
    with open(path) as f:
        data = json.load(f)
    results = [r for r in data["results"] if not r.get("adaptive")]
    procs = [("DDPM eps (1000 discrete steps)", "DDPM eps"), ("rectified-flow velocity", "flow velocity")]
    nfes = (10, 50, 200)
    lines = ["| sampler | method | weak order | NFE/step | " + " | ".join(f"{short} NFE {n}" for _, short in procs for n in nfes) + " |",
             "|" + " --- |" * (4 + len(procs) * len(nfes))]
    for name, make in SAMPLERS.items():
        s = make()
        if not s.stochastic:
            continue
        cells = []
        for proc, _ in procs:
            for n in nfes:
                hits = [r["sw"] for r in results if r["problem"] == "64-D mixture" and r["process"] == proc and r["nfe"] == n
                        and r["kind"] == "sde" and r["method"].split(" ")[1] == name]
                cells.append(fmt(min(hits)) if hits else "-")
        order = "-" if s.convergence_order == 0 else str(s.convergence_order)
        cost = "adaptive" if s.adaptive else str(s.nfe_per_step)
        lines.append(f"| `{name}` | {WHAT.get(name, '')} | {order} | {cost} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    # each cell's best peer over sdeflow's best SDE configuration (both chosen on the scored draws), on fresh draws
    fresh = data.get("fresh", [])
    if not fresh:
        print("(no fresh-draw results yet: run benchmarks/sde_samplers.py --fresh)")
    again = {(r["problem"], r["process"], r["nfe"], r["method"]): r["sw"] for r in fresh}
    floors = {(r["problem"], r["process"]): r["floor_sw"] for r in fresh}
    picks = sde_choices(results)
    nfe_all = sorted({r["nfe"] for r in results})
    out = ["| problem | process | SW floor | " + " | ".join(f"NFE {n}" for n in nfe_all) + " |", "|" + " --- |" * (3 + len(nfe_all))]
    for pb, pc in dict.fromkeys((r["problem"], r["process"]) for r in results):
        cells = []
        for n in nfe_all:
            ours, peer, _ = picks.get((pb, pc, n), (None, None, None))
            f_ours, f_peer = (again.get((pb, pc, n, r["method"])) if r else None for r in (ours, peer))
            cells.append(f"{f_peer / f_ours:.2f}" if f_ours and f_peer else "-")
        floor = floors.get((pb, pc))
        out.append(f"| {pb} | {pc} | {floor:.3g} | " if floor else f"| {pb} | {pc} | - | ")
        out[-1] += " | ".join(cells) + " |"
    print("\n".join(out))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="64-D mixture", help="the ODE benchmark problem of the accuracy columns")
    main(ap.parse_args().problem)

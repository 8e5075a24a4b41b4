"""Rows of ``benchmarks/tuning.py`` on fresh draws: the stored tuned grids and coefficients of one
ODE problem (the 64-D mixture unless ``--problem``) run again on draws that neither fitted nor scored them, beside those of the same rows
at an earlier revision of ``docs/benchmarks/tuning.json`` where they differ.

The ODE benchmark scores each row on its own 500 draws; on these mixtures a few draws that end in
another component decide an RMS there, so a change that moves a row can look better or worse by
those draws' luck. Here every row that differs between ``--against`` (a git revision) and the
working tree, and the rows named by ``--rows``, run from ``--draws`` other exact draws of ``p_top``
(seed 99) against a 600-step solve of the probability-flow ODE, as grid alone and with the row's
coefficients (the sampler's own where the row kept none), and the row's best hand grid. Reported: RMS, median error, and how many
draws end more than 1 away.

    python benchmarks/tuning_rows_fresh.py --against 6ca8fda --rows DDPM:unipc-bh2:8   # writes docs/benchmarks/tuning_rows_fresh.md
    python benchmarks/tuning_rows_fresh.py --problem "3x32x32 mixture" --against f3e2d1c --draws 500 --processes EDM
                                                        # writes docs/benchmarks/tuning_rows_fresh_3x32x32.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, problems, sdeflow_denoiser, write_report  # noqa: E402
from tuning import OUT, fit_draws, stored_runs  # noqa: E402

from sdeflow import grids  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402
from sdeflow.tuning import Teacher, steps_for  # noqa: E402
from sdeflow.tuning.draws import draw_errors  # noqa: E402

PROBLEM = "64-D mixture"
#: Draws per solve: on the 3x32x32 mixture a batch of 1000 runs about 10x slower per draw than
#: batches of 100, its temporaries (draws x components x 3072 values) being allocated afresh at each call.
CHUNK = 100


def in_chunks(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to :data:`CHUNK` draws of ``tensors`` at a time, the results joined."""
    return torch.cat([fn(*(t[i:i + CHUNK] for t in tensors)) for i in range(0, len(tensors[0]), CHUNK)])


def report_name(problem: str) -> str:
    """The report's file: ``tuning_rows_fresh.md`` for the 64-D mixture, else the problem's first word added."""
    return "tuning_rows_fresh" + ("" if problem == PROBLEM else "_" + problem.split()[0]) + ".md"


def key(r: dict) -> tuple:
    return r["process"], r["sampler"], r["nfe"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, help="git revision whose docs/benchmarks/tuning.json the rows are compared with")
    p.add_argument("--rows", nargs="*", default=[], metavar="PROCESS:SAMPLER:NFE",
                   help="rows to run too (PROCESS: the start of the process's name, e.g. DDPM)")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--problem", default=PROBLEM, choices=[q.name for q in problems()], help="the ODE problem whose rows run")
    p.add_argument("--processes", nargs="+", default=None, metavar="NAME", help="these processes only (e.g. EDM)")
    args = p.parse_args()
    torch.set_num_threads(1)
    now = [r for r in json.load(open(os.path.join(OUT, "tuning.json")))["mixtures"] if r["problem"] == args.problem]
    text = subprocess.run(["git", "show", f"{args.against}:docs/benchmarks/tuning.json"], check=True,
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    before = {key(r): r for r in json.loads(text)["mixtures"] if r["problem"] == args.problem}
    named = [tuple(s.split(":")) for s in args.rows]

    def differs(r):
        q = before.get(key(r))
        return q is not None and (q["shift"] != r["shift"] or q["ts"] != r["ts"] or q.get("coef_ts") != r.get("coef_ts"))

    def wanted(r):
        return differs(r) or any(r["process"].startswith(a) and r["sampler"] == b and r["nfe"] == int(c) for a, b, c in named)

    problem = next(q for q in problems() if q.name == args.problem)
    lines = ["| process | sampler | NFE | stored | configuration | RMS | median error | draws more than 1 away |",
             "|---|---|---|---|---|---|---|---|"]
    for process in PROCESSES:
        rows = [r for r in now if r["process"] == process.name and wanted(r)]
        if not rows or args.processes and not any(o.lower() in process.name.lower() for o in args.processes):
            continue
        den, sch = sdeflow_denoiser(problem, process), process.schedule
        top = grids.start_time(sch)
        x = fit_draws(problem, process, top, args.draws, seed=99)
        target = in_chunks(lambda d: Teacher(den, d, steps=600).end, x)
        for r in rows:
            pairs = [(f"at {args.against}", before[key(r)])] if differs(r) else []
            runs = [(label, name + ("" if name == "grid" or row["shift"] else " (own kept)"), run)
                    for label, row in pairs + [("now", r)] for name, run in stored_runs(row).items()]
            sampler = SAMPLERS[r["sampler"]]()
            hand = GRIDS[r["hand_grid"]](steps_for(sampler, sch, r["nfe"]), sch) if r.get("hand_grid") else None
            if hand is not None and abs(float(hand[0]) - top) < 1e-9:  # the row's best hand grid, from the same draws
                runs.append(("now", f"hand grid ({r['hand_grid']})", (sampler, hand)))
            for label, name, (sampler, ts) in runs:
                e = in_chunks(lambda d, y: draw_errors(den, sampler, ts, d, y), x, target)
                lines.append(f"| {process.name.split(' (')[0]} | {r['sampler']} | {r['nfe']} | {label} | {name} | "
                             f"{float(e.mean().sqrt()):.4g} | {float(e.median().sqrt()):.4g} | "
                             f"{int((e > 1).sum())} of {args.draws} |")
                print(lines[-1], flush=True)
    command = shlex.join(["python", "benchmarks/tuning_rows_fresh.py"] + sys.argv[1:])
    intro = (f"Written by `{command}` ({args.draws} fresh draws): the rows of "
             f"the {args.problem} in `docs/benchmarks/tuning.json` that differ from revision {args.against}'s, and those named, "
             "run on draws that neither fitted nor scored them, beside the row's best hand grid (same sampler).")
    write_report(os.path.join(OUT, report_name(args.problem)), "Tuned rows on fresh draws", intro, lines)


if __name__ == "__main__":
    main()

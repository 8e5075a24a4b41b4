"""Rows of ``benchmarks/tuning.py`` on fresh draws: the stored tuned grids and coefficients of one
ODE problem (the 64-D mixture unless ``--problem``) run again on draws that neither fitted nor scored them, beside those of the same rows
at an earlier revision of ``docs/benchmarks/tuning.json`` where they differ.

The ODE benchmark scores each row on its own 500 draws; on these mixtures a few draws that end in
another component decide an RMS there, so a change that moves a row can look better or worse by
those draws' luck. Here every row that differs between ``--against`` (a git revision) and the
working tree, and the rows named by ``--rows``, run from ``--draws`` other exact draws of ``p_top``
(seed 99) against a 600-step solve of the probability-flow ODE, as grid alone and with the row's
coefficients (the sampler's own where the row kept none), and the row's best hand grid (started at the
draws' time where it starts above it, as the tuned grids and the coefficient fits do). Reported: RMS, median error, and how many
draws end more than 1 away.

Each row's results are saved when it is done, in a JSON file beside the report, and the report is
written from every row stored for the problem: runs for different processes add to one report, and
an interrupted run resumes, skipping the rows already stored for the same revision, draw count and
stored configuration.

    python benchmarks/tuning_rows_fresh.py --against 6ca8fda --rows DDPM:unipc-bh2:8   # writes docs/benchmarks/tuning_rows_fresh.md
    python benchmarks/tuning_rows_fresh.py --problem "3x32x32 mixture" --against f3e2d1c --draws 400 --processes EDM
                                                        # writes docs/benchmarks/tuning_rows_fresh_3x32x32.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, load_json, locked_update, problems, sdeflow_denoiser, write_report  # noqa: E402
from tuning_rows import OUT, fit_draws, hand_grid, stored_runs  # noqa: E402

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


def stored_key(r: dict) -> str:
    """A row's :func:`key` as the key of its entry in the stored results (JSON keys are strings)."""
    return "|".join(map(str, key(r)))


def fingerprint(r: dict, against: str, draws: int, other: dict | None = None) -> str:
    """What a stored result depends on: the row's grids, coefficients and hand grid, those of the row
    fitted with another trim that runs beside it, the revision it is compared with and the number of draws."""
    what = [r["ts"], r.get("coef_ts"), r["shift"], r.get("hand_grid"), against, draws]
    what += [other["ts"], other.get("coef_ts"), other["shift"], other["trim"]] if other else []
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def table(stored: dict) -> list[str]:
    """The report's table from the stored rows, in the order of the processes, then NFE and sampler."""
    order = {p.name: k for k, p in enumerate(PROCESSES)}
    lines = ["| process | sampler | NFE | fresh draws | stored | configuration | RMS | median error | draws more than 1 away |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(stored.values(), key=lambda e: (order.get(e["process"], 9), e["nfe"], e["sampler"])):
        for c in e["runs"]:
            lines.append(f"| {e['process'].split(' (')[0]} | {e['sampler']} | {e['nfe']} | {e['draws']} | {c['stored']} | "
                         f"{c['configuration']} | {c['rms']:.4g} | {c['median']:.4g} | {c['far']} of {e['draws']} |")
    return lines


def kept(e: dict, stored: str) -> dict | None:
    """The configuration a row ends with among its runs stored as ``stored``: its second stage's, the
    coefficients fitted on the grid the row chose for them (the tuned grid or a hand grid), or that
    grid with the sampler's own coefficients where the fit was not kept; its tuned grid alone where
    the row has no second stage (``None`` where it has no such runs)."""
    runs = [c for c in e["runs"] if c["stored"] == stored]
    return next((c for c in runs if c["configuration"].startswith("with coefficients")),
                next((c for c in runs if c["configuration"] == "grid"), None))


def counts(ratios: list[float], better: str, worse: str) -> str:
    """How many of ``ratios`` (other / kept, RMS or median) are above 1, below 1 and within 0.5%, with their ranges."""
    up = [r for r in ratios if r > 1.005]
    down = [1 / r for r in ratios if r < 1 / 1.005]
    def span(v):
        return f" ({min(v):.2f}-{max(v):.2f}x)" if v else ""
    return f"{better} {len(up)}{span(up)}, {worse} {len(down)}{span(down)}, equal {len(ratios) - len(up) - len(down)}"


def summary(stored: dict) -> list[str]:
    """Per process: how the kept configuration compares on the fresh draws with the row's best hand
    grid, with the fit of the compared revision and with the fit of another trim, where run."""
    lines = ["| process | rows | RMS against the best hand grid | median error against it | RMS against the fit at "
             "the compared revision | median error against it | RMS against the fit with another trim | median error "
             "against it |", "|---|---|---|---|---|---|---|---|"]
    for process in PROCESSES:
        rows = [e for e in stored.values() if e["process"] == process.name]
        if not rows:
            continue
        cells = []
        for prefix in ("hand grid", "at ", "now, trim"):
            pairs = []
            for e in rows:
                now = kept(e, "now")
                if prefix == "hand grid":
                    other = next((c for c in e["runs"] if c["stored"] == "now" and c["configuration"].startswith(prefix)), None)
                else:
                    other = next((kept(e, c["stored"]) for c in e["runs"] if c["stored"].startswith(prefix)), None)
                if now is not None and other is not None:
                    pairs.append((other["rms"] / now["rms"], other["median"] / now["median"]))
            cells += [counts([a for a, _ in pairs], "kept lower", "kept higher") + f" (of {len(pairs)})",
                      counts([b for _, b in pairs], "kept lower", "kept higher")] if pairs else ["-", "-"]
        lines.append(f"| {process.name.split(' (')[0]} | {len(rows)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, help="git revision whose docs/benchmarks/tuning.json the rows are compared with")
    p.add_argument("--rows", nargs="*", default=[], metavar="PROCESS:SAMPLER:NFE",
                   help="rows to run too (PROCESS: the start of the process's name, e.g. DDPM)")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--problem", default=PROBLEM, choices=[q.name for q in problems()], help="the ODE problem whose rows run")
    p.add_argument("--processes", nargs="+", default=None, metavar="NAME", help="these processes only (e.g. EDM)")
    p.add_argument("--trim", type=float, default=None,
                   help="run beside each row the same row fitted with this trim, where docs/benchmarks/tuning_trim<trim>.json "
                   "(benchmarks/tuning.py --trim) holds one, and run those rows")
    args = p.parse_args()
    torch.set_num_threads(1)
    now = [r for r in json.load(open(os.path.join(OUT, "tuning.json")))["mixtures"] if r["problem"] == args.problem]
    text = subprocess.run(["git", "show", f"{args.against}:docs/benchmarks/tuning.json"], check=True,
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    before = {key(r): r for r in json.loads(text)["mixtures"] if r["problem"] == args.problem}
    named = [tuple(s.split(":")) for s in args.rows]
    other = {}
    if args.trim is not None:
        trimmed = os.path.join(OUT, f"tuning_trim{args.trim:g}.json")
        if not os.path.exists(trimmed):
            p.error(f"--trim {args.trim:g}: {os.path.relpath(trimmed)} does not exist; benchmarks/tuning.py --part 2 "
                    f"--trim {args.trim:g} fits those rows")
        other = {key(r): r for r in load_json(trimmed).get("mixtures", []) if r["problem"] == args.problem}

    def differs(r):
        q = before.get(key(r))
        return q is not None and (q["shift"] != r["shift"] or q["ts"] != r["ts"] or q.get("coef_ts") != r.get("coef_ts"))

    def wanted(r):
        return differs(r) or key(r) in other or any(r["process"].startswith(a) and r["sampler"] == b and r["nfe"] == int(c)
                                                    for a, b, c in named)

    problem = next(q for q in problems() if q.name == args.problem)
    path = os.path.join(OUT, report_name(args.problem).removesuffix(".md") + ".json")
    command = shlex.join(["python", "benchmarks/tuning_rows_fresh.py"] + sys.argv[1:])
    for process in PROCESSES:
        stored = load_json(path)
        rows = [r for r in now if r["process"] == process.name and wanted(r)
                and stored.get(stored_key(r), {}).get("fingerprint")
                != fingerprint(r, args.against, args.draws, other.get(key(r)))]
        if not rows or args.processes and not any(o.lower() in process.name.lower() for o in args.processes):
            continue
        print(f"{len(rows)} rows to run ({process.name}); each is saved when done", flush=True)
        den, sch = sdeflow_denoiser(problem, process), process.schedule
        top = grids.start_time(sch)
        x = fit_draws(problem, process, top, args.draws, seed=99)
        target = in_chunks(lambda d: Teacher(den, d, steps=600).end, x)
        for r in rows:
            pairs = [(f"at {args.against}", before[key(r)])] if differs(r) else []
            pairs += [(f"now, trim {args.trim:g}", other[key(r)])] if key(r) in other else []
            runs = [(label, name + ("" if name == "grid" or row["shift"] else " (own kept)"), run)
                    for label, row in pairs + [("now", r)] for name, run in stored_runs(row).items()]
            sampler = SAMPLERS[r["sampler"]]()
            if r.get("hand_grid"):  # the row's best hand grid, from the same draws (its first time moved to theirs)
                hand = hand_grid(r["hand_grid"], sampler, sch, r["nfe"])
                moved = abs(float(GRIDS[r["hand_grid"]](steps_for(sampler, sch, r["nfe"]), sch)[0]) - top) > 1e-9
                runs.append(("now", f"hand grid ({r['hand_grid']}{f', from t = {top:g}' if moved else ''})", (sampler, hand)))
            entry = {"process": process.name, "sampler": r["sampler"], "nfe": r["nfe"], "draws": args.draws,
                     "command": command, "fingerprint": fingerprint(r, args.against, args.draws, other.get(key(r))), "runs": []}
            for label, name, (sampler, ts) in runs:
                e = in_chunks(lambda d, y: draw_errors(den, sampler, ts, d, y), x, target)
                entry["runs"].append({"stored": label, "configuration": name, "rms": float(e.mean().sqrt()),
                                      "median": float(e.median().sqrt()), "far": int((e > 1).sum())})
                print(table({"": entry})[-1], flush=True)
            locked_update(path, lambda results: results.update({stored_key(r): entry}))
    stored = {k: e for k, e in load_json(path).items() if any(k.startswith(p.name + "|") for p in PROCESSES)}
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(e["command"] for e in stored.values()))
    intro = (f"Written by {commands}: the rows of "
             f"the {args.problem} in `docs/benchmarks/tuning.json` that differed from the named revision's, and those named, "
             "run on fresh draws that neither fitted nor scored them, beside the row's best hand grid (same sampler). "
             f"Each row is stored in `docs/benchmarks/{os.path.basename(path)}` when it is done.")
    intro += (" Summary: for each row the configuration it keeps (its coefficients where it kept them, else its tuned "
              "grid alone) against the others on the same draws; the ranges are how much lower or higher.")
    write_report(os.path.join(OUT, report_name(args.problem)), "Tuned rows on fresh draws", intro, summary(stored), table(stored))


if __name__ == "__main__":
    main()

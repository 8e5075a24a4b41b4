"""sdeflow's ODE samplers next to diffusers' schedulers, k-diffusion's samplers and flow_matching's ODE solver.

Every method starts from the same data draws and noise (``x_init = alpha(t0) x + sigma(t0) eps`` at
its own first time ``t0``) and is judged against the exact probability-flow ODE solution from that
start (a third-order reference solve on 600 uniform steps merged with 600 Karras noise levels, float64), on exact
Gaussian-mixture problems and
three processes: a discrete 1000-step DDPM-linear eps-model, an EDM-preconditioned x0-model and a
rectified-flow velocity model. States are float32, as users run them. NFE is counted, not assumed.

    python benchmarks/ode_solvers.py            # full run, writes docs/benchmarks/ode_solvers.md and plots
    python benchmarks/ode_solvers.py --quick    # smaller problems, for a first look

Peers are optional (``pip install "sdeflow[bench]"``); a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (FRESH_SEED, FRESH_TIMES, HAND_GRIDS, NFES, PROCESSES, Shared, family, fmt, fresh_shared, problems,  # noqa: E402
                    ratio_counts, save_json, sdeflow_denoiser, write_problem_plots)
from overhead import overhead_table  # noqa: E402
from peers import diffusers_configs, diffusers_runs, flow_matching_runs, k_runs, load_diffusers, load_flow_matching, load_k_diffusion  # noqa: E402

PEERS = ("diffusers", "k-diffusion", "flow_matching")

from sdeflow import sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")


def sdeflow_runs(shared: Shared, process, nfe: int, names=None, only=None):
    """sdeflow's deterministic samplers (those in ``names`` if given) on the process's grids; with
    ``only`` (a set of names as yielded), those configurations alone."""
    den = sdeflow_denoiser(shared.problem, process)
    sch = process.schedule
    for name, make in SAMPLERS.items():
        if names and name not in names:
            continue
        sampler = make()
        if sampler.stochastic or sampler.adaptive:
            continue
        for gname in HAND_GRIDS[process.time_input]:
            if only is not None and f"sdeflow {name} ({gname})" not in only:
                continue
            n = next((m for m in range(1, nfe + 1) if sampler.prepare(sch, GRIDS[gname](m, sch)).nfe == nfe), None)
            if n is None:
                continue
            ts = GRIDS[gname](n, sch)
            r = sample(den, sampler, ts, shared.x_init(float(ts[0])).float())
            yield f"sdeflow {name} ({gname})", (float(ts[0]), float(ts[-1])), r.x.double(), r.nfe


def run(quick: bool, raw_path: str | None = None, only: list[str] | None = None, keep: list | None = None,
        processes: list[str] | None = None, samplers: list[str] | None = None, fresh: list | None = None,
        new_peers: bool = False):
    """Every method's scores, appended to ``keep``. ``new_peers``: only diffusers' configurations that
    ``keep`` lacks on a problem and process (configurations added to ``benchmarks/peers.py`` later)."""
    ks, k_err = load_k_diffusion()
    d, d_err = load_diffusers()
    fm, fm_err = load_flow_matching()
    notes = [e for e in (k_err, d_err, fm_err) if e]
    for e in notes:
        print("skipped:", e)
    nfes = [5, 10, 20] if quick else NFES
    results = list(keep or [])
    for problem in problems(quick):
        if only and not any(o.lower() in problem.name.lower() for o in only):
            continue
        for process in PROCESSES:
            if processes and not any(o.lower() in process.name.lower() for o in processes):
                continue
            missing = None
            if new_peers:
                saved = {r["method"] for r in results if r["problem"] == problem.name and r["process"] == process.name}
                missing = {f"diffusers {n}" for n in diffusers_configs(d, process)} - saved if d is not None else set()
                if not missing:
                    continue
                print(f"  {problem.name} / {process.name}: adding {sorted(missing)}", flush=True)
            shared = Shared(problem, process)
            floor = shared.sw_floor()
            start = time.time()
            for nfe in nfes:
                if missing:
                    sources = [diffusers_runs(d, shared, process, nfe, only=missing)]
                else:
                    sources = [sdeflow_runs(shared, process, nfe, samplers)]
                if d is not None and not samplers and not missing:
                    sources.append(diffusers_runs(d, shared, process, nfe))
                if ks is not None and not samplers and not missing:
                    sources.append(k_runs(ks, shared, process, nfe))
                if fm is not None and not samplers and not missing:
                    sources.append(flow_matching_runs(fm, shared, process, nfe))
                for source in sources:
                    for name, span, x, calls in source:
                        if calls != nfe:
                            continue
                        m = shared.score(span, x.reshape(problem.num, -1)) if bool(torch.isfinite(x).all()) else \
                            {"rms": math.inf, "median": math.inf, "sw": math.inf}
                        results.append({"problem": problem.name, "process": process.name, "method": name,
                                        "nfe": nfe, "floor": floor, **m})
                print(f"  {problem.name} / {process.name} / NFE {nfe}: {time.time() - start:.0f} s, "
                      f"{len(shared._refs)} reference solves", flush=True)
            if raw_path:  # partial results survive an interrupted run
                save_json(raw_path, {"results": results, "notes": notes, "complete": False, "fresh": fresh or []})
    return results, notes


def best(rows, fam):
    rows = [r for r in rows if family(r["method"]) == fam]
    return min(rows, key=lambda r: r["rms"]) if rows else None


def choices(results) -> dict:
    """``{(problem, process, nfe): (sdeflow's row, the best peer's row)}``: each side's most accurate
    configuration on the scored draws (``None`` where a side has none)."""
    cells = {}
    for r in results:
        cells.setdefault((r["problem"], r["process"], r["nfe"]), []).append(r)
    out = {}
    for key, at in cells.items():
        peers = [b for b in (best(at, fam) for fam in PEERS) if b]
        out[key] = (best(at, "sdeflow"), min(peers, key=lambda r: r["rms"]) if peers else None)
    return out


def rescore(results, fresh, quick: bool, raw_path: str, notes) -> list:
    """Each cell's two choices (sdeflow's best and the best peer, chosen on the scored draws) run
    again from ``FRESH_TIMES`` times as many other exact draws (seed ``FRESH_SEED``) and scored
    there. The least error of many configurations on one set of draws is partly that set's luck,
    and more so for the side with more configurations; on other draws neither choice keeps it.
    Appends ``{problem, process, nfe, method, rms, median}`` rows to ``fresh`` for the choices not yet
    rerun (a choice that changes is rerun) and saves them after each problem and process (an
    interrupted run resumes)."""
    (ks, _), (d, _), (fm, _) = load_k_diffusion(), load_diffusers(), load_flow_matching()
    done = {(r["problem"], r["process"], r["nfe"], r["method"]) for r in fresh}
    todo = collections.defaultdict(list)  # (problem, process): [(nfe, names of that cell's choices not yet rerun)]
    for (prob, proc, nfe), pair in sorted(choices(results).items(), key=lambda kv: kv[0][2]):
        names = {r["method"] for r in pair if r and (prob, proc, nfe, r["method"]) not in done}
        if names:
            todo[(prob, proc)].append((nfe, names))
    for problem in problems(quick):
        for process in PROCESSES:
            if not todo[(problem.name, process.name)]:
                continue
            shared = fresh_shared(problem, process)
            for nfe, names in todo[(problem.name, process.name)]:
                sources = [sdeflow_runs(shared, process, nfe, only=names)]
                if d is not None:
                    sources.append(diffusers_runs(d, shared, process, nfe, only=names))
                if ks is not None:
                    sources.append(k_runs(ks, shared, process, nfe, only=names))
                if fm is not None:
                    sources.append(flow_matching_runs(fm, shared, process, nfe, only=names))
                scored = {}
                for name, span, x, calls in itertools.chain(*sources):
                    if calls == nfe and name in names:
                        m = shared.score(span, x.reshape(shared.problem.num, -1))
                        scored[name] = {"problem": problem.name, "process": process.name, "method": name, "nfe": nfe,
                                        "rms": m["rms"], "median": m["median"]}
                if names - scored.keys():
                    raise RuntimeError(f"{problem.name} / {process.name} / NFE {nfe}: could not run "
                                       f"{sorted(names - scored.keys())} again")
                fresh += scored.values()
                print(f"  fresh draws: {problem.name} / {process.name} / NFE {nfe}: " +
                      ", ".join(f"{n} {v['rms']:.3g}" for n, v in scored.items()), flush=True)
            save_json(raw_path, {"results": results, "notes": notes, "complete": True, "fresh": fresh})
    return fresh


def write_report(results, notes, overhead_md, path, fresh=()):
    lines = ["# ODE samplers: sdeflow, diffusers, k-diffusion and flow_matching on exact problems", "",
             "Written by `python benchmarks/ode_solvers.py`. Every method starts from the same data draws and",
             "noise at its own first time and is judged against the exact probability-flow ODE solution from",
             "that start (third-order reference on 600 uniform steps merged with 600 Karras noise levels, float64); states are "
             "float32; NFE is counted.",
             "`RMS` is the root mean square over samples of the endpoint error, `median` the median per-sample",
             "error (robust to the few samples that end in another mode), `SW` the sliced Wasserstein distance",
             "to exact data samples, printed beside its floor (two independent exact sample sets). For each",
             "family the table shows its most accurate configuration (sampler and grid) at that NFE.",
             f"The last three columns run those two choices again from {FRESH_TIMES} times as many other exact draws "
             f"(seed {FRESH_SEED}) and score them there: the least error of many configurations on the draws that "
             "choose it is partly those draws' luck (more so for sdeflow, which has more configurations to choose "
             "from), and on other draws neither choice keeps it. Those columns are the measure.", ""]
    lines += [f"- {n}" for n in notes]
    again = {(r["problem"], r["process"], r["nfe"], r["method"]): r for r in fresh}
    picks = choices(results)
    summary, body = [], []
    for prob in dict.fromkeys(r["problem"] for r in results):
        for proc in dict.fromkeys(r["process"] for r in results):
            rows = [r for r in results if r["problem"] == prob and r["process"] == proc]
            if not rows:
                continue
            body += ["", f"## {prob}, {proc}", "", f"SW floor: {rows[0]['floor']:.3g}", "",
                     "| NFE | sdeflow best | RMS | median | SW | best peer | RMS | median | SW | peer RMS / sdeflow RMS | "
                     "fresh draws: sdeflow RMS | peer RMS | peer / sdeflow |",
                     "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for nfe in sorted({r["nfe"] for r in rows}):
                ours, peer = picks[(prob, proc, nfe)]
                ratio = peer["rms"] / ours["rms"] if ours and peer else math.nan
                f_ours, f_peer = (again.get((prob, proc, nfe, r["method"])) if r else None for r in (ours, peer))
                f_ratio = f_peer["rms"] / f_ours["rms"] if f_ours and f_peer else math.nan
                summary.append((prob, proc, nfe, ratio, f_ratio))
                cell = lambda r: [r["method"].split(" ", 1)[1], fmt(r["rms"]), fmt(r["median"]), fmt(r["sw"])] if r else ["-"] * 4  # noqa: E731
                peer_cell = cell(peer)
                if peer:
                    peer_cell[0] = peer["method"]
                again_cells = [fmt(f_ours["rms"]) if f_ours else "-", fmt(f_peer["rms"]) if f_peer else "-",
                               f"{f_ratio:.2f}" if math.isfinite(f_ratio) else "-"]
                body.append("| " + " | ".join([str(nfe)] + cell(ours) + peer_cell + [f"{ratio:.2f}"] + again_cells) + " |")
            body += ["", f"![error vs NFE]({plot_name(prob)})"]
    lines += [counts(summary, 3, "On the draws that choose them"), "", counts(summary, 4, "On fresh draws")]
    lines += body
    lines += ["", "## Every sdeflow sampler", "", sampler_table(results)]
    lines += ["", "## Per-step overhead", "", overhead_md]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


def counts(summary, column: int, where: str) -> str:
    return ratio_counts((c[column] for c in summary), where, "sdeflow's most accurate configuration", "RMS")


def sampler_table(results, problem: str = "64-D mixture", nfes=(5, 10, 20)) -> str:
    """Endpoint RMS error of each sdeflow sampler (on its best grid) per process and NFE."""
    rows = [r for r in results if r["problem"] == problem and family(r["method"]) == "sdeflow"]
    procs = list(dict.fromkeys(r["process"] for r in rows))
    samplers = list(dict.fromkeys(r["method"].split(" ")[1] for r in rows))
    head = "| sampler | " + " | ".join(f"{p.split(' (')[0]}, NFE {n}" for p in procs for n in nfes) + " |"
    out = [f"Endpoint RMS error on the {problem}, each sampler on its most accurate grid at that NFE "
           "(`-`: that NFE is not reachable with the sampler's evaluations per step).", "", head,
           "|" + " --- |" * (1 + len(procs) * len(nfes))]
    for name in samplers:
        cells = []
        for p in procs:
            for n in nfes:
                hits = [r["rms"] for r in rows if r["process"] == p and r["nfe"] == n and r["method"].split(" ")[1] == name]
                cells.append(fmt(min(hits)) if hits else "-")
        out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_name(problem: str) -> str:
    return "ode_" + problem.split()[0].lower().replace("-", "") + ".png"


def saved_overhead(report: str) -> str | None:
    """The per-step overhead section of an existing report (timings are not in the saved results)."""
    if not os.path.exists(report):
        return None
    with open(report) as f:
        text = f.read()
    head = "## Per-step overhead\n\n"
    return text.split(head, 1)[1].rstrip("\n") if head in text else None


def write_plots(results, folder):
    def draw(ax, rows):
        for fam, style in [("sdeflow", "-o"), ("diffusers", "--s"), ("k-diffusion", ":^"), ("flow_matching", "-.d")]:
            pts = [(n, best([r for r in rows if r["nfe"] == n], fam)) for n in sorted({r["nfe"] for r in rows})]
            pts = [(n, b["rms"]) for n, b in pts if b and math.isfinite(b["rms"])]
            if pts:
                ax.loglog(*zip(*pts), style, label=f"best {fam}")

    write_problem_plots(results, folder, plot_name, draw, "endpoint RMS error")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems and NFE 5, 10, 20 only")
    parser.add_argument("--out", default=OUT, help="folder for the report and plots")
    parser.add_argument("--from-json", action="store_true", help="rebuild the report from the saved raw results (the "
                        "per-step overhead, which they do not hold, is kept from the existing report, as with "
                        "--fresh and --new-peers)")
    parser.add_argument("--fresh", action="store_true", help="only run each cell's two choices again on fresh draws "
                        "(the cells not yet rerun, from the saved results), then write the report")
    parser.add_argument("--new-peers", action="store_true", help="only run diffusers' configurations the saved "
                        "results lack (on every problem and process), then the fresh-draw stage and the report")
    parser.add_argument("--problems", nargs="+", metavar="NAME",
                        help="run only these problems (e.g. 3x32x32); the saved results of the others are kept")
    parser.add_argument("--processes", nargs="+", metavar="NAME",
                        help="with --problems: run only these processes (e.g. rectified); others' saved results are kept")
    parser.add_argument("--samplers", nargs="+", metavar="NAME", choices=list(SAMPLERS),
                        help="with --problems: run only these sdeflow samplers (no peers); every other saved result is kept")
    args = parser.parse_args()
    if (args.processes or args.samplers) and not args.problems:
        parser.error("--processes and --samplers narrow a --problems run")
    if (args.fresh or args.new_peers) and (args.from_json or args.problems or args.quick):
        parser.error("--fresh and --new-peers work on the saved results: they take no --from-json, --problems or --quick")
    if args.fresh and args.new_peers:
        parser.error("--new-peers runs the fresh-draw stage after it: give one of --fresh and --new-peers")
    os.makedirs(args.out, exist_ok=True)
    raw = os.path.join(args.out, "ode_solvers.json")
    saved = {}
    if os.path.exists(raw):
        with open(raw) as f:
            saved = json.load(f)
    elif args.from_json or args.fresh or args.new_peers:
        parser.error(f"no saved results at {raw}: run the benchmark first")
    results, notes, fresh = saved.get("results", []), saved.get("notes", []), saved.get("fresh", [])
    if args.new_peers:
        results, _ = run(False, raw, keep=results, fresh=fresh, new_peers=True)
        save_json(raw, {"results": results, "notes": notes, "complete": True, "fresh": fresh})
    elif not (args.from_json or args.fresh):
        def rerun(r, samplers=True):  # a saved row this run measures again
            return (any(o.lower() in r["problem"].lower() for o in args.problems)
                    and (not args.processes or any(o.lower() in r["process"].lower() for o in args.processes))
                    and (not samplers or not args.samplers or r["method"].split(" ")[:2] in (["sdeflow", s] for s in args.samplers)))
        keep = [r for r in results if not rerun(r)] if args.problems else []
        fresh = [r for r in fresh if not rerun(r, samplers=False)] if args.problems else []  # their choices may change
        results, notes = run(args.quick, raw, args.problems, keep, args.processes, args.samplers, fresh)
        save_json(raw, {"results": results, "notes": notes, "complete": True, "fresh": fresh})
    if not args.from_json:
        fresh = rescore(results, fresh, args.quick, raw, notes)
    report = os.path.join(args.out, "ode_solvers.md")
    # the timings belong to a full run; the stages on saved results keep the existing report's
    overhead_md = saved_overhead(report) if (args.from_json or args.fresh or args.new_peers) else None
    overhead_md = overhead_md or overhead_table(repeats=5 if args.quick else 21)
    summary = write_report(results, notes, overhead_md, report, fresh)
    write_plots(results, args.out)
    print(overhead_md)
    for prob, proc, nfe, ratio, f_ratio in summary:
        print(f"{prob:16s} {proc:32s} NFE {nfe:3d}: best peer / best sdeflow = {ratio:.2f}, on fresh draws {f_ratio:.2f}")


if __name__ == "__main__":
    main()

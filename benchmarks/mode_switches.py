"""Draws that end in another mixture component: how they set the RMS at 5-8 evaluations.

On a mixture, a trajectory that passes near the boundary between two components can end in the
other one under a small error of the solver; its endpoint error is then the distance between the
components, and a few such draws decide the RMS over all of them. This benchmark counts them on many
fresh draws (default 5000, independent of the ODE benchmark's and of the tuning draws): for each
configuration the endpoint RMS and median error against a float64 reference solve, the number of
draws whose endpoint lies in another component than the reference's (the most probable component of
the data distribution at the endpoint) and the RMS of the others.

Configurations: hand grids of the samplers that lead the ODE benchmark's rows (on rectified flow
sdeflow's ``heun3`` and ``midpoint`` on the uniform grid are flow_matching's, to the digit), the
grids and coefficients fitted by ``benchmarks/tuning.py`` (read from docs/benchmarks/tuning.json),
and hand grids moved towards the noise by the resolution shift ``t -> s t / (1 + (s - 1) t)``.

    python benchmarks/mode_switches.py      # 64-D mixture, rectified flow, NFE 6 and 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PROCESSES, problems, sdeflow_denoiser  # noqa: E402
from tuning_rows import OUT, fit_draws  # noqa: E402

from sdeflow import grids, sample  # noqa: E402
from sdeflow.files import atomic_write, write_json  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402
from sdeflow.samplers import DPMSolver  # noqa: E402
from sdeflow.tuning import TunedGrid, steps_for  # noqa: E402

HAND = ["heun3", "midpoint", "unipc-bh2", "ipndm", "unipc-3"]
SHIFTED = ["unipc-bh2", "ipndm"]
SHIFTS = [1.3, 1.6, 2.0, 3.0]


def pick(options: list[str], name: str, what: str):
    found = [o for o in options if name.lower() in o.lower()]
    if len(found) != 1:
        raise SystemExit(f"{what} {name!r} matches {found or 'nothing'}; choose one of: {', '.join(options)}")
    return found[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problem", default="64-D mixture")
    p.add_argument("--process", default="rectified", help="a part of the process's name (DDPM, EDM, rectified)")
    p.add_argument("--nfe", nargs="+", type=int, default=[6, 8])
    p.add_argument("--draws", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1234, help="seed of the fresh draws (the tuning draws use 7 and 8)")
    args = p.parse_args(argv)
    if args.draws < 100:
        raise SystemExit(f"--draws must be >= 100, got {args.draws}")
    problem = next(q for q in problems() if q.name == pick([q.name for q in problems()], args.problem, "problem"))
    process = next(q for q in PROCESSES if q.name == pick([q.name for q in PROCESSES], args.process, "process"))
    sch, mix = process.schedule, problem.mixture
    den, t0 = sdeflow_denoiser(problem, process), grids.start_time(sch)
    start = time.time()
    x = fit_draws(problem, process, t0, args.draws, seed=args.seed)
    ref_ts = grids.reference_grid(torch.tensor([t0, 0.0], dtype=torch.float64), sch, 600)
    ref = sample(mix.denoiser(sch), DPMSolver(order=3, form="data"), ref_ts, x.double()).x
    home = mix.responsibilities(ref, sch, 0.0).argmax(1)
    print(f"{problem.name}, {process.name}: reference on {args.draws} draws, {time.time() - start:.0f} s", flush=True)
    with open(os.path.join(OUT, "tuning.json")) as f:
        stored = [r for r in json.load(f)["mixtures"] if r["problem"] == problem.name and r["process"] == process.name]

    rows = []

    def run(nfe, label, sampler, ts):
        out = sample(den, sampler, ts, x).x.double()
        err = (out - ref).flatten(1).norm(dim=1)
        away = mix.responsibilities(out, sch, 0.0).argmax(1) != home
        rest = err[~away]
        rows.append(dict(nfe=nfe, config=label, rms=float(err.pow(2).mean().sqrt()), median=float(err.median()),
                         switched=int(away.sum()), rms_rest=float(rest.pow(2).mean().sqrt()) if rest.numel() else 0.0,
                         switch_error=float(err[away].mean()) if bool(away.any()) else 0.0))
        r = rows[-1]
        print(f"  NFE {nfe} {label}: RMS {r['rms']:.3f}, median {r['median']:.3f}, {r['switched']} switched, "
              f"RMS of the rest {r['rms_rest']:.3f}", flush=True)

    uniform_like = "uniform" if process.time_input == "t" else "logsnr"
    for nfe in args.nfe:
        for name in HAND + [r["sampler"] for r in stored if r["nfe"] == nfe and r["sampler"] not in HAND]:
            sampler = SAMPLERS[name]()
            n = steps_for(sampler, sch, nfe)
            ts = GRIDS[uniform_like](n, sch)
            ts[0] = t0
            if sampler.prepare(sch, ts).nfe != nfe:
                continue
            run(nfe, f"{name}, {uniform_like} grid", sampler, ts)
            if name in SHIFTED and process.time_input == "t":
                for s in SHIFTS:
                    run(nfe, f"{name}, uniform grid shifted by {s:g}", sampler, grids.shift_grid(ts, s))
            for r in stored:
                if r["nfe"] == nfe and r["sampler"] == name:
                    run(nfe, f"{name}, tuned grid", sampler, torch.tensor(r["ts"], dtype=torch.float64))
                    fitted = TunedGrid(r.get("coef_ts", r["ts"]), name, r["used_nfe"], "stored", 0.0, shift=r["shift"])
                    run(nfe, f"{name} + coefficients ({r.get('coef_grid', 'tuned')} grid)", fitted.sampler_for(sampler),
                        fitted.grid())
    out = [f"# Draws that end in another component: {problem.name}, {process.name}", "",
           f"`python benchmarks/mode_switches.py --problem \"{problem.name}\" --process {args.process} --nfe "
           f"{' '.join(map(str, args.nfe))} --draws {args.draws}`: {args.draws} fresh draws (seed {args.seed}); endpoint "
           "error against a float64 reference solve; `switched`: draws whose endpoint's most probable component differs "
           "from the reference endpoint's; `RMS of the rest`: over the other draws. Tuned rows: the grids and "
           "coefficients stored by `benchmarks/tuning.py`.", "",
           "| NFE | configuration | RMS | median | switched | mean error of the switched | RMS of the rest |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['nfe']} | {r['config']} | {r['rms']:.3f} | {r['median']:.3f} | {r['switched']} | "
                   f"{r['switch_error']:.2f} | {r['rms_rest']:.3f} |")
    text = "\n".join(out) + "\n"
    tag = f"mode_switches_{problem.name.split()[0].lower()}_{args.process.lower()}"
    write_json(os.path.join(OUT, tag + ".json"), dict(problem=problem.name, process=process.name, draws=args.draws,
                                                      seed=args.seed, rows=rows))
    atomic_write(os.path.join(OUT, tag + ".md"), lambda tmp: open(tmp, "w").write(text))
    print(text)


if __name__ == "__main__":
    main()

"""Few-step students of the shipped 2-D models against their teacher at equal NFE.

For each toy and objective, ``sdeflow train --objective OBJ --teacher TOY`` distils the shipped model
(its weights are the start) and the student is sampled the way it was trained for (flow-map jumps,
consistency sampling, DDIM steps after progressive distillation, Euler steps after reflow) at NFE 1,
2, 4 and 8 (whether more steps help a flow map and a consistency model alike). The teacher is sampled with Euler and
with sdeflow's best ODE sampler at the same NFE. The
score is the sliced Wasserstein distance to fresh data (its floor, two data sets of the same size, is
reported). Writes docs/benchmarks/fewstep.{md,json}; the toys and objectives of an earlier run that
this one does not redo stay in the report.

    python benchmarks/fewstep.py [--toys moons eight-gaussians] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


from sdeflow.data import load as load_data
from sdeflow.files import atomic_write, write_json
from sdeflow.generation import gather, generate
from sdeflow.grids import uniform_grid
from sdeflow.metrics import sliced_wasserstein
from sdeflow.pretrained import load_model
from sdeflow.samplers import Euler
from sdeflow.training.config import TrainConfig
from sdeflow.training.students import sampling
from sdeflow.tuning import model_recommended, model_recommended_name

OBJECTIVES = ("reflow", "shortcut", "meanflow", "consistency", "progressive")
NFES = (1, 2, 4, 8)
N = 5000


def score(den, sampler, ts, data) -> float:
    x = gather(generate(den, sampler, ts, (2,), N, seed=7, batch_size=N), 1)
    return sliced_wasserstein(x, data[:N], n_projections=512)


def train(toy: str, objective: str, steps: int, folder: str) -> tuple[str, float]:
    out = os.path.join(folder, f"{toy}-{objective}")
    cmd = [sys.executable, "-m", "sdeflow", "train", "--data", toy, "--teacher", toy, "--objective", objective,
           "--out", out, "--steps", str(steps), "--batch-size", "512", "--lr", "1e-3", "--no-progress",
           "--sample-every", str(10 ** 9), "--pairs", "20000"]
    if objective == "progressive":
        cmd += ["--distill-steps", "4"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toys", nargs="+", default=["moons", "eight-gaussians"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--objectives", nargs="*", default=list(OBJECTIVES),
                    help="the students to train (default: all; none: measure the teacher's rows only)")
    ap.add_argument("--out", default="docs/benchmarks/fewstep")
    args = ap.parse_args()
    results = {}
    if os.path.exists(args.out + ".json"):  # keep what this run does not redo
        with open(args.out + ".json") as f:
            results = json.load(f)
    with tempfile.TemporaryDirectory() as folder:
        for toy in args.toys:
            data = load_data(toy, toy_size=4 * N, seed=11).x
            floor = sliced_wasserstein(data[N:2 * N], data[:N], n_projections=512)
            model = load_model(toy)
            teacher = model.denoiser
            kept = {o: r for o, r in results.get(toy, {}).items() if o in OBJECTIVES and o not in args.objectives}
            res = results[toy] = {"floor": floor, "teacher-euler": {}, "teacher-best": {}, "teacher-config": {}, **kept}
            for nfe in NFES:
                res["teacher-euler"][nfe] = score(teacher, Euler(), uniform_grid(nfe), data)
                res["teacher-best"][nfe] = score(teacher, *model_recommended(model, nfe), data)  # what sdeflow sample runs
                res["teacher-config"][nfe] = model_recommended_name(model, nfe)
            for objective in args.objectives:
                path, seconds = train(toy, objective, args.steps, folder)
                student = load_model(path)
                got = {}
                for nfe in NFES:
                    sampler, ts = sampling(TrainConfig.stored(student.meta), student.denoiser.schedule, nfe)
                    got[nfe] = score(student.denoiser, sampler, ts, data)
                res[objective] = {"sliced_w2": got, "train_seconds": seconds, "steps": args.steps}
                print(toy, objective, {k: round(v, 4) for k, v in got.items()}, f"{seconds:.0f} s", flush=True)
    results = json.loads(json.dumps(results, default=float))  # NFE keys as strings, as read back
    text = report(results)
    atomic_write(args.out + ".md", lambda tmp: open(tmp, "w").write(text))
    write_json(args.out + ".json", results)
    print(text)


def report(results: dict) -> str:
    nfes = sorted({int(k) for r in results.values() for k in r["teacher-euler"]})
    steps = sorted({r[o]["steps"] for r in results.values() for o in OBJECTIVES if o in r})
    lines = ["# Few-step students of the shipped 2-D models", "",
             f"Sliced W2 to {N} fresh data points (512 projections); students distilled from the shipped model for "
             f"{', '.join(map(str, steps))} steps (batch 512, lr 1e-3) on this CPU. Floor (two data sets): " +
             ", ".join(f"{t} {r['floor']:.3f}" for t, r in results.items()) + ".", "",
             "Command: `python benchmarks/fewstep.py`", "",
             "| toy | model | " + " | ".join(f"NFE {n}" for n in nfes) + " | training |", "|---|---|" + "---|" * (len(nfes) + 1)]

    def row(toy, what, values, sec=None):
        cells = [f"{values[str(n)]:.3f}" if str(n) in values else "-" for n in nfes]
        lines.append(f"| {toy} | {what} | " + " | ".join(cells) + f" | {'' if sec is None else f'{sec:.0f} s'} |")

    for toy, r in results.items():
        row(toy, "teacher, Euler", r["teacher-euler"])
        row(toy, "teacher, sdeflow default sampler", r["teacher-best"])
        for objective in OBJECTIVES:
            if objective in r:
                row(toy, objective, r[objective]["sliced_w2"], r[objective]["train_seconds"])
    lines += ["", "The teacher's default sampler is what `sdeflow sample` runs on it (`sdeflow.tuning.model_recommended`: the "
              "configuration shipped with the model for that budget): " + "; ".join(
                  f"{toy} " + ", ".join(f"NFE {n} {c}" for n, c in r["teacher-config"].items())
                  for toy, r in results.items() if "teacher-config" in r) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

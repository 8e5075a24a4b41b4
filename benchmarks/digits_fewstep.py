"""Few-step digits models against their teacher at equal NFE.

    python benchmarks/digits_fewstep.py --students reflow=runs/digits-reflow shortcut=runs/digits-shortcut ...

Each student (a run folder or a shipped name; ``label=spec``) is sampled the way it was trained for
(``sdeflow.training.students.sampling``: flow-map jumps, consistency sampling, Euler after reflow, DDIM
after progressive distillation) at NFE 1, 2 and 4; the teacher with Euler on the uniform grid and with
sdeflow's default sampler at the same NFE (what ``sdeflow sample`` runs on it: the configuration shipped
with the model for that budget, ``sdeflow.tuning.model_recommended``), and with Euler at larger NFE for reference. Scores as in
``digits_quality.py``: 1000 class-conditional samples (100 per class, per-sample seeds), accuracy and
Frechet distance of the shipped classifier's features against real digits (floor 1.20). The training
time is the checkpoint's ``train_seconds`` (wall clock on the CPU it was trained on).

Writes ``docs/benchmarks/digits_fewstep.{md,json}`` (the students of an earlier run of the same teacher
that this run does not measure stay in it) and, with ``--picture STUDENT``, ``docs/fewstep.png``:
one row per (model, NFE), the teacher's Euler steps above the student's, the same noise in every row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from digits_quality import N_PER_CLASS, fd, real_split  # noqa: E402

from sdeflow import data  # noqa: E402
from sdeflow.data.pictures import image_grid, save_png  # noqa: E402
from sdeflow.files import atomic_write, write_json  # noqa: E402
from sdeflow.generation import gather, generate  # noqa: E402
from sdeflow.grids import uniform_grid  # noqa: E402
from sdeflow.pretrained import load_model, load_network  # noqa: E402
from sdeflow.samplers import Euler  # noqa: E402
from sdeflow.training.config import TrainConfig  # noqa: E402
from sdeflow.training.students import sampling  # noqa: E402
from sdeflow.tuning import model_recommended, model_recommended_name  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs")
NFES = (1, 2, 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", nargs="+", default=[], metavar="LABEL=SPEC",
                   help="few-step models: a label and a run folder or shipped name")
    p.add_argument("--teacher", default="digits")
    p.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    p.add_argument("--teacher-nfe", nargs="*", type=int, default=[10, 20],
                   help="further NFE of the teacher's Euler for reference (default: 10 20)")
    p.add_argument("--picture", metavar="LABEL", help="draw the teacher's and this student's rows into docs/fewstep.png")
    p.add_argument("--name", default="digits_fewstep")
    args = p.parse_args(argv)
    students = dict(s.split("=", 1) for s in args.students)
    if args.picture and args.picture not in students:
        p.error(f"--picture {args.picture!r} is none of the students ({', '.join(students) or 'none given'})")

    clf, meta, _ = load_network("digits-classifier")
    digits = data.digits()
    _, half_b = real_split(digits.labels)
    with torch.no_grad():
        real = clf.features(digits.x)[half_b]
    labels = torch.arange(10 * N_PER_CLASS) % 10
    rows, pictures = [], {}

    def score(label, den, sampler, ts, shape, nfe, seconds=None, config=None):
        x = gather(generate(den, sampler, ts, shape, len(labels), labels=labels, batch_size=500), 1)
        with torch.no_grad():
            acc = float((clf(x).argmax(1) == labels).double().mean())
            dist = fd(clf.features(x), real)
        used = sampler.prepare(den.schedule, ts).nfe
        rows.append(dict(model=label, nfe=used, budget=nfe, accuracy=acc, fd=dist, train_seconds=seconds,
                         **({"config": config} if config else {})))
        pictures[label, nfe] = x[:10]
        print(f"{label:>32} NFE {used}: accuracy {acc:.3f}  FD {dist:7.2f}", flush=True)

    teacher = load_model(args.teacher)
    for nfe in sorted(set(args.nfe) | set(args.teacher_nfe)):
        score("teacher, Euler", teacher.denoiser, Euler(), uniform_grid(nfe), teacher.shape, nfe)
    for nfe in args.nfe:  # what sdeflow sample runs on the teacher: its shipped choice, else the table's
        score("teacher, sdeflow's default", teacher.denoiser, *model_recommended(teacher, nfe), teacher.shape, nfe,
              config=model_recommended_name(teacher, nfe))
    for label, spec in students.items():
        student = load_model(spec)
        for nfe in args.nfe:
            sampler, ts = sampling(TrainConfig.stored(student.meta), student.denoiser.schedule, nfe)
            score(label, student.denoiser, sampler, ts, student.shape, nfe, student.meta.get("train_seconds"))

    out = os.path.join(DOCS, "benchmarks", f"{args.name}.json")
    kept = {}
    if os.path.exists(out):  # the students of an earlier run that this one does not measure stay in the report
        with open(out) as f:
            earlier = json.load(f)
        if earlier.get("teacher") == args.teacher:
            kept = {k: v for k, v in earlier.get("students", {}).items() if k not in students}
            rows += [row for row in earlier["rows"] if row["model"] in kept]
    result = dict(rows=rows, teacher=args.teacher, students={**students, **kept}, kept=sorted(kept),
                  n_samples=len(labels), classifier_test_accuracy=meta["test_accuracy"])
    write_json(out, result)
    text = report(result)
    atomic_write(os.path.join(DOCS, "benchmarks", f"{args.name}.md"), lambda tmp: open(tmp, "w").write(text))
    print(text)
    if args.picture:
        order = [("teacher, Euler", n) for n in args.nfe] + [(args.picture, n) for n in args.nfe]
        grid = image_grid(torch.cat([pictures[k] for k in order]), nrow=10, pad=2, upscale=6)
        save_png(grid, os.path.join(DOCS, "fewstep.png"))


def report(r: dict) -> str:
    models = list(dict.fromkeys(row["model"] for row in r["rows"]))
    nfes = sorted({row["budget"] for row in r["rows"]})
    cell = {(row["model"], row["budget"]): row for row in r["rows"]}
    lines = ["# Few-step digits models", "",
             f"`python benchmarks/digits_fewstep.py`: {r['n_samples']} class-conditional samples per cell (100 per "
             "class, per-sample seeds) scored by the shipped digits classifier: accuracy / squared Frechet distance "
             "of its features to real digits (two real halves are 1.20 apart). Students sampled with their own "
             "sampler (`sdeflow sample --checkpoint` does the same); training time: wall clock on this 2-core CPU, "
             "from the teacher's weights, reflow's pair generation included unless the run found its pairs already made.", "",
             "| model | " + " | ".join(f"NFE {n}" for n in nfes) + " | training |", "|---|" + "---|" * (len(nfes) + 1)]
    for m in models:
        vals = [f"{cell[m, n]['accuracy']:.3f} / {cell[m, n]['fd']:.2f}" if (m, n) in cell else "" for n in nfes]
        sec = next((row["train_seconds"] for row in r["rows"] if row["model"] == m), None)
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {'' if sec is None else f'{sec / 60:.0f} min'} |")
    configs = [f"NFE {row['budget']}: {row['config']}" for row in r["rows"] if "config" in row]
    if configs:
        lines += ["", "sdeflow's default sampler (grid) at each budget: " + "; ".join(configs) + "."]
    if r.get("kept"):
        lines += ["", "Rows kept from an earlier run of this script, not measured in this one: " + ", ".join(r["kept"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

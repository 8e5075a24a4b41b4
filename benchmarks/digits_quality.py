"""Sample quality of the shipped digits model, per sampler and NFE.

    python benchmarks/digits_quality.py        # about 10 minutes on 2 CPU cores

For each sampler and NFE, 1000 class-conditional samples (100 per class, per-sample seeds) are
scored with the shipped digits classifier (``benchmarks/digits_classifier.py``):

- accuracy: the fraction classified as the class they were generated for;
- FD: the Frechet distance (squared, the FID convention) between the classifier's 64 penultimate
  features of the samples and of real digits (the half "B" of a seeded split of the 1797 digits).

The floors are the classifier's accuracy on its held-out real test digits and the FD between the
two real halves "A" and "B" (sample sizes 898 and 899: that is how far two real sets of this size
are apart). Results: ``docs/benchmarks/digits_quality.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdeflow.registry import GRIDS, SAMPLERS, steps_for_nfe  # noqa: E402
from sdeflow.files import atomic_write, write_json  # noqa: E402
from sdeflow.generation import gather, generate  # noqa: E402
from sdeflow.metrics import real_split, squared_frechet  # noqa: E402
from sdeflow.pretrained.scoring import DigitsScorer  # noqa: E402
from sdeflow.pretrained import load_model  # noqa: E402
from sdeflow.tuning import find_tuned, steps_for, tuned_paths  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")
SAMPLER_NAMES = ["euler", "heun", "dpm-solver++-2m", "dpm-solver++-3m", "unipc-bh2", "unipc-3", "ipndm",
                 "euler-maruyama", "sde-dpm-solver++-2m"]
NFES = [5, 10, 20, 50]
N_PER_CLASS = 100


#: The scoring lives in sdeflow (``sdeflow sample`` scores digits with it too); the benchmarks use these names.
Scorer, fd, real_split = DigitsScorer, squared_frechet, real_split


def main(argv=None):
    p = argparse.ArgumentParser(description="Accuracy and Frechet distance of the shipped digits model per sampler and NFE.")
    p.add_argument("--samplers", nargs="+", default=SAMPLER_NAMES)
    p.add_argument("--nfe", nargs="+", type=int, default=NFES)
    p.add_argument("--checkpoint", default="digits")
    p.add_argument("--grids", nargs="+", default=["auto"],
                   help="grids to compare (tuned: the model's grids from sdeflow tune, with fitted coefficients where "
                   "stored; tuned-grid: the grid alone) (default: auto)")
    p.add_argument("--name", default="digits_quality", help="report name under docs/benchmarks (default: digits_quality)")
    args = p.parse_args(argv)

    model = load_model(args.checkpoint)
    scorer = Scorer()
    labels = torch.arange(10 * N_PER_CLASS) % 10
    rows = []
    schedule = model.denoiser.schedule
    for name in args.samplers:
        for nfe in args.nfe:
            for grid in args.grids:
                sampler = SAMPLERS[name]()
                if grid in ("tuned", "tuned-grid"):
                    tuned = find_tuned(tuned_paths(model.path), name, nfe, steps_for(sampler, schedule, nfe))
                    if tuned.chosen_grid is not None:  # a pilot's choice of a hand grid, not a fitted one
                        raise ValueError(f"no grid fitted for {name} at NFE {nfe} (a choice of the {tuned.chosen_grid} "
                                         "grid is stored): fit one with sdeflow tune")
                    ts = tuned.grid()
                    if grid == "tuned":
                        sampler = tuned.sampler_for(sampler)  # with its fitted coefficients, where stored
                else:
                    ts = GRIDS[grid](steps_for_nfe(sampler, schedule, grid, nfe), schedule)
                used = sampler.prepare(schedule, ts).nfe
                start = time.perf_counter()
                x = gather(generate(model.denoiser, sampler, ts, model.shape, len(labels), labels=labels, batch_size=500), 1)
                seconds = time.perf_counter() - start
                acc, dist = scorer.score(x, labels)
                rows.append(dict(sampler=name, grid=grid, budget=nfe, nfe=used, accuracy=acc, fd=dist, seconds=seconds))
                print(f"{name:>22} ({grid}) NFE {used:3d}: accuracy {acc:.3f}  FD {dist:7.3f}  ({seconds:.1f} s)", flush=True)
    result = dict(rows=rows, fd_floor=scorer.floor, classifier_test_accuracy=scorer.test_accuracy,
                  n_samples=len(labels), n_real_b=scorer.n_real, model=args.checkpoint, grids=args.grids)
    os.makedirs(DOCS, exist_ok=True)
    write_json(os.path.join(DOCS, f"{args.name}.json"), result)
    atomic_write(os.path.join(DOCS, f"{args.name}.md"), lambda tmp: open(tmp, "w").write(report(result)))
    print(report(result))


def report(r: dict) -> str:
    nfes = sorted({row["budget"] for row in r["rows"]})
    samplers = list(dict.fromkeys((row["sampler"], row.get("grid", "auto")) for row in r["rows"]))
    cell = {(row["sampler"], row.get("grid", "auto"), row["budget"]): row for row in r["rows"]}
    grids = r.get("grids", [r.get("grid", "auto")])
    which = (f"sdeflow's `{grids[0]}` grid" if len(grids) == 1 else
             "the grids " + ", ".join(f"`{g}`" for g in grids) + " (`tuned`: fitted by `sdeflow tune`, stored beside the checkpoint, "
             "with the sampler's fitted coefficients where stored; `tuned-grid`: the same grid with the sampler's own)")
    out = ["# Sample quality of the shipped digits model", "",
           f"`python benchmarks/digits_quality.py`: {r['n_samples']} class-conditional samples per cell (100 per class, "
           f"per-sample seeds, {which}; a sampler whose steps do not fit the budget exactly uses the largest count within it, "
           "shown in brackets), scored by the shipped digits classifier. Accuracy: fraction "
           f"classified as the requested class (the classifier scores {r['classifier_test_accuracy']:.3f} on held-out "
           f"real digits). FD: squared Frechet distance between classifier features of the samples and of "
           f"{r['n_real_b']} real digits; two disjoint real halves are **{r['fd_floor']:.2f}** apart (the floor).", "",
           "| sampler (grid) | " + " | ".join(f"NFE {n}: acc / FD" for n in nfes) + " |",
           "|---|" + "---|" * len(nfes)]
    for s, g in samplers:
        vals = []
        for n in nfes:
            row = cell.get((s, g, n))
            used = "" if row is None or row["nfe"] == n else f" (NFE {row['nfe']})"
            vals.append("-" if row is None else f"{row['accuracy']:.3f} / {row['fd']:.2f}{used}")
        out.append(f"| {s} ({g}) | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()

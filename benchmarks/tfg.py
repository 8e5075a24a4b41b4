"""TFG guidance on an exact two-class problem: the share of class 0 against each component's strength.

The labelled 2-D ring with two classes (``sdeflow.analytic.ring_2d(n_classes=2)``): its exact
unconditional denoiser is guided by TFG with the exact clean-data classifier ``log p(c | x0)`` as the
predictor, towards class 0, 4000 draws, DDIM on 20 logSNR steps (VP linear). The score is the mean
exact posterior probability of class 0 of the samples (0.5 unguided): variance guidance ``rho``, mean
guidance ``mu`` (4 iterations), smoothing ``gamma`` (8 probes), and recurrence (``Recurrent`` around
DDIM with eta 1, each step taken 3 times).

    python benchmarks/tfg.py      # under a minute on 2 CPU cores

Writes docs/benchmarks/tfg.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_report  # noqa: E402

from sdeflow import GeneratorNoise, grids, sample, schedules  # noqa: E402
from sdeflow.analytic import ring_2d  # noqa: E402
from sdeflow.guidance.tfg import TFG  # noqa: E402
from sdeflow.samplers import DDIM  # noqa: E402
from sdeflow.samplers.recurrent import Recurrent  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "tfg.md")


def main() -> None:
    torch.set_default_dtype(torch.float64)
    mix = ring_2d(n_classes=2)
    sch = schedules.VPLinear()
    den, clf = mix.denoiser(sch), mix.classifier(sch)
    n = 4000
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    cond = {"label": torch.zeros(n, dtype=torch.long)}
    ts = grids.logsnr_grid(20, sch)

    def predictor(x0, label=None):
        return clf(x0, 0.0, label)

    def share(out):
        return float(clf(out, 0.0, cond["label"]).exp().mean())

    cases = [("unguided", None, DDIM())]
    cases += [(f"rho {r:g}", dict(rho=r), DDIM()) for r in (0.5, 1, 2, 4)]
    cases += [(f"mu {m:g}, 4 iterations", dict(rho=0, mu=m, iterations=4), DDIM()) for m in (0.05, 0.2)]
    cases += [("rho 1, gamma 0.5 (8 probes)", dict(rho=1, gamma=0.5, probes=8), DDIM()),
              ("rho 1, DDIM eta 1", dict(rho=1), DDIM(eta=1.0)),
              ("rho 1, DDIM eta 1, recurrence 3", dict(rho=1), Recurrent(DDIM(eta=1.0), 3))]
    rows = ["| TFG setting | sampler NFE | share of class 0 |", "|---|---:|---:|"]
    for label, kw, sampler in cases:
        model = den if kw is None else TFG(den, predictor, **kw)
        run = sample(model, sampler, ts, x, cond=None if kw is None else cond,
                     noise=GeneratorNoise(torch.Generator().manual_seed(1)))  # the stochastic rows: seeded
        rows.append(f"| {label} | {run.nfe} | {share(run.x):.3f} |")
        print(rows[-1], flush=True)
    write_report(OUT, "TFG on the exact two-class ring", "`python benchmarks/tfg.py`; see its docstring.", rows)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()

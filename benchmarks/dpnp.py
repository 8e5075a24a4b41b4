"""DPnP's samples against the exact posterior of a Gaussian prior, as its chain is refined.

``analytic.linear_gaussian_problem(6, 3, 0.1)``: a 6-D Gaussian prior (random rotation, variances 0.2 to
1.5) observed through a random 3x6 matrix with noise 0.1, with its exact posterior. DPnP (``sdeflow.inverse.dpnp``)
with 4000 chains in float64, exact prior denoiser (VP linear), annealed over ``levels`` noise levels
with ``denoise_steps`` DDPM steps per denoising draw: the error of the sample mean (beside the
Monte Carlo floor ``sqrt(tr C / n)``) and the relative Frobenius error of the sample covariance.

    python benchmarks/dpnp.py      # under a minute on 2 CPU cores

Writes docs/benchmarks/dpnp.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_report  # noqa: E402

from sdeflow import GeneratorNoise, analytic, schedules  # noqa: E402
from sdeflow.inverse import Matrix  # noqa: E402
from sdeflow.inverse.dpnp import dpnp  # noqa: E402
from sdeflow.inverse.methods import default_grid  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "dpnp.md")
D, M, NOISE, N = 6, 3, 0.1, 4000


def main() -> None:
    prior, A, y, post = analytic.linear_gaussian_problem(D, M, NOISE, seed=0)
    op = Matrix(A)
    mean, cov = post.mean(), post.covariance()
    sch = schedules.VPLinear()
    den = prior.denoiser(sch)
    floor = math.sqrt(float(torch.trace(cov)) / N)
    rows = ["| levels | DDPM steps per draw | NFE per chain | mean error | covariance error |", "|---:|---:|---:|---:|---:|"]
    for levels, steps in ((10, 20), (10, 50), (40, 20), (40, 50), (80, 50)):
        sol = dpnp(den, op, y, NOISE, default_grid(levels, sch, NOISE), N, denoise_steps=steps, dtype=torch.float64,
                   noise=GeneratorNoise(torch.Generator().manual_seed(1)))
        err_mean = float((sol.x.mean(0) - mean).norm())
        err_cov = float((torch.cov(sol.x.T) - cov).norm() / cov.norm())
        rows.append(f"| {levels} | {steps} | {sol.nfe} | {err_mean:.3f} | {100 * err_cov:.1f}% |")
        print(rows[-1], flush=True)
    write_report(OUT, "DPnP against an exact Gaussian posterior", "`python benchmarks/dpnp.py`; see its docstring. "
                 f"Monte Carlo floor of the mean error with {N} samples: {floor:.3f}.", rows)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()

"""The two ends of the probability-flow likelihood, measured against exact densities.

1. The prior at ``t_max = 1`` of VP linear, where ``alpha = 6.7e-3`` of the data remain: the error of
   ``log p_{t_min}`` (exact field, dopri5 at tolerance 1e-8) with the centred prior ``N(0, sigma^2)``,
   with ``data_std`` only, and with ``data_mean`` and ``data_std``.
2. The start at ``t_min`` (noise level 1e-3): ``log p_{t_min}(x)`` against the exact ``log p_0(x)``, and the
   estimate ``to_data=True`` (the heat-equation step, computed here from the exact density at ``t_min``,
   so that only the step itself is measured), on 64-D mixtures whose covariances have condition number
   10 and 300.

    python benchmarks/likelihood_ends.py        # about a minute on 2 CPU cores

Writes docs/benchmarks/likelihood_ends.md.
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sdeflow import analytic, schedules  # noqa: E402
from sdeflow.files import atomic_write  # noqa: E402
from sdeflow.likelihood import log_likelihood  # noqa: E402
from sdeflow.likelihood import default_t_min, heat_correction  # noqa: E402
from sdeflow.registry import PROBLEMS  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "likelihood_ends.md")


def priors() -> list[str]:
    rows = ["| problem | prior at t = 1 | mean abs error of log p_tmin (nats) |", "|---|---|---:|"]
    sch = schedules.VPLinear()
    for name in ("ring-2d", "mixture-64d"):
        mix, _ = PROBLEMS[name]()
        x = mix.sample(64, torch.Generator().manual_seed(1))
        mean, std = mix.mean().to(torch.float64), float(torch.diagonal(mix.covariance()).mean().sqrt())
        for label, kw in (("N(0, sigma^2)", {}), ("data_std", dict(data_std=std)),
                          ("data_mean and data_std", dict(data_std=std, data_mean=mean))):
            r = log_likelihood(mix.denoiser(sch), x, rtol=1e-8, atol=1e-8, **kw)
            err = float((r.log_prob - mix.log_prob_t(x, sch, r.t_min)).abs().mean())
            rows.append(f"| {name} | {label} | {err:.2e} |")
            print(rows[-1], flush=True)
    return rows


def starts() -> list[str]:
    rows = ["| 64-D mixture, condition number | log p_tmin(x) vs log p_0(x): mean / max | to_data: mean / max |",
            "|---:|---:|---:|"]
    sch, d = schedules.VPLinear(), 64
    t = default_t_min(sch)
    for cond in (10.0, 300.0):
        base = analytic.random_mixture(d, 4, seed=3)
        var = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64) * 0.5
        mix = analytic.GaussianMixture(base.weights, base.means, var.expand(4, d).clone())
        x = mix.sample(256, torch.Generator().manual_seed(0))
        z = float(sch.alpha(t)) * x
        plain = mix.log_prob_t(x, sch, t)
        corrected = mix.log_prob_t(z, sch, t) + heat_correction(mix.denoiser(sch), z, t)
        exact = mix.log_prob(x)
        e0, e1 = (plain - exact).abs(), (corrected - exact).abs()
        rows.append(f"| {cond:g} | {float(e0.mean()):.2e} / {float(e0.max()):.2e} | {float(e1.mean()):.2e} / {float(e1.max()):.2e} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    text = ["# The ends of the probability-flow likelihood", "",
            "`python benchmarks/likelihood_ends.py`; VP linear, exact fields; see the script's docstring.", "",
            "## The prior at t = 1 (alpha = 6.7e-3)", "", *priors(), "",
            "## The start at t_min (noise level 1e-3): log p_tmin against log p_0", "", *starts(), ""]
    atomic_write(OUT, lambda tmp: open(tmp, "w").write("\n".join(text)))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

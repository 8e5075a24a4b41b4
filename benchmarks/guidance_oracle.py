"""What guidance samples, against the tilted target, on the exact 1-D two-class mixture.

    python benchmarks/guidance_oracle.py       # a few seconds; writes docs/guidance_oracle.png and prints the table

Data: ``N(-1.5, 0.5^2)`` (class 0) and ``N(1.5, 0.5^2)`` (class 1), equally likely; class 1 at
``w = 2`` on the VP-linear schedule, 20000 samples from exact noise, with the exact fields. The
tilted target ``p(x | c)^w p(x)^(1 - w)`` is computed by quadrature. CFG through the
probability-flow ODE, CFG through the reverse SDE (DDPM), and predictor-corrector guidance (a DDIM
step then ``k`` Langevin steps on the guided score, which is the score of the tilted noised marginal
``p_t(x | c)^w p_t(x)^(1 - w)``) with k = 3 and 20.
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdeflow import grids, guidance, samplers  # noqa: E402
from sdeflow.analytic import two_classes_1d  # noqa: E402
from sdeflow.noise import GeneratorNoise  # noqa: E402
from sdeflow.sampling import sample  # noqa: E402
from sdeflow.schedules import VPLinear  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def main():
    mix, sch, n, w = two_classes_1d(), VPLinear(), 20000, 2.0
    x = torch.linspace(-4, 5, 90001, dtype=torch.float64)[:, None]
    dx = float(x[1] - x[0])
    logq = w * mix.log_prob(x, 1) + (1 - w) * mix.log_prob(x)
    tilted = torch.softmax(logq, 0) / dx
    mean = float((tilted * x[:, 0]).sum() * dx)
    std = math.sqrt(float((tilted * (x[:, 0] - mean) ** 2).sum() * dx))
    g = guidance.Guided(mix.denoiser(sch), w)
    lab = torch.ones(n, dtype=torch.long)
    runs = {"CFG, probability-flow ODE (DPM-Solver++ 2M, 60 steps)": samplers.DPMSolverPP(order=2),
            "CFG, reverse SDE (DDPM, 200 steps)": samplers.DDPM(),
            "PC guidance, 3 corrector steps (60 steps)": samplers.PredictorCorrector(samplers.DDIM(), snr=0.05, n_steps=3),
            "PC guidance, 20 corrector steps (60 steps)": samplers.PredictorCorrector(samplers.DDIM(), snr=0.05, n_steps=20)}
    out = {}
    print(f"{'tilted target p(x|c)^2 p(x)^-1':<52} mean {mean:.3f}  std {std:.3f}")
    for name, sampler in runs.items():
        gen = torch.Generator().manual_seed(0)
        x0, _ = mix.sample_t(n, sch, 1.0, gen)
        steps = 200 if "DDPM" in name else 60
        y = sample(g, sampler, grids.logsnr_grid(steps, sch), x0, cond={"label": lab}, noise=GeneratorNoise(gen)).x[:, 0]
        out[name] = y
        print(f"{name:<52} mean {float(y.mean()):.3f}  std {float(y.std()):.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    ax.plot(x[:, 0], mix.log_prob(x, 1).exp(), color="0.6", ls="--", label="p(x | c)  (w = 1)")
    ax.plot(x[:, 0], tilted, color="k", lw=2, label="tilted target p(x|c)^2 / p(x)")
    for (name, y), color in zip(out.items(), ["tab:red", "tab:orange", "tab:cyan", "tab:blue"]):
        ax.hist(y.numpy(), bins=120, range=(-1, 4), density=True, histtype="step", color=color, lw=1.3,
                label=f"{name.split(' (')[0]}: {float(y.mean()):.2f} / {float(y.std()):.2f}")
    ax.set_xlim(-0.5, 3.5)
    ax.set_xlabel("x (class 1 of N(-1.5, 0.25) + N(1.5, 0.25)), w = 2;  legend: mean / std")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = os.path.join(DOCS, "guidance_oracle.png")
    from sdeflow.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

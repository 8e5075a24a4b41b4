"""What guidance samples, against the tilted target, on the exact 1-D two-class mixture.

    python benchmarks/guidance_oracle.py       # a minute; writes docs/guidance_oracle.png and prints two tables

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


def modes(k_values=(3, 20, 100), n: int = 20000):
    """Between separated modes: class 1 has two modes 3 apart (-1.5 and +1.5, std 0.2, equally likely);
    class 0 has a mode at +2 and one at -5. The tilted target's weight of class 1's right mode (quadrature)
    against the fraction of samples there, and the right mode's mean and std, at w = 2 on VP linear, 60
    steps: Langevin corrector steps equilibrate within a mode, but the mass between the modes is set by
    the noised marginals at high noise and moves away from the target as the corrector steps grow."""
    mix = two_modes_per_class()
    sch, w = VPLinear(), 2.0
    x = torch.linspace(-9, 7, 160001, dtype=torch.float64)[:, None]
    dx = float(x[1] - x[0])
    tilted = torch.softmax(w * mix.log_prob(x, 1) + (1 - w) * mix.log_prob(x), 0) / dx
    right = x[:, 0] > 0
    weight = float(tilted[right].sum() * dx)
    m = float((tilted[right] * x[right, 0]).sum() / tilted[right].sum())
    sd = math.sqrt(float((tilted[right] * (x[right, 0] - m) ** 2).sum() / tilted[right].sum()))
    print(f"\n{'tilted target (quadrature)':<44} right-mode weight {weight:.3f}  its mean {m:.3f}  std {sd:.3f}")
    g = guidance.Guided(mix.denoiser(sch), w)
    lab = torch.ones(n, dtype=torch.long)
    runs = {"CFG, probability-flow ODE (DPM-Solver++ 2M)": samplers.DPMSolverPP(order=2)}
    runs.update({f"PC guidance, {k} corrector steps": samplers.PredictorCorrector(samplers.DDIM(), snr=0.05, n_steps=k)
                 for k in k_values})
    for name, sampler in runs.items():
        gen = torch.Generator().manual_seed(0)
        x0, _ = mix.sample_t(n, sch, 1.0, gen)
        y = sample(g, sampler, grids.logsnr_grid(60, sch), x0, cond={"label": lab}, noise=GeneratorNoise(gen)).x[:, 0]
        r = float((y > 0).double().mean())
        inside = y[y > 0]
        print(f"{name:<44} right-mode weight {r:.3f} (+-{math.sqrt(r * (1 - r) / n):.3f})  its mean "
              f"{float(inside.mean()):.3f}  std {float(inside.std()):.3f}")


def two_modes_per_class():
    """Class 1: N(-1.5, 0.2^2) and N(1.5, 0.2^2); class 0: N(2, 0.2^2) and N(-5, 0.2^2); all equally likely."""
    from sdeflow.analytic import GaussianMixture

    return GaussianMixture(torch.ones(4), torch.tensor([[-1.5], [1.5], [2.0], [-5.0]]), torch.full((4, 1), 0.04),
                           classes=[1, 1, 0, 0])


if __name__ == "__main__":
    main()
    modes()

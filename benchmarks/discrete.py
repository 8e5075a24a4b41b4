"""Token samplers against exact token laws, and the bias of categorical draws.

    python benchmarks/discrete.py            # about 10 minutes on one CPU core

Part 1, exact output laws: random mixtures of product categoricals (``L = 4`` positions, ``V = 4`` tokens,
3 components; seeds 0-4), whose clean-token posterior is exact (``ProductMixture``). For each sampler and
number of steps the output law is computed exactly over every partial state (``output_law``) and its total
variation (TV) to the data law reported, the median over the seeds:

- sdeflow's ancestral step (the exact one-step reverse kernel; MDLM's sampler is this step), tau-leaping,
  and the first-hitting sampler (its law is the data's at NFE = L: one evaluation per token);
- flow_matching's ``MixtureDiscreteEulerSolver`` rule (``dfm_euler``; tests/test_discrete.py shows its draws
  follow this law).

Part 2, categorical draws: the exact rate at which a token of probability ``p`` beside one of ``p_max`` is
drawn, relative to ``p``, over every uniform the generator returns (``exact_rates``): float64 and float32
inverse CDF, and the float32 Gumbel race (with the closed form ``x / (e^x - 1)``, ``x = p_max / (p 2^24)``).

Results: ``docs/benchmarks/discrete.{md,json}``.
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import save_json, write_report  # noqa: E402
from sdeflow.discrete import (Masked, ProductMixture, Uniform, euler_probs, exact_rates, float32_race_bias,  # noqa: E402
                              leap_probs, output_law, step_probs)

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")
STEPS = (2, 4, 8, 16, 32)
SEEDS = range(5)
L, V = 4, 4


def tv(law: dict, mix: ProductMixture) -> float:
    seqs = [tuple(s) for s in mix.sequences().tolist()]
    return 0.5 * sum(abs(law.get(s, 0.0) - float(p)) for s, p in zip(seqs, mix.law()))


def first_hitting_law(mix: ProductMixture, process: Masked) -> dict:
    """The first-hitting sampler's exact law: unmask a uniformly chosen position from the model, ``L`` times."""
    law = {tuple([process.mask] * L): 1.0}
    for _ in range(L):
        new: dict = {}
        for state, w in law.items():
            x = torch.tensor([state])
            probs = mix.posterior(x, process, 0.5)[0]
            masked = [i for i, v in enumerate(state) if v == process.mask]
            for i in masked:
                for v in range(V):
                    s = list(state)
                    s[i] = v
                    key = tuple(s)
                    new[key] = new.get(key, 0.0) + w * float(probs[i, v]) / len(masked)
        law = new
    return law


def main():
    torch.set_num_threads(1)
    rows, results = [], []
    for kind, process in (("masked", Masked(V)), ("uniform", Uniform(V))):
        samplers = {"sdeflow ancestral (= MDLM)": step_probs, "sdeflow tau-leaping": leap_probs,
                    "flow_matching Euler": euler_probs}
        for name, step in samplers.items():
            curve = {}
            for n in STEPS:
                vals = []
                for seed in SEEDS:
                    mix = ProductMixture.random(L, V, components=3, seed=seed)
                    vals.append(tv(output_law(process, mix.denoiser(process), torch.linspace(1, 0, n + 1), L, step=step), mix))
                curve[n] = statistics.median(vals)
            results.append({"process": kind, "sampler": name, "tv_by_steps": curve})
            rows.append(f"| {kind} | {name} | " + " | ".join(f"{curve[n]:.4f}" for n in STEPS) + " |")
            print(rows[-1], flush=True)
        if kind == "masked":
            vals = []
            for seed in SEEDS:
                mix = ProductMixture.random(L, V, components=3, seed=seed)
                vals.append(tv(first_hitting_law(mix, process), mix))
            results.append({"process": kind, "sampler": "sdeflow first-hitting", "tv_at_nfe_L": max(vals)})
            rows.append(f"| masked | sdeflow first-hitting (NFE = L = {L}) | {max(vals):.1e} (largest over the seeds) | | | | |")
            print(rows[-1], flush=True)
    bias_rows = []
    for ratio in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
        p = torch.tensor([1.0, ratio], dtype=torch.float64)
        p = p / p.sum()
        rel = {
            "float64 inverse CDF": float(exact_rates(p)[1] / p[1]),
            "float32 inverse CDF": float(exact_rates(p, dtype=torch.float32)[1] / p[1]),
            "float32 Gumbel race": float(exact_rates(p, "gumbel", torch.float32)[1] / p[1]),
        }
        closed = float32_race_bias(float(p[1]), float(p[0]))
        results.append({"ratio": ratio, **rel, "closed form": closed})
        bias_rows.append(f"| {ratio:.0e} | " + " | ".join(f"{v:.6f}" for v in rel.values()) + f" | {closed:.6f} |")
        print(bias_rows[-1], flush=True)
    head = ["## Exact TV to the data law against grid steps (median over 5 mixtures, L = 4, V = 4)", "",
            "| process | sampler | " + " | ".join(f"{n} steps" for n in STEPS) + " |",
            "|---|---|" + "---|" * len(STEPS)]
    bias = ["## Rate of a rare token relative to its probability (exact over every uniform)", "",
            "| p / p_max | float64 inverse CDF (sdeflow's default) | float32 inverse CDF | float32 Gumbel race | "
            "x / (e^x - 1) |", "|---|---|---|---|---|"]
    intro = ("Written by `python benchmarks/discrete.py`. With caching, an ancestral run's NFE is the number of "
             "steps at which some token changed, at most the steps; the Euler and tau-leaping rules evaluate "
             "every step; the first-hitting sampler takes exactly L evaluations.")
    save_json(os.path.join(DOCS, "discrete.json"), results)
    write_report(os.path.join(DOCS, "discrete.md"), "Token samplers against exact laws", intro, head + rows,
                 bias + bias_rows)


if __name__ == "__main__":
    main()

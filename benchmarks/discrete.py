"""Token samplers against exact token laws and against the peers, and the bias of categorical draws.

    python benchmarks/discrete.py            # about an hour on one CPU core

Part 1, exact output laws: random mixtures of product categoricals (``L = 4`` positions, ``V = 4`` tokens,
3 components; seeds 0-4), whose clean-token posterior is exact (``ProductMixture``). Each sampler's output law
is computed exactly over every partial state (``output_law``, ``hitting_law``) and its total variation (TV)
to the data law reported, the median over the seeds, against the evaluation budget:

- the peers: flow_matching's ``MixtureDiscreteEulerSolver`` rule (one evaluation per step; its draws follow
  this law, ``tests/test_discrete.py``) and MDLM's ancestral sampler with its caching (a step at which no
  token changed reuses the model: with ``n`` steps a sequence takes ``1 + sum_j (1 - (1 - d alpha_j)^L)``
  evaluations in expectation, and it gets the most steps whose expected evaluations fit the budget);
- sdeflow's first-hitting sampler with a budget (blocks of equal size, the larger last; exact at NFE = L),
  ReMDM remasking (``eta`` 0.1 and 0.5) and, on the uniform process, ancestral steps, tau-leaping and the
  Euler step with its corrector (one evaluation per step).

Part 2, a law too large to enumerate: mixtures of 8 product categoricals over ``L = 16`` positions of ``V = 8``
tokens (seeds 0-1), 100 000 draws per sampler; the error is an unbiased estimate of the chi-square divergence of
the two-position marginals (``ProductMixture.pair_chi_square``, averaged over the 120 pairs; 0 in expectation
for exact draws). The peers run as their code does: flow_matching's own solver (``torch.multinomial`` in
float32) and MDLM's ancestral step with its float32 Gumbel draws (at the steps whose expected evaluations fit
the budget).

Part 3, categorical draws: the exact rate at which a token of probability ``p`` beside one of ``p_max`` is
drawn, relative to ``p``, over every uniform the generator returns (``exact_rates``): float64 and float32
inverse CDF, and the float32 Gumbel race (with the closed form ``x / (e^x - 1)``, ``x = p_max / (p 2^24)``).
Every sdeflow sampler draws through ``draw`` (float64 inverse CDF by default).

Results: ``docs/benchmarks/discrete.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import save_json, write_report  # noqa: E402
from sdeflow.discrete import (Masked, ProductMixture, Uniform, all_noise, euler_probs, exact_rates,  # noqa: E402
                              float32_race_bias, hitting_law, leap_probs, output_law, remask_probs, sample_tokens,
                              step_probs)

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")
SEEDS = range(5)
L, V = 4, 4


def tv(law: dict, mix: ProductMixture) -> float:
    seqs = [tuple(s) for s in mix.sequences().tolist()]
    return 0.5 * sum(abs(law.get(s, 0.0) - float(p)) for s, p in zip(seqs, mix.law()))


def cached_nfe(process, steps: int, length: int) -> float:
    """Expected evaluations of a sequence under MDLM's caching on ``steps`` uniform steps (exact posterior)."""
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    d = process.schedule.alpha(ts[1:]) - process.schedule.alpha(ts[:-1])
    return 1.0 + float((1.0 - (1.0 - d[:-1]) ** length).sum())


def cached_steps(process, budget: int, length: int) -> int:
    """The most steps whose expected evaluations under caching fit ``budget``."""
    n = budget
    while cached_nfe(process, n + 1, length) <= budget + 1e-12:
        n += 1
    return n


class FlowMatchingPeer:
    """flow_matching's own ``MixtureDiscreteEulerSolver`` on the exact posterior (its time: 1 - sdeflow's)."""

    def __init__(self, mix, process):
        from flow_matching.path import MixtureDiscreteProbPath
        from flow_matching.path.scheduler import PolynomialConvexScheduler
        from flow_matching.solver import MixtureDiscreteEulerSolver
        from flow_matching.utils import ModelWrapper

        oracle, states, vocab = mix.denoiser(process), process.states, process.vocab

        class Posterior(ModelWrapper):
            def forward(self, x, t, **extras):
                return torch.nn.functional.pad(oracle(x, 1.0 - t[0].double()), (0, states - vocab)).float()

        self.solver = MixtureDiscreteEulerSolver(model=Posterior(None), path=MixtureDiscreteProbPath(
            PolynomialConvexScheduler(1.0)), vocabulary_size=states)
        self.process = process

    def __call__(self, n: int, length: int, steps: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        x0 = all_noise(self.process, n, length, torch.Generator().manual_seed(seed))
        return self.solver.sample(x_init=x0, step_size=None, time_grid=torch.linspace(0.0, 1.0, steps + 1))


def part_one():
    rows, results = [], []
    budgets = (1, 2, 3, 4)
    masked, uniform = Masked(V), Uniform(V)
    ancestral_steps = {b: cached_steps(masked, b, L) for b in budgets}

    def grid(b):
        return torch.linspace(1, 0, b + 1)

    runs = {
        "flow_matching Euler (peer)": lambda post, b: output_law(masked, post, grid(b), L, step=euler_probs),
        "MDLM ancestral, cached (peer)": lambda post, b: output_law(masked, post, grid(ancestral_steps[b]), L),
        "sdeflow first-hitting": lambda post, b: hitting_law(masked, post, L, b),
        "sdeflow remask eta 0.1": lambda post, b: output_law(masked, post, grid(b), L, step=remask_probs(0.1)),
        "sdeflow remask eta 0.5": lambda post, b: output_law(masked, post, grid(b), L, step=remask_probs(0.5)),
    }
    exact_curves("masked", masked, runs, budgets, rows, results)
    rows.insert(-1, "| masked | MDLM's steps at that budget | " + " | ".join(str(ancestral_steps[b]) for b in budgets) + " |")
    steps = {"flow_matching Euler (peer)": euler_probs, "D3PM/MDLM ancestral (peer)": step_probs,
             "sdeflow tau-leaping": leap_probs, "sdeflow Euler + corrector 1": lambda *a: euler_probs(*a, corrector=1.0),
             "sdeflow Euler + corrector 3": lambda *a: euler_probs(*a, corrector=3.0)}
    runs = {name: (lambda post, n, step=step: output_law(uniform, post, grid(n), L, step=step)) for name, step in steps.items()}
    rows.append("")
    exact_curves("uniform", uniform, runs, (2, 4, 8, 16, 32), rows, results)
    return rows, results


def exact_curves(kind: str, process, runs: dict, budgets, rows: list, results: list) -> None:
    """Each run's exact TV to the data at each budget, the median over the seeds, as table rows (and the ratio
    row of the best peer over sdeflow's best)."""
    rows += table_head(kind, budgets)
    curves = {}
    for name, run in runs.items():
        curve = {}
        for b in budgets:
            vals = []
            for seed in SEEDS:
                mix = ProductMixture.random(L, V, components=3, seed=seed)
                vals.append(tv(run(mix.denoiser(process), b), mix))
            curve[b] = statistics.median(vals)
        curves[name] = curve
        results.append({"part": 1, "process": kind, "sampler": name, "tv_by_nfe": curve})
        rows.append(f"| {kind} | {name} | " + " | ".join(f"{curve[b]:.4f}" for b in budgets) + " |")
        print(rows[-1], flush=True)
    rows.append(ratio_row(kind, curves, budgets))


def table_head(kind: str, budgets) -> list[str]:
    return [f"| {kind} | sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
            "|---|---|" + "---|" * len(budgets)]


def ratio_row(kind: str, curves: dict, budgets, noise: float = 1e-12) -> str:
    """Best peer's error over sdeflow's best (sdeflow's ancestral step is the peers' MDLM/D3PM step); where
    sdeflow's best is within the estimate's ``noise``, that is said instead."""
    cells = []
    for b in budgets:
        peer = min(c[b] for n, c in curves.items() if "(peer)" in n)
        own = min(c[b] for c in curves.values())
        cells.append(("exact" if noise <= 1e-12 else f"sdeflow within noise (peer {peer / noise:.1f}x noise)")
                     if own < noise else f"{peer / own:.2f}x")
    return f"| {kind} | best peer / best sdeflow | " + " | ".join(cells) + " |"


def part_two(n_draws: int = 100_000, chunk: int = 10_000):
    length, vocab, seeds = 16, 8, (0, 1)
    rows, results = [], []
    for kind, process in (("masked", Masked(vocab)), ("uniform", Uniform(vocab))):
        budgets = (4, 8, 16) if kind == "masked" else (4, 8, 16, 32)
        rows += ([""] if rows else []) + table_head(kind, budgets)
        curves: dict = {}
        for seed in seeds:
            mix = ProductMixture.random(length, vocab, components=8, seed=seed)
            post = mix.denoiser(process)
            peer = FlowMatchingPeer(mix, process)

            def run(sampler, b, **options):
                xs = []
                for c in range(n_draws // chunk):
                    g = torch.Generator().manual_seed(1000 * seed + c)
                    xs.append(sample_tokens(post, process, sampler, b, chunk, length, generator=g, **options).x)
                return torch.cat(xs)

            samplers = {"flow_matching Euler solver (peer)": lambda b: torch.cat(
                [peer(chunk, length, b, 1000 * seed + c) for c in range(n_draws // chunk)])}
            if kind == "masked":
                samplers.update({
                    "MDLM ancestral, float32 Gumbel, cached (peer)": lambda b: run(
                        "ancestral", cached_steps(process, b, length), method="gumbel", dtype=torch.float32),
                    "sdeflow ancestral, same steps": lambda b: run("ancestral", cached_steps(process, b, length)),
                    "sdeflow first-hitting": lambda b: run("first-hitting", b),
                    "sdeflow remask eta 0.1": lambda b: run("remask", b, eta=0.1),
                })
            else:
                samplers.update({
                    "D3PM/MDLM ancestral (peer)": lambda b: run("ancestral", b, method="gumbel", dtype=torch.float32),
                    "sdeflow ancestral": lambda b: run("ancestral", b),
                    "sdeflow tau-leaping": lambda b: run("tau-leaping", b),
                    "sdeflow Euler + corrector 1": lambda b: run("dfm-corrector", b),
                })
            floor = mix.pair_chi_square(mix.sample(n_draws, torch.Generator().manual_seed(99)))
            curves.setdefault("exact draws of the data (the estimate's noise)", {}).setdefault("all", []).append(floor)
            for name, fn in samplers.items():
                for b in budgets:
                    curves.setdefault(name, {}).setdefault(b, []).append(mix.pair_chi_square(fn(b)))
                print(kind, seed, name, {b: round(statistics.mean(v), 5) for b, v in curves[name].items()}, flush=True)
        mean = {name: {b: statistics.mean(v) for b, v in c.items()} for name, c in curves.items()}
        noise = mean.pop("exact draws of the data (the estimate's noise)")["all"]
        for name, c in mean.items():
            results.append({"part": 2, "process": kind, "sampler": name, "pair_chi2_by_nfe": c})
            rows.append(f"| {kind} | {name} | " + " | ".join(f"{c[b]:.5f}" for b in budgets) + " |")
        rows.append(f"| {kind} | exact draws of the data | {noise:.5f} (the estimate's noise) |" + " |" * (len(budgets) - 1))
        rows.append(ratio_row(kind, mean, budgets, noise=abs(noise)))
        results.append({"part": 2, "process": kind, "exact_draws": noise})
    return rows, results


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    torch.set_num_threads(1)
    rows, results = part_one()
    big_rows, big_results = part_two()
    results += big_results
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
    head = ["## Part 1: exact TV to the data law against NFE (median over 5 mixtures, L = 4, V = 4)", "",
            "MDLM's cached ancestral sampler takes the most steps whose expected evaluations fit the NFE; the "
            "others evaluate once per step (the first-hitting sampler once per block).", ""]
    big = ["## Part 2: chi-square of the two-position marginals (mixtures of 8 products, L = 16, V = 8; mean of 2)", "",
           "The first-hitting sampler is exact at NFE 16 = L; the row of exact draws is the estimate's noise.", ""]
    bias = ["## Rate of a rare token relative to its probability (exact over every uniform)", "",
            "| p / p_max | float64 inverse CDF (sdeflow's default) | float32 inverse CDF | float32 Gumbel race | "
            "x / (e^x - 1) |", "|---|---|---|---|---|"]
    intro = ("Written by `python benchmarks/discrete.py` (about an hour on one core). The ratio rows divide the "
             "best peer's error by sdeflow's best at the same NFE; sdeflow's ancestral step is the peers' "
             "MDLM/D3PM step, so on the uniform process the ratio is at least 1 by construction.")
    save_json(os.path.join(DOCS, "discrete.json"), results)
    write_report(os.path.join(DOCS, "discrete.md"), "Token samplers against exact laws and the peers", intro,
                 head + rows, big + big_rows, bias + bias_rows)


if __name__ == "__main__":
    main()

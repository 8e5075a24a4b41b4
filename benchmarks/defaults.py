"""sdeflow's default sampler and grid per schedule family and budget: chosen on one set of random
problems, validated on another.

Reads ``docs/benchmarks/families.json`` (``python benchmarks/families.py``: every configuration's
error on random exact mixture problems, budgets 1-100). For each family and budget, each
configuration's error is divided by the best configuration's on the same problem. The rule picks,
among the samplers that take one evaluation per step (so that a budget is also a step count, as
``SdeflowScheduler``'s ``num_inference_steps`` is), the configuration whose ratios on the choosing
problems are least by ``max(p90 / 1.5, max / 3)`` (the targets: within 1.5x of the best on 90% of
problems, never worse than 3x), ties going to the smaller median, and keeps the previous budget's
choice where its score is within 10% of that (fewer switches between budgets). It prints the resulting
``DEFAULTS`` table, checks it against ``sdeflow.samplers.names.DEFAULTS`` and writes
``docs/benchmarks/defaults.md``: the distribution of the ratios of the defaults in the code on the
validation problems, which the rule never saw.

    python benchmarks/defaults.py           # choose, compare with the code, write the report
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import write_report  # noqa: E402
from families import OUT as FAMILIES, SPLITS, load  # noqa: E402

from sdeflow.samplers.names import DEFAULTS, default_for_family  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "defaults.md")
#: Samplers a default may be: one model evaluation per step.
ONE_PER_STEP = ("ddim", "dpm-solver++-2m", "dpm-solver++-3m", "dpm-solver++-3m-unic", "dpm-solver-3m", "unipc-bh1",
                "unipc-bh2", "unipc-3", "deis-3", "ipndm")
PROCESS_OF = {"vp": "DDPM eps, 1000 discrete steps", "sigma": "EDM x0, preconditioned", "flow": "rectified-flow velocity"}
#: The defaults before this rule (chosen on the ODE benchmark's three problems), for comparison.
PREVIOUS = {"vp": [(10, "deis-3", "quadratic"), (35, "ipndm", "quadratic"), (math.inf, "dpm-solver++-3m-unic", "quadratic")],
            "sigma": [(10, "dpm-solver++-3m-unic", "auto"), (math.inf, "ipndm", "auto")],
            "flow": [(15, "unipc-bh2", "uniform"), (math.inf, "dpm-solver++-3m-unic", "quadratic")]}


def ratios(data: dict, split: str, family: str) -> dict:
    """``{budget: {config: [ratio per problem]}}`` for the problems of ``split`` (``inf`` where a
    configuration cannot run at that budget or its run is not finite)."""
    lo = SPLITS[split]
    hi = min([v for v in SPLITS.values() if v > lo], default=math.inf)
    out = collections.defaultdict(lambda: collections.defaultdict(list))
    for seed, problem in sorted(data["problems"].items(), key=lambda kv: int(kv[0])):
        if not lo <= int(seed) < hi:
            continue
        rec = problem["processes"][family]
        for j, budget in enumerate(data["budgets"]):
            errs = {c: (e[j] if e[j] is not None else math.inf) for c, e in zip(rec["configs"], rec["errors"])}
            best = min(errs.values())
            for c, e in errs.items():
                out[budget][c].append(e / best if best > 0 else (1.0 if e == 0 else math.inf))
    return out


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (the smallest value with at least ``q`` of the values at or below it)."""
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def score(r: list[float]) -> tuple[float, float]:
    return max(quantile(r, 0.9) / 1.5, max(r) / 3.0), statistics.median(r)


def choose(data: dict) -> dict:
    """``{family: [(largest budget, sampler, grid), ...]}``: the rule's choice per budget, merged where it repeats."""
    table = {}
    for family in PROCESS_OF:
        rows = []
        for budget, per_config in sorted(ratios(data, "choose", family).items()):
            allowed = {c: r for c, r in per_config.items() if c.split(" ")[0] in ONE_PER_STEP and all(map(math.isfinite, r))}
            config = min(allowed, key=lambda c: score(allowed[c]))
            previous = f"{rows[-1][1]} ({rows[-1][2]})" if rows else None
            if previous in allowed and score(allowed[previous])[0] <= 1.1 * score(allowed[config])[0]:
                config = previous  # within 10% of the best score: keep the smaller budget's choice (fewer switches)
            sampler, grid = config[:-1].split(" (")
            if rows and rows[-1][1:] == (sampler, grid):
                rows[-1] = (budget, sampler, grid)
            else:
                rows.append((budget, sampler, grid))
        rows[-1] = (math.inf, *rows[-1][1:])
        table[family] = rows
    return table


def validation(data: dict, split: str = "validate") -> tuple[list[str], dict]:
    """The report's lines and the worst figures: the code's defaults on the problems of ``split``."""
    lines, worst = [], {}
    for family, process in PROCESS_OF.items():
        per_budget = ratios(data, split, family)
        n = len(next(iter(next(iter(per_budget.values())).values()))) if per_budget else 0
        lines += [f"## {process} ({family} family), {n} validation problems", "",
                  "| NFE | default | median | 90th percentile | worst | within 1.5x | within 3x | previous default: "
                  "90th percentile / worst | best single configuration on these problems: 90th percentile / worst |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for budget, per_config in sorted(per_budget.items()):
            sampler, grid = default_for_family(family, budget)
            r = per_config[f"{sampler} ({grid})"]
            old = per_config.get("{} ({})".format(*next((s, g) for most, s, g in PREVIOUS[family] if budget <= most)))
            static = min((c for c in per_config if all(map(math.isfinite, per_config[c]))),
                         key=lambda c: score(per_config[c]))  # chosen on the validation problems themselves
            within = (sum(v <= 1.5 for v in r) / len(r), sum(v <= 3 for v in r) / len(r))
            worst[(family, budget)] = (quantile(r, 0.9), max(r), within)
            before = f"{quantile(old, 0.9):.2f} / {max(old):.2f}" if old and all(map(math.isfinite, old)) else "-"
            lines.append(f"| {budget} | {sampler} ({grid}) | {statistics.median(r):.2f} | {quantile(r, 0.9):.2f} | "
                         f"{max(r):.2f} | {within[0]:.0%} | {within[1]:.0%} | {before} | "
                         f"{quantile(per_config[static], 0.9):.2f} / {max(per_config[static]):.2f} ({static}) |")
        lines.append("")
    return lines, worst


def problem_lines(data: dict) -> list[str]:
    lines = ["| split | seed | dimension | components | rank | condition | separation | scale | samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, problem in sorted(data["problems"].items(), key=lambda kv: int(kv[0])):
        p = problem["params"]
        split = "choose" if int(seed) < SPLITS["validate"] else "validate"
        lines.append(f"| {split} | {seed} | {p['dim']} | {p['components']} | {p['rank']} | {p['condition']:.0f} | "
                     f"{p['separation']:.2f} | {p['scale']:.2f} | {p['samples']} |")
    return lines


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    data = load(FAMILIES)
    chosen = choose(data)
    print("DEFAULTS = {")
    for family, rows in chosen.items():
        print(f'    "{family}": [' + ", ".join(f'({"math.inf" if b == math.inf else b}, "{s}", "{g}")' for b, s, g in rows) + "],")
    print("}")
    if chosen != DEFAULTS:
        print("the code's DEFAULTS differ from this choice: the report validates the code's", file=sys.stderr)
    body, worst = validation(data)
    meets = [k for k, (p90, mx, _) in worst.items() if p90 <= 1.5 and mx <= 3]
    summary = [f"Validation: the default is within 1.5x of the best configuration on at least 90% of the validation "
               f"problems and within 3x on all of them at {len(meets)} of {len(worst)} (family, budget) cells.",
               "Cells that miss: " + (", ".join(f"{f} NFE {b} (90th percentile {p:.2f}, worst {m:.2f})"
                                                 for (f, b), (p, m, _) in worst.items() if (f, b) not in meets) or "none") + "."]
    defaults = ["Defaults in the code (`sdeflow.samplers.names.DEFAULTS`; each row holds up to its budget):", ""]
    defaults += [f"- {family}: " + "; ".join(f"up to {'any' if b == math.inf else b}: {s} ({g})" for b, s, g in rows)
                 for family, rows in DEFAULTS.items()]
    intro = ("Written by `python benchmarks/defaults.py` from `docs/benchmarks/families.json` "
             "(`python benchmarks/families.py --split choose validate --count 20`). Each cell: the ratio of the "
             "default's RMS endpoint error (float64 states, against the exact probability-flow solution from the "
             "same start) to the best of every sdeflow configuration (the samplers and grids listed in "
             "`benchmarks/families.py`) on the same problem and budget, over the validation problems (seeds 1000 "
             "on), which the choice never saw. The defaults were chosen on the choosing problems (seeds below "
             "1000) by the rule in the script's docstring.")
    write_report(OUT, "Defaults of `sdeflow sample` against sdeflow's best configuration, on unseen problems", intro,
                 summary, defaults, body, ["## The problems", ""] + problem_lines(data))


if __name__ == "__main__":
    main()

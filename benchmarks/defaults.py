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
validation problems, which the rule never saw. The rule chooses among the grids as ``sdeflow sample``
runs them, each against the best of those; the report judges against every configuration sdeflow
runs, the grids ``sdeflow tune --method choose`` moves to where it samples from included
(``families.py --moved``), and a pilot's pick is made among the tuner's candidates.

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
from families import FINE_OUT, OUT as FAMILIES, PILOT_OUT, SPLITS, joined, load, load_fine, meets, moved_name, \
    nameable, quantile, tuner_candidates  # noqa: E402

from sdeflow.samplers.names import DEFAULTS, default_for_family  # noqa: E402
from sdeflow.tuning.choose import KEEP_DEFAULT  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "defaults.md")
#: Samplers a default may be: one model evaluation per step.
ONE_PER_STEP = ("ddim", "dpm-solver++-2m", "dpm-solver++-3m", "dpm-solver++-3m-unic", "dpm-solver-3m", "unipc-bh1",
                "unipc-bh2", "unipc-3", "deis-3", "ipndm")
PROCESS_OF = {"vp": "DDPM eps, 1000 discrete steps", "sigma": "EDM x0, preconditioned", "flow": "rectified-flow velocity"}
#: The defaults before this rule (chosen on the ODE benchmark's three problems), for comparison.
PREVIOUS = {"vp": [(10, "deis-3", "quadratic"), (35, "ipndm", "quadratic"), (math.inf, "dpm-solver++-3m-unic", "quadratic")],
            "sigma": [(10, "dpm-solver++-3m-unic", "auto"), (math.inf, "ipndm", "auto")],
            "flow": [(15, "unipc-bh2", "uniform"), (math.inf, "dpm-solver++-3m-unic", "quadratic")]}


def in_split(data: dict, split: str) -> list[str]:
    """The seeds of ``data`` in ``split``, in order."""
    lo = SPLITS[split]
    hi = min([v for v in SPLITS.values() if v > lo], default=math.inf)
    return sorted((s for s in data["problems"] if lo <= int(s) < hi), key=int)


def configuration_errors(record: dict, j: int, one_per_step: bool = False, measure: str = "errors") -> dict:
    """``{config: RMS}`` of one problem's process record at budget index ``j`` (``inf`` where it cannot run);
    ``measure``: another of ``families.MEASURES`` than the RMS."""
    return {c: (e[j] if e[j] is not None and math.isfinite(e[j]) else math.inf)
            for c, e in zip(record["configs"], record[measure]) if not one_per_step or c.split(" ")[0] in ONE_PER_STEP}


def default_config(family: str, budget: int) -> str:
    """The default in the code as a configuration's key, ``"sampler (grid)"``."""
    return "{} ({})".format(*default_for_family(family, budget))


def ratios(data: dict, split: str, family: str) -> dict:
    """``{budget: {config: [ratio per problem]}}`` for the problems of ``split`` (``inf`` where a
    configuration cannot run at that budget or its run is not finite)."""
    out = collections.defaultdict(lambda: collections.defaultdict(list))
    for seed in in_split(data, split):
        rec = data["problems"][seed]["processes"][family]
        for j, budget in enumerate(data["budgets"]):
            errs = configuration_errors(rec, j)
            best = min(errs.values())
            for c, e in errs.items():
                out[budget][c].append(e / best if best > 0 else (1.0 if e == 0 else math.inf))
    return out


def score(r: list[float]) -> tuple[float, float]:
    return max(quantile(r, 0.9) / 1.5, max(r) / 3.0), statistics.median(r)


def choose(data: dict) -> dict:
    """``{family: [(largest budget, sampler, grid), ...]}``: the rule's choice per budget, merged where it repeats."""
    table = {}
    for family in PROCESS_OF:
        rows = []
        for budget, per_config in sorted(ratios(data, "choose", family).items()):
            allowed = {c: r for c, r in per_config.items() if c.split(" ")[0] in ONE_PER_STEP and all(map(math.isfinite, r))
                       and nameable(c)}
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
            static = min((c for c in per_config if all(map(math.isfinite, per_config[c])) and nameable(c)),
                         key=lambda c: score(per_config[c]))  # chosen on the validation problems themselves
            within = (sum(v <= 1.5 for v in r) / len(r), sum(v <= 3 for v in r) / len(r))
            worst[(family, budget)] = (quantile(r, 0.9), max(r), within, meets(per_config[static]))
            before = f"{quantile(old, 0.9):.2f} / {max(old):.2f}" if old and all(map(math.isfinite, old)) else "-"
            lines.append(f"| {budget} | {sampler} ({grid}) | {statistics.median(r):.2f} | {quantile(r, 0.9):.2f} | "
                         f"{max(r):.2f} | {within[0]:.0%} | {within[1]:.0%} | {before} | "
                         f"{quantile(per_config[static], 0.9):.2f} / {max(per_config[static]):.2f} ({static}) |")
        lines.append("")
    return lines, worst


#: The problem parameters a two-row table may split on.
SPLIT_ON = ("dim", "components", "separation", "condition", "scale", "rank", "weight_spread")


def split_ceiling(data: dict, family: str, j: int, split: str = "validate") -> str | None:
    """Whether a table of two rows, one for each side of a threshold on one problem parameter
    (``SPLIT_ON``), meets the target on the problems of ``split`` at budget index ``j`` with the
    parameter, the threshold and both rows chosen with hindsight on those problems: the split
    (``"parameter <= threshold"``) if one does, else ``None``. Parameters a sampler could estimate from
    a model (its dimension, scale, spectrum) are among these: the ceiling of a default chosen by one
    such feature of the model."""
    seeds = in_split(data, split)
    rows = []
    for seed in seeds:
        errs = configuration_errors(data["problems"][seed]["processes"][family], j)
        best = min(errs.values())
        rows.append((data["problems"][seed]["params"], {c: e / best for c, e in errs.items()}))
    allowed = len(rows) - math.ceil(0.9 * len(rows))  # problems that may be beyond 1.5x
    configs = [c for c in rows[0][1] if nameable(c)]

    def fewest_beyond(side):  # the least count beyond 1.5x of a configuration never beyond 3x on ``side``
        counts = [sum(r[c] > 1.5 for _, r in side) for c in configs if all(r[c] <= 3 for _, r in side)]
        return min(counts, default=math.inf)

    for name in SPLIT_ON:
        for threshold in sorted({p[name] for p, _ in rows}):
            low = [row for row in rows if row[0][name] <= threshold]
            high = [row for row in rows if row[0][name] > threshold]
            if fewest_beyond(low) + (fewest_beyond(high) if high else 0) <= allowed:
                return f"{name} <= {threshold:.3g}"
    return None


def picked_on(seen: dict, family: str, budget: int, keep: float = KEEP_DEFAULT) -> str:
    """The configuration with the least error among the tuner's candidates in ``seen``, sdeflow's default
    unless that error is below ``1 / keep`` of the default's (as :func:`sdeflow.tuning.choose_configuration` picks)."""
    seen, default = tuner_candidates(seen, family), default_config(family, budget)
    default = moved if (moved := moved_name(default, family)) in seen else default
    pick = min(seen, key=seen.get)
    return default if seen.get(default, math.inf) <= keep * seen[pick] else pick


#: The preferences for the default a pilot is measured with (``keep_default``).
KEEPS = (1.0, 1.1, 1.25, 1.5, 2.0, 3.0)


def keep_lines(data: dict, pilot: dict) -> tuple[list[str], float]:
    """The report's lines on ``keep_default``: per value, the cells where the pilot's pick meets the
    target on the choosing and on the validation problems; and the value the choosing problems pick
    (the most cells, ties to the smaller preference)."""
    counts = {}
    for keep in KEEPS:
        counts[keep] = []
        for split in ("choose", "validate"):
            seeds, met = in_split(pilot, split), 0
            for family in PROCESS_OF:
                for j, budget in enumerate(data["budgets"]):
                    r = []
                    for seed in seeds:
                        seen = configuration_errors(pilot["problems"][seed]["processes"][family], j)
                        every = configuration_errors(data["problems"][seed]["processes"][family], j)
                        r.append(every[picked_on(seen, family, budget, keep)] / min(every.values()))
                    met += meets(r)
            counts[keep].append((met, len(seeds)))
    best = max(KEEPS, key=lambda k: (counts[k][0][0], -k))
    lines = ["### A preference for the default", "",
             "`choose_configuration(keep_default=r)` keeps sdeflow's default unless a candidate's pilot error is below "
             "`1 / r` of the default's. Cells (of 42) where the pilot's pick meets the target, by `r`, on the choosing "
             "problems (which pick `r`) and on the validation problems:", "",
             "| keep_default | choosing problems | validation problems |", "|---|---|---|"]
    lines += [f"| {k:g} | {c[0][0]} ({c[0][1]} problems) | {c[1][0]} ({c[1][1]} problems) |" for k, c in counts.items()]
    lines += ["", f"The choosing problems pick `keep_default = {best:g}` (`sdeflow.tuning.choose_configuration`'s "
                  f"default is {KEEP_DEFAULT:g})."]
    return lines, best


def pilot_ratios(data: dict, pilot: dict, family: str, one_per_step: bool = False) -> tuple[dict, dict]:
    """``({budget: [ratio per problem]}, same)``: first, the configuration a pilot run picks on its own
    draws, scored on the benchmark's draws against the best configuration there; second, the other way
    round, the benchmark's best scored on the pilot's draws (how well the best on one set of draws
    holds on another: the floor any choice made before seeing the draws is measured against).
    ``one_per_step``: among the samplers that take one evaluation per step only."""
    ahead, back = collections.defaultdict(list), collections.defaultdict(list)
    for seed in in_split(pilot, "validate"):
        problem = pilot["problems"][seed]
        for j, budget in enumerate(data["budgets"]):
            seen = configuration_errors(problem["processes"][family], j, one_per_step)
            bench = configuration_errors(data["problems"][seed]["processes"][family], j, one_per_step)
            every = configuration_errors(data["problems"][seed]["processes"][family], j)
            ahead[budget].append(every[picked_on(seen, family, budget)] / min(every.values()))
            back[budget].append(seen[min(bench, key=bench.get)] / min(seen.values()))
    return ahead, back


def pilot_lines(data: dict, pilot: dict) -> tuple[list[str], dict]:
    """The report's section on the pilot choice, and per (family, budget) whether the pilot's pick and
    the benchmark's own best on the pilot's draws meet the target."""
    n = len(in_split(pilot, "validate"))
    draws = {pilot["problems"][s]["params"]["samples"] for s in in_split(pilot, "validate")}
    lines = ["## A default chosen for the model by a pilot run", "",
             f"`sdeflow tune --method choose` (`sdeflow.tuning.choose_configuration`) runs every candidate on a pilot "
             f"batch of draws and keeps the least error. Here: on the {n} validation problems, on "
             f"{'/'.join(map(str, sorted(draws)))} draws other than the benchmark's "
             "(`python benchmarks/families.py --split choose validate --count 20 --pilot 32`, "
             "`docs/benchmarks/families_pilot.json`); "
             "the pilot's pick is scored by the ratio of its error on the benchmark's draws to the best configuration's "
             "there. The last column turns it round: the best configuration on the benchmark's draws, scored on the "
             "pilot's draws. That is how well the best configuration on one set of draws of a problem holds on "
             "another set of the same problem: where it misses the target too, the target is below what these draw "
             "counts can tell apart, for any choice made before the draws are seen.", "",
             "| family | NFE | median | 90th percentile | worst | within 1.5x | within 3x | one per step: 90th percentile / worst "
             "| the benchmark's best on the pilot's draws: 90th percentile / worst |",
             "|---|---|---|---|---|---|---|---|---|"]
    figures = {}
    for family in PROCESS_OF:
        (every, back), (one, _) = pilot_ratios(data, pilot, family), pilot_ratios(data, pilot, family, one_per_step=True)
        for budget, r in sorted(every.items()):
            figures[(family, budget)] = (meets(r), meets(one[budget]), meets(back[budget]))
            lines.append(f"| {family} | {budget} | {statistics.median(r):.2f} | {quantile(r, 0.9):.2f} | {max(r):.2f} | "
                         f"{sum(v <= 1.5 for v in r) / len(r):.0%} | {sum(v <= 3 for v in r) / len(r):.0%} | "
                         f"{quantile(one[budget], 0.9):.2f} / {max(one[budget]):.2f} | "
                         f"{quantile(back[budget], 0.9):.2f} / {max(back[budget]):.2f} |")
    return lines, figures


def fine_lines(fine: dict, data: dict, pilot: dict) -> tuple[list[str], dict]:
    """The report's section on the finer measurement (``fine``: the same problems on more draws): the
    defaults, the pilot's pick on 32 draws, and a pick on the benchmark's own draws (a larger pilot),
    each scored against the best configuration on the finer measurement's draws."""
    seeds = sorted(fine["problems"], key=int)
    draws = sorted({fine["problems"][s]["params"]["samples"] for s in seeds})
    dims = [fine["problems"][s]["params"]["dim"] for s in seeds]
    lines = ["## The same on more draws", "",
             f"The {len(seeds)} validation problems of at most {max(dims)} dimensions measured again on "
             f"{'/'.join(map(str, draws))} draws (`python benchmarks/families.py --split validate --count 20 --samples 512 "
             "--max-dim 128 --out docs/benchmarks/families_fine.json`), where one draw ending in another component moves "
             "the RMS far less. On a flow, the same draws run again on the uniform and quadratic grids moved to start at "
             "t = 0.999, as `sdeflow tune --method choose` runs them (the same command with `--moved`), join the "
             "configurations; the pilots pick among the tuner's candidates. Each column: the 90th percentile / worst "
             "ratio to the best configuration on these draws, of the default in the code, of the pilot's pick on its 32 "
             "draws, and of the pick on the benchmark's own draws (35-128 on these problems: a larger pilot).", "",
             "The least error of some 65 configurations (91 on a flow) on the draws that score them is partly those draws' "
             "luck, which makes every ratio to it too large. The last two columns divide instead by the error, on these "
             "draws, of the configuration best on the benchmark's draws (chosen independently of them). That errs the "
             "other way (that pick is not always the best), so the two bracket the ratio to the problem's best "
             "configuration. The last column: whether some single configuration, chosen with hindsight on these very "
             "problems and draws, meets the target (the ceiling of any fixed default table).", "",
             "| family | NFE | default | pilot, 32 draws | pilot, the benchmark's draws | default, against the benchmark's "
             "pick | pilot, 32 draws, against the benchmark's pick | some fixed configuration meets the target |",
             "|---|---|---|---|---|---|---|---|"]
    figures = {}
    kinds = ("default", "pilot", "larger", "default, independent", "pilot, independent")
    for family in PROCESS_OF:
        for j, budget in enumerate(fine["budgets"]):
            cols, per_config = collections.defaultdict(list), collections.defaultdict(list)
            for seed in seeds:
                every = configuration_errors(fine["problems"][seed]["processes"][family], j)
                best = min(every.values())
                bench = configuration_errors(data["problems"][seed]["processes"][family], j)
                independent = every[min(bench, key=bench.get)]
                for c, e in every.items():
                    per_config[c].append(e / best)
                cols["default"].append(every[default_config(family, budget)] / best)
                cols["default, independent"].append(every[default_config(family, budget)] / independent)
                pick = every[picked_on(configuration_errors(pilot["problems"][seed]["processes"][family], j), family, budget)]
                cols["pilot"].append(pick / best)
                cols["pilot, independent"].append(pick / independent)
                cols["larger"].append(every[picked_on(bench, family, budget)] / best)
            ceiling = any(meets(r) for r in per_config.values())
            figures[(family, budget)] = (*(meets(cols[k]) for k in kinds), ceiling)
            lines.append(f"| {family} | {budget} | " + " | ".join(f"{quantile(cols[k], 0.9):.2f} / {max(cols[k]):.2f}"
                                                                 for k in kinds) + f" | {'yes' if ceiling else 'no'} |")
    return lines, figures


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
    data, pilot = joined(FAMILIES), joined(PILOT_OUT) if os.path.exists(PILOT_OUT) else None
    chosen = choose(load(FAMILIES))  # among the grids a table names, each against the best of them
    print("DEFAULTS = {")
    for family, rows in chosen.items():
        print(f'    "{family}": [' + ", ".join(f'({"math.inf" if b == math.inf else b}, "{s}", "{g}")' for b, s, g in rows) + "],")
    print("}")
    if chosen != DEFAULTS:
        print("the code's DEFAULTS differ from this choice: the report validates the code's", file=sys.stderr)
    body, worst = validation(data)
    held = [k for k, (p90, mx, _, _) in worst.items() if p90 <= 1.5 and mx <= 3]
    splits = [f"{f} NFE {b}" for f in PROCESS_OF for j, b in enumerate(data["budgets"]) if split_ceiling(data, f, j)]
    summary = [f"Validation: the default is within 1.5x of the best configuration on at least 90% of the validation "
               f"problems and within 3x on all of them at {len(held)} of {len(worst)} (family, budget) cells. "
               f"The best single configuration chosen with hindsight on the validation problems themselves (last "
               f"column) meets it at {sum(w[3] for w in worst.values())}: no fixed table reaches the target on this family. "
               f"Nor does a table chosen by the problem: two rows split at a threshold on one of the problem's "
               f"parameters ({', '.join(SPLIT_ON)}), the parameter, threshold and rows chosen with hindsight on "
               f"the validation problems, meet it at {len(splits)} ({', '.join(splits) or 'none'}), so a simple rule on "
               f"features a sampler could estimate from the model does not reach it either.",
               "Cells that miss: " + (", ".join(f"{f} NFE {b} (90th percentile {p:.2f}, worst {m:.2f})"
                                                 for (f, b), (p, m, _, _) in worst.items() if (f, b) not in held) or "none") + "."]
    defaults = ["Defaults in the code (`sdeflow.samplers.names.DEFAULTS`; each row holds up to its budget):", ""]
    defaults += [f"- {family}: " + "; ".join(f"up to {'any' if b == math.inf else b}: {s} ({g})" for b, s, g in rows)
                 for family, rows in DEFAULTS.items()]
    intro = ("Written by `python benchmarks/defaults.py` from `docs/benchmarks/families.json` "
             "(`python benchmarks/families.py --split choose validate --count 20`). Each cell: the ratio of the "
             "default's RMS endpoint error (float64 states, against the exact probability-flow solution from the "
             "same start) to the best of every sdeflow configuration (the samplers and grids listed in "
             "`benchmarks/families.py`; on rectified flow also the uniform and quadratic grids from t = 0.999, as "
             "`sdeflow tune --method choose` runs them: `--moved`) on the same problem and budget, over the "
             "validation problems (seeds 1000 on), which the choice never saw. The defaults were chosen on the "
             "choosing problems (seeds below 1000) by the rule in the script's docstring.")
    pilot_section = []
    if os.path.exists(PILOT_OUT):
        pilot_section, figures = pilot_lines(data, pilot)
        kept, best_keep = keep_lines(data, pilot)
        pilot_section += [""] + kept
        if best_keep != KEEP_DEFAULT:
            print(f"the choosing problems pick keep_default = {best_keep:g}; the code's is {KEEP_DEFAULT:g}", file=sys.stderr)
        pilot_meets, one_meets, floor = (sum(f[i] for f in figures.values()) for i in range(3))
        summary.append(f"A default chosen for the model by a pilot run (`sdeflow tune --method choose`, below) meets the "
                       f"same target at {pilot_meets} of {len(figures)} cells ({one_meets} among the samplers that take "
                       f"one evaluation per step). The best configuration on the benchmark's own draws, scored on other "
                       f"draws of the same problems, meets it at {floor}: beyond that, the target is below what "
                       "16-128 draws per problem can tell apart.")
    fine_section = []
    if os.path.exists(FINE_OUT) and os.path.exists(PILOT_OUT):
        fine_section, figures = fine_lines(load_fine(), data, pilot)
        default_meets, pilot_meets, larger_meets, default_ind, pilot_ind, ceiling = (
            sum(f[i] for f in figures.values()) for i in range(6))
        summary.append(f"On more draws (512 per problem, the {len(load(FINE_OUT)['problems'])} validation problems of "
                       f"at most 128 dimensions, below), the target holds at {default_meets} of {len(figures)} cells for "
                       f"the defaults, {pilot_meets} for the pilot's pick on 32 draws and {larger_meets} for a pick on "
                       f"the benchmark's 35-128 draws. Against the configuration best on the benchmark's draws instead of "
                       f"the least error on the scoring draws themselves (which flatters the best by those draws' luck), "
                       f"at {default_ind} for the defaults and {pilot_ind} for the pilot's pick. No fixed table can do "
                       f"much better: some single configuration, chosen with hindsight on these problems and draws, "
                       f"meets the target at only {ceiling} of {len(figures)} cells (the defaults at {default_meets} of "
                       f"them). Within this family the best configuration depends on the problem, so a default that "
                       f"holds everywhere has to be chosen for the model: by a pilot run. Judged by the RMS without "
                       f"each configuration's worst 1% of draws or by the median instead, the defaults and the "
                       f"ceiling barely move ([defaults_tails.md](defaults_tails.md)): the misses are not rare draws.")
    write_report(OUT, "Defaults of `sdeflow sample` against sdeflow's best configuration, on unseen problems", intro,
                 summary, defaults, body, pilot_section, fine_section, ["## The problems", ""] + problem_lines(data))


if __name__ == "__main__":
    main()

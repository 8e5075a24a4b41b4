"""A pilot whose finalists are checked on a large pool: does it catch the rare draws a pilot misses?

``sdeflow.tuning.choose_configuration`` picks the candidate with the least RMS error on 32 pilot draws
against the teacher's solve of them. On mixtures of separated components some configurations send about
one draw in a hundred to another component than the exact solution; 32 draws rarely hold such a draw, so
the pilot can pick a configuration whose RMS on many draws is 5-25x the best
(``docs/benchmarks/defaults_tails.md``: rectified flow at NFE 30-50). A verified pilot runs the pilot's
``FINALISTS`` best candidates on the whole pool (no teacher), finds the ``CHECKED`` draws where they
disagree most (where one of them leaves the others' component), runs the teacher on those draws alone,
and picks among the finalists by their RMS over the pool estimated from the checked draws and the
pilot's random draws of the rest, each stratum weighted by its share of the pool
(:func:`~sdeflow.tuning.choose.stratified_mean`). The rule (4 finalists, 16 checked draws) was fixed
before this measurement.

Measured on the problem family's problems of at most 128 dimensions with several components (those of
``benchmarks/pilot_screen.py``): every candidate's endpoint and per-draw error on ``POOL`` draws and the judging ones,
then many pilots of each kind from the pool, each pick judged by its RMS on the judging draws against
the best candidate's there. ``random 48`` spends the verified pilot's teacher draws on a random pilot.
With ``--families``, the picks are also judged as the defaults' target is, beside the pick of the teacher
on the whole pool (the limit of any pilot from it), each on the run the tuner makes.

    python benchmarks/pilot_verify.py --split validate --shard 0/2 &   # about 17 minutes with two processes
    python benchmarks/pilot_verify.py --split validate --shard 1/2     # both write docs/benchmarks/pilot_verify.json
    python benchmarks/pilot_verify.py --judge 1024 --shard 0/2 & ...   # judged on 1024 draws (about 20 minutes)
    python benchmarks/pilot_verify.py --families --shard 0/2 & ...     # as the defaults' target is judged (about 17 minutes)
    python benchmarks/pilot_verify.py --split choose --judge 1024 --shard 0/2 & ...  # the choosing problems too
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import load_json, locked_update, shard, write_report  # noqa: E402
from defaults import FINE_OUT, PROCESS_OF, meets  # noqa: E402
from defaults_tails import judged_ratios  # noqa: E402
from families import BUDGETS as FAMILY_BUDGETS, MEASURES, SPLITS, draw_problem, load, load_fine, moved_name  # noqa: E402
from pilot_screen import candidate_cells, cell_figures, chosen_problems, pilot_ratios  # noqa: E402

from sdeflow.tuning.choose import FINALISTS, VERIFY_PILOT, default_key, spread_order, stratified_mean  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "pilot_verify.md")
RESULTS = OUT[:-3] + ".json"
FAMILY_PICKS = os.path.join(os.path.dirname(OUT), "families_verified.json")
PICK_REPLICATES = 20
BUDGETS = [6, 12, 30, 50]
POOL, PILOT, REPLICATES = 512, VERIFY_PILOT, 200  # the library's verified pilot: 32 draws, 4 finalists
#: The pick a pilot of every pool draw makes (the teacher on all of them): the limit of any pilot's pick.
WHOLE_POOL = f"whole pool {POOL}"
JUDGES = (256, 1024)  # judging draws: one draw in a hundred that a configuration loses shows in the larger
CHECKED = 16
KINDS = ("default", f"random {PILOT}", f"random {PILOT + CHECKED}", "verified")


def verified_estimate(errors: torch.Tensor, ends: torch.Tensor, piloted: torch.Tensor) -> torch.Tensor:
    """Each candidate's estimated mean square over the pool (``inf`` for all but the finalists): the
    ``FINALISTS`` least in error on the ``piloted`` draws run on the pool (``ends``: candidates x pool x
    values), the ``CHECKED`` draws where they spread most measured (:func:`~sdeflow.tuning.choose.spread_order`),
    the pilot's other draws standing for the rest of the pool."""
    top = torch.argsort(errors[:, piloted].mean(1), stable=True)[:FINALISTS]
    checked = spread_order(ends[top])[:CHECKED]
    rest = piloted[~torch.isin(piloted, checked)]
    est = torch.full((errors.shape[0],), math.inf, dtype=errors.dtype)
    est[top] = stratified_mean(errors[top][:, checked], errors[top][:, rest], ends.shape[1])
    return est


def measure(seed: int, judge: int) -> dict:
    """Per family and budget: each pilot kind's ratios (pick's RMS on ``judge`` judging draws over the best's)."""
    out = {"params": draw_problem(seed)[1], "families": {}}
    for family, nfe, den, _, options, errors, ends in candidate_cells(seed, POOL + judge, 53, BUDGETS):
        def picks_of(g):
            order = torch.randperm(POOL, generator=g)
            return {f"random {PILOT}": errors[:, order[:PILOT]].mean(1),
                    f"random {PILOT + CHECKED}": errors[:, order[:PILOT + CHECKED]].mean(1),
                    "verified": verified_estimate(errors[:, :POOL], ends[:, :POOL], order[:PILOT])}
        default = list(options).index(default_key(den.schedule, nfe))
        ratios = pilot_ratios(errors, POOL, seed, default, picks_of, f"problem {seed} {family} NFE {nfe}")
        out["families"].setdefault(family, {})[str(nfe)] = {"ratios": ratios, "candidates": len(options)}
    return out


def family_picks(seed: int) -> dict:
    """On the problem of ``seed``, from a pool of ``POOL`` draws other than the finer measurement's
    (``docs/benchmarks/families_fine.json``): per family and budget of ``families.BUDGETS``, the picks of
    ``PICK_REPLICATES`` random pilots of 32 draws and of as many verified pilots, and the one pick of
    the whole pool (the least mean square over all its draws)."""
    out = {}
    for family, nfe, _, _, options, errors, ends in candidate_cells(seed, POOL, 53, FAMILY_BUDGETS):
        keys, g = list(options), torch.Generator().manual_seed(seed)
        picks = {f"random {PILOT}": [], "verified": [], WHOLE_POOL: [keys[int(torch.argmin(errors.mean(1)))]]}
        for _ in range(PICK_REPLICATES):
            order = torch.randperm(POOL, generator=g)
            picks[f"random {PILOT}"].append(keys[int(torch.argmin(errors[:, order[:PILOT]].mean(1)))])
            picks["verified"].append(keys[int(torch.argmin(verified_estimate(errors, ends, order[:PILOT])))])
        out.setdefault(family, {})[str(nfe)] = picks
        print(f"problem {seed} {family} NFE {nfe}: picked", flush=True)
    return out


def family_lines(picked: dict) -> list[str]:
    """The picks of :func:`family_picks` judged as the defaults' target is (``benchmarks/defaults_tails.py``):
    on the finer measurement's 512 draws of each problem, by each measure; the cells (of 42) that meet
    the target, expected over the pilots, and the cells where the pilots' picks meet it against the
    whole pool's pick on those draws instead of their own best."""
    fine = load_fine()
    seeds = sorted(fine["problems"], key=int)
    if any(s not in picked for s in seeds):
        return []
    kinds = [k for k in (f"random {PILOT}", "verified", WHOLE_POOL) if all(k in picked[s]["vp"]["1"] for s in seeds)]
    met = collections.Counter()
    for family, (j, budget), m in itertools.product(PROCESS_OF, enumerate(fine["budgets"]), MEASURES):
        # the picks are the tuner's own runs: a grid it moves to where sdeflow samples from is judged as moved
        ratios = {kind: [judged_ratios(fine, [moved_name(c, family) for c in chosen], family, j, m)
                         for chosen in zip(*(picked[s][family][str(budget)][kind] for s in seeds))] for kind in kinds}
        for kind, runs in ratios.items():
            met[kind, m] += sum(map(meets, runs))
            if WHOLE_POOL in ratios and kind != WHOLE_POOL:
                limit = ratios[WHOLE_POOL][0]
                met[kind, m, WHOLE_POOL] += sum(meets([a / b for a, b in zip(r, limit)]) for r in runs)
    cells = len(PROCESS_OF) * len(fine["budgets"])

    def counts(kind, *against):  # pilots meeting it, summed over cells, over the pilots: exact in two decimals
        runs = len(picked[seeds[0]]["vp"]["1"][kind])
        return f"{kind} " + " / ".join(f"{met[(kind, m, *against)] / runs:.2f}".rstrip("0").rstrip(".") for m in MEASURES)

    lines = ["", f"On the defaults' target itself: the {len(seeds)} validation problems of at most 128 dimensions, every "
             f"budget 1-100 of the three families, each pick judged on the 512 draws of "
             "`docs/benchmarks/families_fine.json` ([defaults_tails.md](defaults_tails.md)), from pools of "
             f"{POOL} other draws (`python benchmarks/pilot_verify.py --families`, {PICK_REPLICATES} pilots of each kind "
             "per problem; `docs/benchmarks/families_verified.json`). Cells of "
             f"{cells} meeting the target, expected over the pilots, by the RMS / the RMS without the worst 1% of draws / "
             "the median: " + "; ".join(counts(kind) for kind in kinds) + "."]
    if WHOLE_POOL in kinds:
        lines[-1] += (f" `{WHOLE_POOL}` is the least error over the whole pool, the teacher run on every draw of it: the "
                      "pick a pilot of any size from the pool tends to. Judged against that pick on the same judging "
                      "draws instead of their own best (within 1.5x of it on 90% of the problems, within 3x on all): "
                      + "; ".join(counts(kind, WHOLE_POOL) for kind in kinds if kind != WHOLE_POOL) + ".")
    return lines


def cost(kind: str, nfe: int, count: int, teacher_steps: int = 300) -> int:
    """Evaluations of one draw that ``kind`` spends at ``nfe`` with ``count`` candidates (the teacher at
    ``max(teacher_steps, 3 nfe)`` steps, as ``choose_configuration`` runs it)."""
    teacher = max(teacher_steps, 3 * nfe)
    if kind.startswith("random"):
        n = int(kind.split()[1])
        return n * (teacher + count * nfe)
    return PILOT * (teacher + count * nfe) + FINALISTS * nfe * POOL + CHECKED * (teacher + FINALISTS * nfe)


def report(every: dict) -> None:
    """``every``: ``{judging draws: {seed: measure(seed, judge)}}``."""
    lines = ["| judging draws | split | family | NFE | pilot | problems | median ratio | share within 1.5x | share within 3x | "
             "worst (median over pilots) | pilots meeting the target | evaluations of one draw |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for judge, split in ((j, sp) for j in sorted(every, key=int) for sp in ("choose", "validate")):
        results = every[judge]
        ss = sorted((s for s in results if SPLITS[split] <= int(s) < SPLITS[split] + 1000), key=int)
        if not ss:
            continue
        met = collections.Counter()
        for family in ("vp", "sigma", "flow"):
            for nfe in BUDGETS:
                count = results[ss[0]]["families"][family][str(nfe)]["candidates"]
                for kind in KINDS:
                    figures, meeting = cell_figures([results[s]["families"][family][str(nfe)]["ratios"][kind] for s in ss])
                    met[kind] += meeting
                    spent = "" if kind == "default" else f"{cost(kind, nfe, count):,}"
                    lines.append(f"| {judge} | {split} | {family} | {nfe} | {kind} | {len(ss)} | {figures} | {spent} |")
        summary.append(f"Judged on {judge} draws, {split} problems ({len(ss)}): cells of {3 * len(BUDGETS)} meeting the target, "
                       "expected over pilots: " + ", ".join(f"{k} {v:.1f}" for k, v in met.items()) + ".")
    intro = ("Written by `python benchmarks/pilot_verify.py` (`--judge 256` and `--judge 1024`). Ratio: a pick's RMS "
             f"on the judging draws over the best candidate's there. Pilots from a pool of {POOL} draws disjoint from "
             "the judging ones: "
             f"`random {PILOT}` (what `sdeflow tune --method choose` runs), `random {PILOT + CHECKED}`, and "
             f"`verified` ({PILOT} random draws, then the {FINALISTS} least in error run on the whole pool and the "
             f"{CHECKED} draws where they spread most measured against the teacher; the finalist least in error "
             f"over the pool, estimated stratum by stratum, wins); {REPLICATES} pilots of each kind per problem. "
             "`default`: sdeflow's fixed default. Target: within 1.5x on 90% of the problems and within 3x on all; "
             "`pilots meeting the target`: the share of pilots for which the cell meets it. Evaluations of one "
             "draw: the teacher's (300 steps) and the candidates', one draw each (a batch evaluates many at once).")
    if os.path.exists(FAMILY_PICKS):
        summary += family_lines(load_json(FAMILY_PICKS))
    write_report(OUT, "A verified pilot: its finalists checked on a pool of draws", intro, summary, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), nargs="+", default=["validate"])
    parser.add_argument("--shard", type=shard, default=(0, 1), help="i/k: measure the problems whose index is i modulo k")
    parser.add_argument("--judge", type=int, choices=JUDGES, default=JUDGES[0], help="judging draws per problem")
    parser.add_argument("--families", action="store_true",
                        help="instead: the picks on the problems of docs/benchmarks/families_fine.json at every budget, "
                             "judged there as the defaults' target is")
    args = parser.parse_args()
    judge = str(args.judge)
    torch.set_num_threads(1)
    i, k = args.shard
    if args.families:
        fine = sorted(load(FINE_OUT)["problems"], key=int)
        for seed in fine[i::k]:
            if seed not in load_json(FAMILY_PICKS):
                result = family_picks(int(seed))
                locked_update(FAMILY_PICKS, lambda picked: picked.__setitem__(seed, result))
        if all(s in load_json(FAMILY_PICKS) for s in fine) and load_json(RESULTS):
            report(load_json(RESULTS))
        return
    seeds = [s for s in chosen_problems() if any(SPLITS[sp] <= s < SPLITS[sp] + 1000 for sp in args.split)]
    for seed in seeds[i::k]:
        if str(seed) in load_json(RESULTS).get(judge, {}):
            continue
        result = measure(seed, args.judge)
        locked_update(RESULTS, lambda results: results.setdefault(judge, {}).__setitem__(str(seed), result))
    every = load_json(RESULTS)
    if all(str(s) in every.get(judge, {}) for s in seeds):
        report(every)
    else:
        print(f"{len(every.get(judge, {}))} of {len(seeds)} problems measured; the report waits for the rest")


if __name__ == "__main__":
    main()

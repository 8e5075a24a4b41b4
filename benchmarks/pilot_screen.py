"""Which draws should a pilot see? A random batch of the prior against a screened one.

``sdeflow.tuning.choose_configuration`` picks a sampler and grid by their RMS error on a pilot batch of
prior draws against the teacher's solve of them. On mixtures of separated components a few draws that end
in another component decide the RMS, and a random batch of 32 rarely holds them. A screened pilot draws
a larger pool, runs only sdeflow's default configuration on it, at the budget and at twice the budget,
and sends to the teacher and the candidates the draws where the two disagree most (where the run's own
error is largest) together with random draws of the rest; the RMS is then estimated by weighting each
stratum by its share of the pool (an unbiased estimate of the pool's mean square).

Measured here on the problem family's problems of at most 128 dimensions with several components: every
candidate's per-draw error on a pool of draws (the first ``--pool`` screened and piloted, the next 256 kept
for judging), then many pilots of 32 draws of each kind, each pick judged by its RMS on the judging draws
against the best candidate's there.

    python benchmarks/pilot_screen.py --shard 0/2 &              # about 10 minutes with two processes
    python benchmarks/pilot_screen.py --shard 1/2                # both write docs/benchmarks/pilot_screen.json
    python benchmarks/pilot_screen.py --pool 512 --shard 0/2 &   # a larger pool (about 30 minutes)
    python benchmarks/pilot_screen.py --pool 512 --shard 1/2
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, Problem, Shared, load_json, locked_update, sdeflow_denoiser, shard, write_report  # noqa: E402
from families import FAMILY_OF, SPLITS, draw_problem  # noqa: E402

from sdeflow import sample  # noqa: E402
from sdeflow.tuning.choose import candidates, default_key, screen_order, stratified_mean  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "pilot_screen.md")
RESULTS = OUT[:-3] + ".json"
BUDGETS = [6, 12, 30]
JUDGE = 256  # draws kept for judging each pick
PILOT, REPLICATES = 32, 200


def chosen_problems(count: int = 20) -> list[int]:
    """Seeds of both splits with at most 128 dimensions and at least two components."""
    out = []
    for split in ("choose", "validate"):
        for seed in range(SPLITS[split], SPLITS[split] + count):
            params = draw_problem(seed)[1]
            if params["dim"] <= 128 and params["components"] >= 2:
                out.append(seed)
    return out


def candidate_runs(den, options: dict, shared: Shared) -> tuple[torch.Tensor, torch.Tensor]:
    """Every candidate of ``options`` (:func:`~sdeflow.tuning.choose.candidates`) run on the shared draws:
    per-draw squared endpoint errors against the exact solution (candidates x draws, ``inf`` where not
    finite) and the endpoints (candidates x draws x values)."""
    errors, ends = [], []
    for _, _, sampler, ts in options.values():
        x = sample(den, sampler, ts, shared.x_init(float(ts[0])), check_finite=False).x
        e = (x - shared.reference(float(ts[0]), 0.0, steps=400)).pow(2).flatten(1).sum(1)
        errors.append(torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf)))
        ends.append(x.flatten(1))
    return torch.stack(errors), torch.stack(ends)


def candidate_cells(seed: int, draws: int, offset: int, budgets):
    """The problem of ``seed`` on ``draws`` shared draws (drawn with ``seed + offset``), every candidate run
    (:func:`candidate_runs`): per process and budget, ``(family, nfe, den, shared, options, errors, ends)``."""
    problem = draw_problem(seed)[0]
    problem = Problem(problem.name, problem.mixture, problem.shape, draws)
    for process in PROCESSES:
        shared = Shared(problem, process, seed=seed + offset)
        den = sdeflow_denoiser(problem, process)
        for nfe in budgets:
            options = candidates(process.schedule, nfe)
            yield (FAMILY_OF[process.time_input], nfe, den, shared, options, *candidate_runs(den, options, shared))


def pilot_ratios(errors: torch.Tensor, pool: int, seed: int, default: int, picks_of, label: str) -> dict:
    """``{kind: [ratio per pilot]}``: ``REPLICATES`` times, ``picks_of(generator)`` gives each kind's
    estimates of the candidates' mean squares from the first ``pool`` draws; its least is judged by its
    mean square on the other draws against the best candidate's there (as an RMS ratio); ``"default"``:
    the candidate ``default``'s ratio."""
    judged = errors[:, pool:].mean(1)
    best = float(judged.min())
    g = torch.Generator().manual_seed(seed)
    ratios = collections.defaultdict(list)
    for _ in range(REPLICATES):
        for kind, est in picks_of(g).items():
            ratios[kind].append(math.sqrt(float(judged[int(torch.argmin(est))]) / best))
    ratios["default"] = [math.sqrt(float(judged[default]) / best)]
    print(f"{label}: " + ", ".join(f"{k} median {statistics.median(v):.2f}, P(>1.5) {sum(r > 1.5 for r in v) / len(v):.2f}"
                                   for k, v in ratios.items()), flush=True)
    return dict(ratios)


def measure(seed: int, pool: int) -> dict:
    """Per family and budget: each pilot kind's ratios (pick's RMS on the judging draws over the best's)."""
    out = {"params": draw_problem(seed)[1], "families": {}}
    for family, nfe, den, shared, options, errors, _ in candidate_cells(seed, pool + JUDGE, 31, BUDGETS):
        keys = list(options)
        order = screen_order(den, nfe, shared.x_init(float(options[keys[0]][3][0]))[:pool])

        def picks_of(g):
            picks = {"random": errors[:, torch.randperm(pool, generator=g)[:PILOT]].mean(1)}
            top, rest = order[:PILOT // 2], order[PILOT // 2:]
            rand = rest[torch.randperm(rest.numel(), generator=g)[:PILOT - PILOT // 2]]
            picks["screened"] = stratified_mean(errors[:, top], errors[:, rand], pool)
            return picks
        default = keys.index(default_key(den.schedule, nfe))
        out["families"].setdefault(family, {})[str(nfe)] = pilot_ratios(
            errors, pool, seed, default, picks_of, f"problem {seed} {family} NFE {nfe}")
    return out


def cell_figures(per: list[list[float]]) -> tuple[str, float]:
    """A cell's columns over its problems (``per``: each problem's ratios, one per pilot, or one standing for
    every pilot): the median ratio, the shares within 1.5x and 3x, the worst ratio (median over pilots) and
    the share of pilots for which the cell meets the target; and that share."""
    reps = max(len(p) for p in per)
    per = [p * (reps // len(p)) for p in per]
    flat = [r for p in per for r in p]
    worst = statistics.median(max(p[i] for p in per) for i in range(reps))
    meeting = sum(_meets([p[i] for p in per]) for i in range(reps)) / reps
    return (f"{statistics.median(flat):.2f} | {sum(r <= 1.5 for r in flat) / len(flat):.0%} | "
            f"{sum(r <= 3 for r in flat) / len(flat):.0%} | {worst:.2f} | {meeting:.0%}"), meeting


def report(results: dict, seeds: list[int]) -> None:
    """``results``: ``{pool: {seed: measure(seed, pool)}}``, every pool measured on every seed."""
    lines = ["| pool | split | family | NFE | pilot | problems | median ratio | share within 1.5x | share within 3x | "
             "worst (median over pilots) | pilots meeting the target |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for pool in sorted(results, key=int):
        for split in ("choose", "validate"):
            ss = [s for s in seeds if SPLITS[split] <= s < SPLITS[split] + 1000]
            met = collections.Counter()
            for family in ("vp", "sigma", "flow"):
                for nfe in map(str, BUDGETS):
                    for kind in ("default", "random", "screened"):
                        figures, meeting = cell_figures([results[pool][str(s)]["families"][family][nfe][kind] for s in ss])
                        met[kind] += meeting
                        lines.append(f"| {pool} | {split} | {family} | {nfe} | {kind} | {len(ss)} | {figures} |")
            summary.append(f"Pool of {pool}, {split} problems ({len(ss)}): cells of {3 * len(BUDGETS)} meeting the "
                           "target, expected over pilots: " + ", ".join(f"{k} {v:.1f}" for k, v in met.items()) + ".")
    intro = ("Written by `python benchmarks/pilot_screen.py` (`--pool 128` and `--pool 512`). Ratio: a pick's RMS on "
             f"{JUDGE} judging draws over the best candidate's there. Pilots of {PILOT} draws from a pool of draws "
             f"disjoint from the judging ones: `random`, or `screened` ({PILOT // 2} draws where sdeflow's default "
             f"at the budget and at twice the budget disagree most, {PILOT - PILOT // 2} random draws of the rest, "
             f"weighted by their shares of the pool); {REPLICATES} pilots of each kind per problem. `default`: "
             "sdeflow's fixed default. Target (the defaults' target): within 1.5x on 90% of the problems and within "
             "3x on all; `pilots meeting the target`: the share of pilots for which the cell meets it.")
    write_report(OUT, "A screened pilot: which draws a pilot should see", intro, summary, lines)


def _meets(r: list[float]) -> bool:
    v = sorted(r)
    return v[max(0, math.ceil(0.9 * len(v)) - 1)] <= 1.5 and v[-1] <= 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", type=shard, default=(0, 1), help="i/k: measure the problems whose index is i modulo k")
    parser.add_argument("--pool", type=int, default=128, help="draws screened and piloted per problem (default 128)")
    args = parser.parse_args()
    if args.pool < PILOT:
        parser.error(f"--pool must hold a pilot of {PILOT} draws, got {args.pool}")
    torch.set_num_threads(1)
    i, k = args.shard
    seeds = chosen_problems()
    pool = str(args.pool)
    for seed in seeds[i::k]:
        if str(seed) in load_json(RESULTS).get(pool, {}):
            continue
        result = measure(seed, args.pool)
        locked_update(RESULTS, lambda results: results.setdefault(pool, {}).__setitem__(str(seed), result))
    results = {p: r for p, r in load_json(RESULTS).items() if all(str(s) in r for s in seeds)}
    if pool in results:
        report(results, seeds)
    else:
        print(f"{len(load_json(RESULTS).get(pool, {}))} of {len(seeds)} problems measured; the report waits for the rest")

if __name__ == "__main__":
    main()

"""How many held-out draws the check that keeps a fit needs, on the stored rows of one ODE problem.

``sdeflow.tuning`` keeps a fitted grid (and fitted coefficients) only where it beats the best hand
grid on held-out draws, in the error without the worst 10% of draws and in the plain RMS; otherwise
the hand grid is returned. In high dimension the RMS over a few tens of held-out draws is decided by
the one or two that end in another mixture component, so a fit can pass the check by those draws'
luck and lose to the hand grid on others. Here the check is replayed on fresh draws, without
fitting anything again:

- every row of the problem in ``docs/benchmarks/tuning.json`` runs the configuration it ends with (its
  second stage's: the coefficients fitted on the grid it chose for them, the tuned grid or a hand
  grid, or that grid with the sampler's own coefficients where the fit was not kept) and its best hand grid (started at the
  draws' time, as the fits are) from ``--pool`` + ``--score`` exact draws of ``p_top`` (seed 99 for
  the scoring draws, the same as ``tuning_rows_fresh.py``'s; seed 98 for the pool), against a
  600-step solve of the probability-flow ODE; the per-draw errors are saved as each row is done
  (``benchmarks/cache/``), so an interrupted run resumes;
- for each check size ``m`` (``--sizes``), ``--resamples`` check sets of ``m`` draws from the pool each
  decide, by the library's rule, whether the row keeps its configuration or returns the hand grid,
  and the decision is scored on the scoring draws: the ratio of its RMS to the hand grid's.

The report gives, per size, how often a row is kept, how many rows lose to the hand grid on the scoring
draws (mean over the check sets, and in how many rows a loss happens in more than 5% of them) and the
geometric-mean gain over the hand grid; with the check left out (always kept) and with the scoring
draws' own verdict (an oracle) beside them.

    python benchmarks/check_size.py --problem "3x32x32 mixture" --processes DDPM   # writes docs/benchmarks/check_size_3x32x32.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, load_json, locked_update, problems, sdeflow_denoiser, write_report  # noqa: E402
from tuning_rows import OUT, fit_draws, hand_grid, stored_runs  # noqa: E402
from tuning_rows_fresh import in_chunks, stored_key  # noqa: E402

from sdeflow import grids  # noqa: E402
from sdeflow.registry import SAMPLERS  # noqa: E402
from sdeflow.tuning import Teacher  # noqa: E402
from sdeflow.tuning.draws import TRIM, draw_errors, trimmed_rms  # noqa: E402

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")
#: Relative RMS difference below which a decision counts as level with the hand grid.
LEVEL = 0.005


def name_of(problem: str, stored: str = "tuning.json") -> str:
    """The file name (without extension) of the report and the cache for ``problem``'s rows of ``stored``."""
    rows = "" if stored == "tuning.json" else "_" + stored.removesuffix(".json").removeprefix("tuning_")
    return "check_size_" + problem.split()[0].replace("-", "").lower() + rows


def fingerprint(r: dict, pool: int, score: int) -> str:
    """What a row's stored errors depend on: its grids, coefficients and hand grid, and the draw counts."""
    what = [r["ts"], r.get("coef_ts"), r["shift"], r.get("hand_grid"), pool, score]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def row_errors(den, sch, r: dict, x: torch.Tensor, target: torch.Tensor) -> dict:
    """Per-draw squared errors, as lists, of the configuration the row ends with (``kept``) and of its
    best hand grid (``hand``); ``same``: whether the two are one configuration (the row returned that grid)."""
    sampler, ts = stored_runs(r)["with coefficients"]  # the second stage's: on the tuned grid or on a hand grid
    base = SAMPLERS[r["sampler"]]()
    hand = hand_grid(r["hand_grid"], base, sch, r["nfe"])
    kept = in_chunks(lambda d, y: draw_errors(den, sampler, ts, d, y), x, target)
    same = not r["shift"] and len(ts) == len(hand) and bool(torch.allclose(ts, hand))
    other = kept if same else in_chunks(lambda d, y: draw_errors(den, base, hand, d, y), x, target)
    return {"kept": kept.tolist(), "hand": other.tolist(), "same": same}


def decide(kept: torch.Tensor, hand: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The library's check on the draws ``rows`` (one check set per row of ``rows``): the fit is kept
    where its trimmed RMS is lower than the hand grid's and its RMS no higher."""
    k, h = kept[rows], hand[rows]
    trimmed = torch.stack([trimmed_rms(a, TRIM) < trimmed_rms(b, TRIM) for a, b in zip(k, h)])
    return trimmed & (k.mean(1) <= h.mean(1))


def interval(kept: torch.Tensor, hand: torch.Tensor, seed: int, resamples: int = 2000) -> tuple[float, float, float]:
    """The kept configuration's RMS over the hand grid's on all the draws, and its 5% and 95% quantiles
    over ``resamples`` paired bootstrap resamples of the draws."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(kept), (resamples, len(kept)), generator=g)
    ratios = (kept[rows].mean(1) / hand[rows].mean(1)).sqrt()
    low, high = torch.quantile(ratios, torch.tensor([0.05, 0.95], dtype=ratios.dtype)).tolist()
    return math.sqrt(float(kept.mean() / hand.mean())), low, high


def replay(entry: dict, pool: int, sizes, resamples: int, seed: int) -> dict:
    """For one row: the ratio of its final configuration's RMS to the hand grid's on the scoring draws
    and its :func:`interval` on all the draws; per check size, the share of check sets that keep the
    configuration, the share whose decision loses to the hand grid on the scoring draws, and the mean
    log gain there. ``seed``: the same check sets for every row, as one teacher's held-out draws decide
    every row of a process in ``benchmarks/tuning.py``."""
    e_kept = torch.tensor(entry["kept"], dtype=torch.float64)
    e_hand = torch.tensor(entry["hand"], dtype=torch.float64)
    ratio = math.sqrt(float(e_kept[pool:].mean() / e_hand[pool:].mean()))  # kept / hand on the scoring draws
    out = {"ratio": ratio, "same": entry["same"], "all": interval(e_kept, e_hand, seed)}
    g = torch.Generator().manual_seed(seed)
    for m in sizes:
        count = 1 if m >= pool else resamples
        rows = torch.stack([torch.randperm(pool, generator=g)[:m] for _ in range(count)])
        keep = torch.zeros(count, dtype=torch.bool) if entry["same"] else decide(e_kept, e_hand, rows)
        share = float(keep.double().mean())
        out[str(m)] = {"kept": share, "loses": share * (ratio > 1 + LEVEL), "log_gain": -share * math.log(ratio)}
    return out


def summary(results: dict, sizes, pool: int) -> list[str]:
    """Per process and in all: for each check size, and with no check and the oracle, the rows kept,
    the rows that lose to the hand grid, and the gain over it."""
    lines = ["| process | rows | check draws | rows kept (mean) | rows losing to the hand grid (mean) | rows losing in "
             "more than 5% of check sets | geometric-mean gain over the hand grid |", "|---|---|---|---|---|---|---|"]
    groups = [(p.name.split(" (")[0], [v for k, v in results.items() if k.startswith(p.name + "|")]) for p in PROCESSES]
    if sum(bool(rows) for _, rows in groups) > 1:
        groups.append(("all", list(results.values())))
    for label, rows in groups:
        if not rows:
            continue
        lost = [math.log(v["ratio"]) for v in rows if not v["same"]]
        loses_always = sum(v["ratio"] > 1 + LEVEL and not v["same"] for v in rows)
        lines.append(f"| {label} | {len(rows)} | none (always kept) | {len(lost)} | {loses_always} | {loses_always} | "
                     f"{math.exp(-sum(lost) / len(rows)):.3g} |")
        for m in sizes:
            cells = [v[str(m)] for v in rows]
            lines.append(f"| {label} | {len(rows)} | {min(m, pool)} | {sum(c['kept'] for c in cells):.1f} | "
                         f"{sum(c['loses'] for c in cells):.2f} | {sum(c['loses'] > 0.05 for c in cells)} | "
                         f"{math.exp(sum(c['log_gain'] for c in cells) / len(rows)):.3g} |")
        oracle = [min(0.0, math.log(v["ratio"])) for v in rows if not v["same"]]
        lines.append(f"| {label} | {len(rows)} | the scoring draws (oracle) | "
                     f"{sum(v['ratio'] < 1 and not v['same'] for v in rows)} | 0 | 0 | "
                     f"{math.exp(-sum(oracle) / len(rows)):.3g} |")
    return lines


def significance(results: dict) -> list[str]:
    """Per process: on all the draws (pool and scoring), the rows whose kept configuration is better than
    the hand grid in RMS across its whole 90% bootstrap interval, worse across it, and the rest."""
    lines = ["| process | rows | kept better (whole interval below 1) | kept worse (whole interval above 1) | not "
             "told apart (interval across 1) | the fit returned the hand grid |", "|---|---|---|---|---|---|"]
    for p in PROCESSES:
        rows = [v for k, v in results.items() if k.startswith(p.name + "|")]
        if not rows:
            continue
        fits = [v["all"] for v in rows if not v["same"]]

        def listed(pick):
            chosen = [r for r, low, high in fits if pick(low, high)]
            return f"{len(chosen)}" + (f" ({min(chosen):.2f}-{max(chosen):.2f})" if chosen else "")

        lines.append(f"| {p.name.split(' (')[0]} | {len(rows)} | {listed(lambda lo, hi: hi < 1)} | "
                     f"{listed(lambda lo, hi: lo > 1)} | {listed(lambda lo, hi: lo <= 1 <= hi)} | "
                     f"{len(rows) - len(fits)} |")
    return lines


def per_row(results: dict, sizes) -> list[str]:
    head = " | ".join(f"kept / losing, {m} draws" for m in sizes)
    lines = [f"| process | sampler | NFE | kept / hand grid on the scoring draws (RMS) | on all the draws (90% "
             f"interval) | {head} |", "|---|---|---|---|---|" + "---|" * len(sizes)]
    for k, v in results.items():
        process, sampler, nfe = k.split("|")
        cells = " | ".join("-" if v["same"] else f"{v[str(m)]['kept']:.2f} / {v[str(m)]['loses']:.2f}" for m in sizes)
        both = "-" if v["same"] else "{:.3g} ({:.3g}-{:.3g})".format(*v["all"])
        lines.append(f"| {process.split(' (')[0]} | {sampler} | {nfe} | "
                     f"{'the hand grid' if v['same'] else format(v['ratio'], '.3g')} | {both} | {cells} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", default="3x32x32 mixture", choices=[q.name for q in problems()])
    p.add_argument("--processes", nargs="+", default=None, metavar="NAME", help="these processes only (e.g. EDM)")
    p.add_argument("--stored", default="tuning.json", metavar="FILE",
                   help="the stored rows (in docs/benchmarks) to replay: tuning.json, or rows stored apart by "
                   "benchmarks/tuning.py, e.g. tuning_check400.json (default: tuning.json)")
    p.add_argument("--pool", type=int, default=400, help="draws the check sets are taken from (seed 98)")
    p.add_argument("--score", type=int, default=400, help="draws the decisions are scored on (seed 99)")
    p.add_argument("--sizes", nargs="+", type=int, default=[30, 100, 200, 400], help="check set sizes")
    p.add_argument("--resamples", type=int, default=400, help="check sets per size")
    args = p.parse_args(argv)
    if min(args.pool, args.score) < 2 or min(args.sizes) < 2 or args.resamples < 1:
        p.error("--pool, --score and --sizes need at least 2 draws, --resamples at least 1")
    if not os.path.isfile(os.path.join(OUT, args.stored)):
        p.error(f"--stored {args.stored}: no such file in docs/benchmarks (benchmarks/tuning.py --part 2 writes it)")
    torch.set_num_threads(1)
    rows = [r for r in json.load(open(os.path.join(OUT, args.stored)))["mixtures"]
            if r["problem"] == args.problem and r.get("hand_grid")]
    problem = next(q for q in problems() if q.name == args.problem)
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, name_of(args.problem, args.stored) + ".json")
    for process in PROCESSES:
        if args.processes and not any(o.lower() in process.name.lower() for o in args.processes):
            continue
        stored = load_json(path)
        todo = [r for r in rows if r["process"] == process.name
                and stored.get(stored_key(r), {}).get("fingerprint") != fingerprint(r, args.pool, args.score)]
        if not todo:
            continue
        print(f"{len(todo)} rows to run ({process.name}); each is saved when done", flush=True)
        den, sch = sdeflow_denoiser(problem, process), process.schedule
        top = grids.start_time(sch)
        x = torch.cat([fit_draws(problem, process, top, args.pool, seed=98),
                       fit_draws(problem, process, top, args.score, seed=99)])
        target = in_chunks(lambda d: Teacher(den, d, steps=600).end, x)
        for r in todo:
            entry = row_errors(den, sch, r, x, target)
            entry["fingerprint"] = fingerprint(r, args.pool, args.score)
            locked_update(path, lambda results: results.update({stored_key(r): entry}))
            kept, hand = (torch.tensor(entry[k][args.pool:]) for k in ("kept", "hand"))  # on the scoring draws
            print(f"  {r['sampler']} NFE {r['nfe']}: kept {float(kept.mean().sqrt()):.4g}, hand "
                  f"{float(hand.mean().sqrt()):.4g} on the scoring draws", flush=True)
    stored = load_json(path)
    wanted = {stored_key(r): r for r in rows}
    results = {k: replay(v, args.pool, args.sizes, args.resamples, seed=0)
               for k, v in stored.items() if k in wanted and v["fingerprint"] == fingerprint(wanted[k], args.pool, args.score)}
    if not results:
        print("no rows stored yet")
        return
    order = {p.name: i for i, p in enumerate(PROCESSES)}
    results = dict(sorted(results.items(), key=lambda kv: (order[kv[0].split("|")[0]], int(kv[0].split("|")[2]),
                                                           kv[0].split("|")[1])))
    command = shlex.join(["python", "benchmarks/check_size.py"] + (argv if argv is not None else sys.argv[1:]))
    intro = (f"Written by `{command}` (the rows of every process stored so far). The {args.problem}'s rows of "
             f"`docs/benchmarks/{args.stored}`, each row's final configuration (its coefficients on the grid it chose for "
             f"them, or that grid) against its best hand grid on {args.pool} "
             f"pool draws and {args.score} scoring draws (exact draws of the prior, a 600-step reference solve). Check "
             f"sets of each size, drawn from the pool ({args.resamples} per size below the pool's), decide by "
             f"`sdeflow.tuning`'s rule (the trimmed RMS lower and the RMS no higher than the hand grid's) whether a row "
             "keeps its configuration; the decision is scored on the scoring draws. A row loses where its RMS there is "
             f"more than {LEVEL:.1%} above the hand grid's. Gain: the hand grid's RMS over the decision's, geometric mean "
             "over the rows (rows whose fit returned the hand grid count as 1). The second table: on the pool and "
             "scoring draws together, the rows whose ratio of RMS to the hand grid's has its whole 90% interval (2000 "
             "paired bootstrap resamples of the draws) below 1, above 1, or across it.")
    write_report(os.path.join(OUT, name_of(args.problem, args.stored) + ".md"), "How many draws the check that keeps a fit needs",
                 intro, summary(results, args.sizes, args.pool), significance(results), per_row(results, args.sizes))


if __name__ == "__main__":
    main()
